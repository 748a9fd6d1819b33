-- hubsync--1.0.sql, part 50: pg_cron scheduling and sync status.
--
-- hubsync_schedule() creates the pg_cron job that runs CALL hubsync_run()
-- in this database; hubsync_unschedule() removes it.  hubsync.sync_status
-- (and hubsync_status_all(), which it selects from) shows one row per
-- object type: state, watermark, last success, last error, row counts,
-- pending queue entries and the next scheduled run.
--
-- pg_cron keeps its jobs in table cron.job, which exists only in the
-- database named by cron.database_name, and its background worker starts
-- every job from there.  When hubsync is installed in that database,
-- hubsync_schedule() calls cron.schedule() directly.  When it is installed
-- in another database, a function cannot write cron.job, so
-- hubsync_schedule() connects to the cron database of this server as the
-- calling role (hubsync._cron_remote, in src/cron_remote.c) and runs
-- cron.schedule_in_database() there; hubsync_unschedule() likewise.  The
-- job still runs as the caller.  sync_status cannot read that job, so it
-- shows no next run there (next_run_at is NULL).
--
-- Schedules are parsed here as well as by pg_cron, so that a mistake gets
-- an error naming the field, and so that sync_status can compute the next
-- run.  The accepted syntax is pg_cron 1.4's: five fields (minute, hour,
-- day of month, month, day of week) of numbers, ranges a-b, lists, steps
-- */n and a-b/n, the names jan-dec and sun-sat, and the macros @hourly,
-- @daily, @midnight, @weekly, @monthly, @yearly and @annually.  pg_cron
-- 1.4 also accepts some malformed schedules (trailing fields, ranges that
-- start after they end, "1-5/2/3"); hubsync_schedule() rejects those, and
-- schedules that never run.  pg_cron 1.4 reads schedules in GMT; from
-- pg_cron 1.5 on, the setting cron.timezone decides.

-- ---------------------------------------------------------------------
-- Cron schedules
-- ---------------------------------------------------------------------

-- Raise the error for an invalid schedule, with p_detail as its detail.
CREATE FUNCTION hubsync._cron_invalid(p_schedule text, p_detail text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'invalid cron schedule "%"', p_schedule
        USING ERRCODE = 'invalid_parameter_value',
              DETAIL = p_detail,
              HINT = 'Use five fields "minute hour day-of-month month day-of-week" in GMT, '
                     'e.g. ''*/15 * * * *'' for every 15 minutes or ''0 2 * * *'' for 02:00 GMT every day.';
END;
$$;

-- Parse one value of a cron field: a number in [p_low, p_high], or one of
-- p_names (lower case), the first of which is p_low.
CREATE FUNCTION hubsync._cron_value(p_schedule text, p_text text, p_label text,
    p_low int, p_high int, p_names text[]) RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_index int;
BEGIN
    IF p_text ~ '^[0-9]+$' THEN
        IF length(p_text) > 4 OR p_text::int NOT BETWEEN p_low AND p_high THEN
            PERFORM hubsync._cron_invalid(p_schedule,
                format('The %s value %s is out of range %s-%s.', p_label, p_text, p_low, p_high));
        END IF;
        RETURN p_text::int;
    END IF;

    v_index := array_position(p_names, lower(p_text));
    IF v_index IS NULL AND p_names IS NULL THEN
        PERFORM hubsync._cron_invalid(p_schedule,
            format('The %s field accepts numbers only, not "%s".', p_label, p_text));
    ELSIF v_index IS NULL THEN
        PERFORM hubsync._cron_invalid(p_schedule,
            format('"%s" is not a %s name; use one of %s.',
                   p_text, p_label, array_to_string(p_names, ', ')));
    END IF;
    RETURN p_low + v_index - 1;
END;
$$;

-- Parse one cron field into the sorted values it matches.
CREATE FUNCTION hubsync._cron_field(p_schedule text, p_field text, p_label text,
    p_low int, p_high int, p_names text[] DEFAULT NULL) RETURNS int[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_item text;
    v_parts text[];
    v_first int;
    v_last int;
    v_step int;
    v_values int[] := '{}';
BEGIN
    FOREACH v_item IN ARRAY string_to_array(p_field, ',') LOOP
        -- "*", "value" or "first-last", optionally followed by "/step".
        v_parts := regexp_match(v_item,
            '^(?:(\*)|([[:alnum:]]+)(?:-([[:alnum:]]+))?)(?:/([0-9]+))?$');
        IF v_parts IS NULL THEN
            PERFORM hubsync._cron_invalid(p_schedule,
                format('The %s field element "%s" is not *, a value, a range a-b or a step */n or a-b/n.',
                       p_label, v_item));
        END IF;

        IF v_parts[1] IS NOT NULL THEN
            v_first := p_low;
            v_last := p_high;
        ELSE
            v_first := hubsync._cron_value(p_schedule, v_parts[2], p_label, p_low, p_high, p_names);
            v_last := v_first;
            IF v_parts[3] IS NOT NULL THEN
                v_last := hubsync._cron_value(p_schedule, v_parts[3], p_label, p_low, p_high, p_names);
                IF v_last < v_first THEN
                    PERFORM hubsync._cron_invalid(p_schedule,
                        format('The %s range "%s" is empty because it starts after it ends.',
                               p_label, v_item));
                END IF;
            ELSIF v_parts[4] IS NOT NULL THEN
                PERFORM hubsync._cron_invalid(p_schedule,
                    format('The %s step "%s" needs * or a range before the slash, as in */%s or %s-%s/%s.',
                           p_label, v_item, v_parts[4], v_parts[2], p_high, v_parts[4]));
            END IF;
        END IF;

        v_step := 1;
        IF v_parts[4] IS NOT NULL THEN
            IF length(v_parts[4]) > 4 OR v_parts[4]::int < 1 THEN
                PERFORM hubsync._cron_invalid(p_schedule,
                    format('The %s step in "%s" must be between 1 and 9999.', p_label, v_item));
            END IF;
            v_step := v_parts[4]::int;
        END IF;

        v_values := v_values || ARRAY(SELECT generate_series(v_first, v_last, v_step));
    END LOOP;

    RETURN ARRAY(SELECT DISTINCT v FROM unnest(v_values) AS v ORDER BY v);
END;
$$;

-- Parse a pg_cron 1.4 schedule into the sets of minutes, hours, days of
-- month, months and days of week it matches (Sunday is 0).  days_star
-- and weekdays_star are true when that field starts with "*": as in
-- Vixie cron, from which pg_cron takes its parser, a date then has to
-- match both day fields, and otherwise either of them.
CREATE FUNCTION hubsync.cron_parse(schedule text,
    OUT minutes int[], OUT hours int[], OUT days int[], OUT months int[],
    OUT weekdays int[], OUT days_star boolean, OUT weekdays_star boolean)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_text text := btrim(schedule, E' \t');
    v_fields text[];
BEGIN
    IF schedule IS NULL THEN
        RAISE EXCEPTION 'cron schedule must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass a schedule such as ''*/15 * * * *''.';
    END IF;

    IF v_text LIKE '@%' THEN
        v_text := CASE v_text
            WHEN '@yearly' THEN '0 0 1 1 *'
            WHEN '@annually' THEN '0 0 1 1 *'
            WHEN '@monthly' THEN '0 0 1 * *'
            WHEN '@weekly' THEN '0 0 * * 0'
            WHEN '@daily' THEN '0 0 * * *'
            WHEN '@midnight' THEN '0 0 * * *'
            WHEN '@hourly' THEN '0 * * * *'
        END;
        IF btrim(schedule, E' \t') = '@reboot' THEN
            PERFORM hubsync._cron_invalid(schedule,
                '@reboot runs a job only when the server starts, which does not keep the mirror current.');
        ELSIF v_text IS NULL THEN
            PERFORM hubsync._cron_invalid(schedule,
                'Known macros are @hourly, @daily, @midnight, @weekly, @monthly, @yearly and @annually.');
        END IF;
    END IF;

    v_fields := regexp_split_to_array(v_text, E'[ \t]+');
    IF v_text = '' OR cardinality(v_fields) <> 5 THEN
        PERFORM hubsync._cron_invalid(schedule,
            format('The schedule has %s %s; pg_cron expects 5: minute, hour, day of month, month, day of week.',
                   CASE WHEN v_text = '' THEN 0 ELSE cardinality(v_fields) END,
                   CASE WHEN v_text <> '' AND cardinality(v_fields) = 1 THEN 'field' ELSE 'fields' END));
    END IF;

    minutes := hubsync._cron_field(schedule, v_fields[1], 'minute', 0, 59);
    hours := hubsync._cron_field(schedule, v_fields[2], 'hour', 0, 23);
    days := hubsync._cron_field(schedule, v_fields[3], 'day-of-month', 1, 31);
    months := hubsync._cron_field(schedule, v_fields[4], 'month', 1, 12,
        ARRAY['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec']);
    -- Both 0 and 7 mean Sunday.
    weekdays := ARRAY(
        SELECT DISTINCT CASE WHEN d = 7 THEN 0 ELSE d END AS d
        FROM unnest(hubsync._cron_field(schedule, v_fields[5], 'day-of-week', 0, 7,
                    ARRAY['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'])) AS d
        ORDER BY 1);
    days_star := v_fields[3] LIKE '*%';
    weekdays_star := v_fields[5] LIKE '*%';
END;
$$;
COMMENT ON FUNCTION hubsync.cron_parse(text) IS 'Parse a pg_cron 1.4 schedule into the minutes, hours, days, months and weekdays it matches; raises for invalid schedules';

-- The first time after "after" at which pg_cron starts a job with this
-- schedule, or NULL when the schedule never matches.  Times are read in
-- time_zone: GMT for pg_cron 1.4.  Every date repeats its weekday every
-- 400 years, so a schedule that matches nothing in 401 years never does.
--
-- NOTE: in a time zone with daylight saving time, a local time that the
-- clock skips or repeats is converted as PostgreSQL converts it, which
-- may differ from pg_cron 1.5's handling of those hours.
CREATE FUNCTION hubsync.cron_next_run(schedule text, after timestamptz DEFAULT now(),
    time_zone text DEFAULT 'GMT') RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_spec record;
    v_start timestamp;
    v_start_date date;
    v_start_hour int;
    v_start_minute int;
    v_year int;
    v_month int;
    v_day int;
    v_hour int;
    v_minute int;
    v_date date;
    v_days_in_month int;
    v_day_matches boolean;
    v_weekday_matches boolean;
BEGIN
    IF after IS NULL OR time_zone IS NULL THEN
        RETURN NULL;
    END IF;
    v_spec := hubsync.cron_parse(schedule);

    -- pg_cron starts jobs at whole minutes, so the first candidate is the
    -- minute after the one "after" falls in.
    v_start := date_trunc('minute', after AT TIME ZONE time_zone) + interval '1 minute';
    v_start_date := v_start::date;
    v_start_hour := extract(hour FROM v_start)::int;
    v_start_minute := extract(minute FROM v_start)::int;

    FOR v_year IN extract(year FROM v_start)::int .. extract(year FROM v_start)::int + 401 LOOP
        FOREACH v_month IN ARRAY v_spec.months LOOP
            CONTINUE WHEN make_date(v_year, v_month, 1) < date_trunc('month', v_start_date)::date;
            v_days_in_month := extract(day FROM make_date(v_year, v_month, 1)
                                                + interval '1 month' - interval '1 day')::int;

            FOR v_day IN 1 .. v_days_in_month LOOP
                v_date := make_date(v_year, v_month, v_day);
                CONTINUE WHEN v_date < v_start_date;
                v_day_matches := v_day = ANY (v_spec.days);
                v_weekday_matches := extract(dow FROM v_date)::int = ANY (v_spec.weekdays);
                IF v_spec.days_star OR v_spec.weekdays_star THEN
                    CONTINUE WHEN NOT (v_day_matches AND v_weekday_matches);
                ELSE
                    CONTINUE WHEN NOT (v_day_matches OR v_weekday_matches);
                END IF;

                FOREACH v_hour IN ARRAY v_spec.hours LOOP
                    CONTINUE WHEN v_date = v_start_date AND v_hour < v_start_hour;
                    FOREACH v_minute IN ARRAY v_spec.minutes LOOP
                        CONTINUE WHEN v_date = v_start_date AND v_hour = v_start_hour
                                      AND v_minute < v_start_minute;
                        RETURN make_timestamp(v_year, v_month, v_day, v_hour, v_minute, 0)
                               AT TIME ZONE time_zone;
                    END LOOP;
                END LOOP;
            END LOOP;
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION hubsync.cron_next_run(text, timestamptz, text) IS 'First time after "after" at which pg_cron starts a job with this schedule (read in time_zone, GMT for pg_cron 1.4); NULL when it never runs';

-- Raise unless schedule is valid and runs at some time.
CREATE FUNCTION hubsync._cron_check(p_schedule text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF hubsync.cron_next_run(p_schedule, now(), 'GMT') IS NULL THEN
        PERFORM hubsync._cron_invalid(p_schedule,
            'The schedule never runs: no date matches its day-of-month, month and day-of-week fields.');
    END IF;
END;
$$;

-- ---------------------------------------------------------------------
-- The pg_cron job
-- ---------------------------------------------------------------------

-- Return a pg_cron setting, or NULL when pg_cron does not define it.
-- pg_cron marks its settings superuser-only.  This function is SECURITY
-- DEFINER so that members of hubsync_admin can schedule, and it reads only
-- the two settings hubsync needs.
CREATE FUNCTION hubsync._cron_setting(p_name text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN p_name IN ('cron.database_name', 'cron.timezone')
            THEN current_setting(p_name, true) END;

-- Return the time zone pg_cron reads schedules in: cron.timezone from
-- pg_cron 1.5 on, GMT before.
CREATE FUNCTION hubsync._cron_time_zone() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN coalesce(hubsync._cron_setting('cron.timezone'), 'GMT');

-- Return the database that contains pg_cron's jobs (cron.database_name).
-- Raises when pg_cron is not loaded.
CREATE FUNCTION hubsync._cron_database() RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_database text := hubsync._cron_setting('cron.database_name');
BEGIN
    IF v_database IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not loaded'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Scheduled syncs run as pg_cron jobs, and pg_cron must be loaded at server start.',
                  HINT = 'In postgresql.conf set shared_preload_libraries = ''pg_cron,hubsync'' and '
                         || format('cron.database_name = %L, then restart the server and run CREATE EXTENSION pg_cron in that database.',
                                   current_database());
    END IF;
    RETURN v_database;
END;
$$;

-- Return the name of the pg_cron job that hubsync_schedule() manages.  The
-- name contains the database name when the job is created from another
-- database, so that several hubsync databases can share one cron database.
CREATE FUNCTION hubsync._cron_job_name() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN hubsync._cron_setting('cron.database_name') = current_database()
            THEN 'hubsync'
            ELSE 'hubsync_' || current_database() END;

-- Return the schema of the extension's entry points (public unless CREATE
-- EXTENSION named another).
CREATE FUNCTION hubsync._extension_schema() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN (SELECT n.nspname
          FROM pg_catalog.pg_extension e
          JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'hubsync');

-- Return the command the job runs: CALL hubsync_run() in the extension's
-- schema.
CREATE FUNCTION hubsync._cron_command() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN format('CALL %I.hubsync_run()', hubsync._extension_schema());

-- Whether pg_cron's job table is in this database.  It reads the catalogs
-- because to_regclass() would need the USAGE privilege on schema cron.
CREATE FUNCTION hubsync._cron_installed() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'cron' AND c.relname = 'job');

CREATE FUNCTION hubsync._require_cron_extension() RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT hubsync._cron_installed() THEN
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run CREATE EXTENSION pg_cron; in this database as a superuser.';
    END IF;
END;
$$;

-- Run one statement in another database of this server, as the current
-- role, and return its first value; src/cron_remote.c describes how it
-- connects and why roles other than superusers need a password.
CREATE FUNCTION hubsync._cron_remote(database text, query text, arguments text[])
RETURNS text
AS 'MODULE_PATHNAME', 'hubsync_cron_remote'
LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION hubsync._cron_remote(text, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hubsync._cron_remote(text, text, text[]) TO hubsync_admin;

-- Create or replace the pg_cron job that runs CALL hubsync_run().
--
-- The job runs as the calling role (current_user).  That role must be able
-- to log in, because pg_cron connects as it, and must be allowed to call
-- hubsync_run() and to use schema cron.  A superuser's call also removes a
-- "hubsync" job of this database that another role owns, so that only one
-- job remains.  Other roles see only their own jobs.
-- cron.schedule() keeps an existing job's active flag and database, so a
-- job of the caller that was deactivated or moved with cron.alter_job()
-- is replaced by a new one.
CREATE FUNCTION @extschema@.hubsync_schedule(schedule text DEFAULT '*/15 * * * *')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schedule text := btrim(schedule, E' \t');
    v_cron_database text;
    v_job_name text := hubsync._cron_job_name();
    v_command text := hubsync._cron_command();
    v_other record;
    v_job_id bigint;
    v_message text;
    v_detail text;
    v_hint text;
BEGIN
    IF schedule IS NULL THEN
        RAISE EXCEPTION 'cron schedule must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass a schedule such as ''*/15 * * * *'', or call hubsync_schedule() without one.';
    END IF;
    -- Raised again from here, so that the error's context is this
    -- function rather than the parser's helpers.
    BEGIN
        PERFORM hubsync._cron_check(v_schedule);
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL,
                                v_hint = PG_EXCEPTION_HINT;
        RAISE EXCEPTION '%', v_message
            USING ERRCODE = 'invalid_parameter_value', DETAIL = v_detail, HINT = v_hint;
    END;

    IF NOT (SELECT r.rolcanlogin FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'role "%" cannot log in, so pg_cron cannot run the sync job as it', current_user
            USING ERRCODE = 'invalid_authorization_specification',
                  DETAIL = 'The job runs as the role that calls hubsync_schedule().',
                  HINT = 'Call hubsync_schedule() as a role with LOGIN, e.g. after RESET ROLE.';
    END IF;
    IF NOT has_function_privilege(format('%I.hubsync_run(text)', hubsync._extension_schema()),
                                  'EXECUTE') THEN
        RAISE EXCEPTION 'role "%" may not call hubsync_run(), so the sync job would fail', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Schedule the job as a role that may call hubsync_run(), such as a superuser.';
    END IF;

    -- In another database than pg_cron's, the job is created there, over a
    -- connection of this role (see hubsync._cron_remote).
    v_cron_database := hubsync._cron_database();
    IF v_cron_database <> current_database() THEN
        v_job_id := hubsync._cron_remote(
            v_cron_database,
            'SELECT cron.schedule_in_database($1, $2, $3, $4, $5)',
            ARRAY[v_job_name, v_schedule, v_command, current_database(), current_user::text])::bigint;
        RAISE NOTICE 'hubsync: pg_cron job % (in database "%") runs "%" in "%" on schedule "%" (%)',
                     v_job_id, v_cron_database, v_command, current_database(), v_schedule,
                     hubsync._cron_time_zone();
        RETURN v_job_id;
    END IF;
    PERFORM hubsync._require_cron_extension();

    IF NOT has_schema_privilege('cron', 'USAGE') THEN
        RAISE EXCEPTION 'role "%" may not use schema cron', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('As a superuser, run: GRANT USAGE ON SCHEMA cron TO %I;', current_user);
    END IF;

    FOR v_other IN
        SELECT j.jobid, j.username
          FROM cron.job j
         WHERE j.jobname = v_job_name AND j.database = current_database()
           AND j.username <> current_user
    LOOP
        IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
            RAISE EXCEPTION 'pg_cron job "%" belongs to role "%"', v_job_name, v_other.username
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('Run SELECT hubsync_unschedule(); as role "%s" or as a superuser first.',
                                    v_other.username);
        END IF;
        PERFORM cron.unschedule(v_other.jobid);
        RAISE NOTICE 'hubsync: removed pg_cron job % of role "%"', v_other.jobid, v_other.username;
    END LOOP;

    FOR v_other IN
        SELECT j.jobid FROM cron.job j
         WHERE j.jobname = v_job_name AND j.username = current_user
           AND (NOT j.active OR j.database <> current_database())
    LOOP
        PERFORM cron.unschedule(v_other.jobid);
        RAISE NOTICE 'hubsync: replaced inactive or moved pg_cron job %', v_other.jobid;
    END LOOP;

    -- cron.schedule() with a job name replaces the schedule and command of
    -- the caller's job of that name, keeping its job id.
    v_job_id := cron.schedule(v_job_name, v_schedule, v_command);

    RAISE NOTICE 'hubsync: pg_cron job % runs "%" on schedule "%" (%); next run at %',
                 v_job_id, v_command, v_schedule, hubsync._cron_time_zone(),
                 hubsync.cron_next_run(v_schedule, now(), hubsync._cron_time_zone());
    RETURN v_job_id;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_schedule(text) IS 'Create or replace the pg_cron job "hubsync" that runs CALL hubsync_run() in this database on a cron schedule (GMT in pg_cron 1.4); returns the job id';

-- Remove the pg_cron job that hubsync_schedule() created.  Returns false
-- when there was none.
CREATE FUNCTION @extschema@.hubsync_unschedule() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cron_database text := hubsync._cron_database();
    v_job_name text := hubsync._cron_job_name();
    v_job record;
    v_removed int := 0;
BEGIN
    IF v_cron_database <> current_database() THEN
        IF hubsync._cron_remote(
               v_cron_database,
               'SELECT bool_or(cron.unschedule(j.jobid)) FROM cron.job j'
               ' WHERE j.jobname = $1 AND j.database = $2',
               ARRAY[v_job_name, current_database()]) IS NULL THEN
            RAISE NOTICE 'hubsync: there is no pg_cron job "%" to remove', v_job_name;
            RETURN false;
        END IF;
        RETURN true;
    END IF;
    PERFORM hubsync._require_cron_extension();

    -- Row-level security on cron.job shows other roles only their own jobs.
    FOR v_job IN
        SELECT j.jobid FROM cron.job j
         WHERE j.jobname = v_job_name AND j.database = current_database()
    LOOP
        PERFORM cron.unschedule(v_job.jobid);
        v_removed := v_removed + 1;
    END LOOP;

    IF v_removed = 0 THEN
        RAISE NOTICE 'hubsync: there is no pg_cron job "%" to remove', v_job_name;
    END IF;
    RETURN v_removed > 0;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_unschedule() IS 'Remove the pg_cron job that hubsync_schedule() created; returns false when there was none';

-- ---------------------------------------------------------------------
-- Status
-- ---------------------------------------------------------------------

-- Whether a pg_cron command syncs this object type.  hubsync_run(),
-- hubsync_full_incremental() and hubsync_reconcile() without an argument
-- sync every type, and with a type name argument they sync that type.
CREATE FUNCTION hubsync._command_syncs(p_command text, p_entity_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN p_command ~* '\mhubsync_(run|full_incremental|reconcile)\s*\(\s*(null\s*)?\)'
    OR p_command ~* ('\mhubsync_(run|incremental|reconcile)\s*\(\s*(entity_type\s*=>\s*)?'''
                     || p_entity_type || '''');

-- List the pg_cron jobs of this database that run a hubsync sync, with
-- their next run.  The list is empty when pg_cron is not installed here.
CREATE FUNCTION hubsync._cron_jobs()
RETURNS TABLE (job_id bigint, job_name text, schedule text, command text,
               active boolean, next_run_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_time_zone text := hubsync._cron_time_zone();
    v_job record;
BEGIN
    IF NOT hubsync._cron_installed() THEN
        RETURN;
    END IF;
    FOR v_job IN
        SELECT j.jobid, j.jobname::text AS jobname, j.schedule, j.command, j.active
          FROM cron.job j
         WHERE j.database = current_database()
           AND (j.jobname = hubsync._cron_job_name()
                OR j.command ~* '\mhubsync_(run|incremental|full_incremental|reconcile)\M')
         ORDER BY j.jobid
    LOOP
        job_id := v_job.jobid;
        job_name := v_job.jobname;
        schedule := v_job.schedule;
        command := v_job.command;
        active := v_job.active;
        next_run_at := NULL;
        IF v_job.active THEN
            -- A schedule edited by hand may be one this parser rejects.
            BEGIN
                next_run_at := hubsync.cron_next_run(v_job.schedule, now(), v_time_zone);
            EXCEPTION WHEN invalid_parameter_value THEN
                next_run_at := NULL;
            END;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- Count the live and archived rows of every mirror table.
CREATE FUNCTION hubsync._record_counts()
RETURNS TABLE (entity_type text, records bigint, archived_records bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_type text;
BEGIN
    FOR v_type IN SELECT o.entity_type FROM hubsync.object_types o ORDER BY o.sync_order LOOP
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, count(*) FILTER (WHERE NOT archived), count(*) FILTER (WHERE archived)'
            '  FROM hubsync.%I', v_type, v_type);
    END LOOP;
END;
$$;

-- Count the transfer-queue entries waiting for review, per object type.
-- The queue table comes from part 30.  Without it, or without the columns
-- this counts by, the result is empty.
CREATE FUNCTION hubsync._pending_queue_counts()
RETURNS TABLE (entity_type text, pending bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT count(*) FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = to_regclass('hubsync.quickbooks_transfer_queue')
           AND a.attname IN ('entity_type', 'status') AND NOT a.attisdropped) < 2 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE
        'SELECT q.entity_type::text, count(*)'
        '  FROM hubsync.quickbooks_transfer_queue q'
        ' WHERE q.status = ''pending_review'''
        ' GROUP BY q.entity_type';
END;
$$;

-- Return the rows of hubsync_progress(), or none when hubsync is not in
-- shared_preload_libraries and progress reporting is unavailable.
CREATE FUNCTION hubsync._progress_rows()
RETURNS TABLE (entity_type text, pid int, phase text, started_at timestamptz,
               updated_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT p.entity_type, p.pid, p.phase, p.started_at, p.updated_at
          FROM @extschema@.hubsync_progress() p;
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RETURN;
END;
$$;

-- Whether backend p_pid is alive and started no later than p_since.  The
-- start time separates a live run from a dead one whose pid was reused.
CREATE FUNCTION hubsync._backend_alive(p_pid int, p_since timestamptz) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN p_pid IS NOT NULL AND EXISTS (
    SELECT 1 FROM pg_catalog.pg_stat_activity a
     WHERE a.pid = p_pid AND a.backend_start <= p_since);

-- Report the status of every object type.  The function is SECURITY
-- DEFINER so that it can read the pg_cron job of any role (cron.job shows
-- other roles only their own jobs) and every backend of pg_stat_activity.
-- EXECUTE is granted below.
CREATE FUNCTION @extschema@.hubsync_status_all()
RETURNS TABLE (entity_type text, state text, running_pid int, phase text,
               watermark timestamptz, last_sync_at timestamptz,
               last_success_at timestamptz, last_run_started_at timestamptz,
               last_run_finished_at timestamptz, last_error text,
               last_error_at timestamptz, consecutive_failures int,
               records bigint, archived_records bigint,
               pending_queue_entries bigint, schedule text,
               next_run_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH progress AS (
        SELECT * FROM hubsync._progress_rows()
    ),
    jobs AS (
        SELECT * FROM hubsync._cron_jobs()
    ),
    -- A failed run started with SELECT rolled back its sync_runs row, so
    -- only shared memory has the failure until the next run of the type
    -- records it.  A run that did record its failure started at most a
    -- second before its progress slot did.
    -- NOTE: two failures of one type less than a second apart can hide the
    -- second one here until the next run records it.
    pending_failures AS (
        SELECT p.entity_type, p.started_at, p.updated_at AS finished_at
          FROM progress p
         WHERE p.pid IS NULL AND p.phase = 'failed'
           AND NOT EXISTS (
                SELECT 1 FROM hubsync.sync_runs r
                 WHERE r.entity_type = p.entity_type
                   AND r.status IN ('failed', 'partial')
                   AND r.started_at BETWEEN p.started_at - interval '1 second' AND p.started_at)
    ),
    -- A row still marked running is live while its backend lives and, when
    -- the type has a progress slot, the slot names that backend.  Otherwise
    -- the run ended without recording how, and it is 'interrupted'.  A
    -- pending failure of the same run replaces its row.
    running_rows AS (
        SELECT r.*,
               hubsync._backend_alive(r.pid, r.started_at)
               AND NOT EXISTS (SELECT 1 FROM progress p
                                WHERE p.entity_type = r.entity_type
                                  AND p.pid IS DISTINCT FROM r.pid) AS live
          FROM hubsync.sync_runs r
         WHERE r.status = 'running'
           AND NOT EXISTS (
                SELECT 1 FROM pending_failures f
                 WHERE f.entity_type = r.entity_type
                   AND r.started_at BETWEEN f.started_at - interval '1 second' AND f.started_at)
    ),
    -- Every run but skipped ones.
    runs AS (
        SELECT r.entity_type, r.started_at, r.finished_at, r.pid, r.status, r.error
          FROM hubsync.sync_runs r
         WHERE r.status NOT IN ('skipped', 'running')
        UNION ALL
        SELECT r.entity_type, r.started_at, r.finished_at, r.pid,
               CASE WHEN r.live THEN 'running' ELSE 'interrupted' END,
               CASE WHEN r.live THEN NULL
                    ELSE 'the run ended without recording a result: its backend was terminated,'
                         ' the server restarted or the run failed where it could not record'
                         ' the error; committed steps were kept' END
          FROM running_rows r
        UNION ALL
        SELECT f.entity_type, f.started_at, f.finished_at, NULL::int, 'failed',
               'a run inside a transaction (hubsync_incremental, hubsync_full_incremental'
               ' or hubsync_reconcile) failed and rolled back; its error is written to'
               ' hubsync.sync_runs by the next run of this type, and the server log has it'
          FROM pending_failures f
    )
    SELECT o.entity_type,
           CASE WHEN running.pid IS NOT NULL THEN 'running'
                WHEN last_run.status IS NOT NULL THEN last_run.status
                WHEN w.last_sync_at IS NOT NULL THEN 'ok'
                ELSE 'never run' END,
           running.pid,
           running.phase,
           w.last_modified_at,
           w.last_sync_at,
           last_ok.finished_at,
           last_run.started_at,
           last_run.finished_at,
           last_failure.error,
           last_failure.at,
           (SELECT count(*)::int FROM runs r
             WHERE r.entity_type = o.entity_type
               AND r.status IN ('failed', 'partial', 'interrupted')
               AND r.started_at > coalesce(last_ok.started_at, '-infinity')),
           coalesce(counts.records, 0),
           coalesce(counts.archived_records, 0),
           coalesce(queue.pending, 0),
           job.schedule,
           job.next_run_at
      FROM hubsync.object_types o
      JOIN hubsync.sync_watermarks w ON w.entity_type = o.entity_type
      LEFT JOIN hubsync._record_counts() counts ON counts.entity_type = o.entity_type
      LEFT JOIN hubsync._pending_queue_counts() queue ON queue.entity_type = o.entity_type
      LEFT JOIN LATERAL (
            SELECT p.pid, p.phase FROM progress p
             WHERE p.entity_type = o.entity_type
               AND hubsync._backend_alive(p.pid, p.started_at)
            UNION ALL
            SELECT r.pid, NULL FROM runs r
             WHERE r.entity_type = o.entity_type AND r.status = 'running'
            LIMIT 1) running ON true
      LEFT JOIN LATERAL (
            SELECT r.status, r.started_at, r.finished_at FROM runs r
             WHERE r.entity_type = o.entity_type AND r.status <> 'running'
             ORDER BY r.started_at DESC LIMIT 1) last_run ON true
      LEFT JOIN LATERAL (
            SELECT r.started_at, r.finished_at FROM runs r
             WHERE r.entity_type = o.entity_type AND r.status = 'ok'
             ORDER BY r.started_at DESC LIMIT 1) last_ok ON true
      LEFT JOIN LATERAL (
            SELECT r.error, coalesce(r.finished_at, r.started_at) AS at FROM runs r
             WHERE r.entity_type = o.entity_type
               AND r.status IN ('failed', 'partial', 'interrupted')
             ORDER BY r.started_at DESC LIMIT 1) last_failure ON true
      LEFT JOIN LATERAL (
            SELECT j.schedule, j.next_run_at FROM jobs j
             WHERE j.active AND hubsync._command_syncs(j.command, o.entity_type)
             ORDER BY j.next_run_at NULLS LAST LIMIT 1) job ON true
     ORDER BY o.sync_order;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_status_all() IS 'Sync status of every object type: state, watermark, last success and error, row counts, pending queue entries and the next scheduled run (the rows of hubsync.sync_status)';

CREATE VIEW hubsync.sync_status AS
    SELECT * FROM @extschema@.hubsync_status_all();
COMMENT ON VIEW hubsync.sync_status IS 'One row per object type: is the sync running, current and healthy, and when does it run next';
COMMENT ON COLUMN hubsync.sync_status.entity_type IS 'Object type';
COMMENT ON COLUMN hubsync.sync_status.state IS 'running; else the outcome of the last run that was not skipped: ok, partial, failed or interrupted (its backend died before recording a result); ok when only the watermark shows a success, never run when nothing does';
COMMENT ON COLUMN hubsync.sync_status.running_pid IS 'Backend running a sync of this type now, NULL when none';
COMMENT ON COLUMN hubsync.sync_status.phase IS 'Phase of the running sync (search, archive scan, association refresh, reconcile, association sweep), from hubsync.sync_progress';
COMMENT ON COLUMN hubsync.sync_status.watermark IS 'Greatest HubSpot last-modified time written (sync_watermarks.last_modified_at); the next run continues after it';
COMMENT ON COLUMN hubsync.sync_status.last_sync_at IS 'Start of the last run that read every change up to its start: the mirror holds every change made before this time';
COMMENT ON COLUMN hubsync.sync_status.last_success_at IS 'When the last ok run finished, from hubsync.sync_runs (NULL once that row is pruned)';
COMMENT ON COLUMN hubsync.sync_status.last_run_started_at IS 'Start of the last run that was not skipped and is not running';
COMMENT ON COLUMN hubsync.sync_status.last_run_finished_at IS 'End of that run (NULL for an interrupted run)';
COMMENT ON COLUMN hubsync.sync_status.last_error IS 'Error of the last failed, partial or interrupted run, even when later runs succeeded';
COMMENT ON COLUMN hubsync.sync_status.last_error_at IS 'When that run ended (its start for an interrupted run)';
COMMENT ON COLUMN hubsync.sync_status.consecutive_failures IS 'Failed, partial and interrupted runs since the last ok run; 0 when the last run was ok';
COMMENT ON COLUMN hubsync.sync_status.records IS 'Live (not archived) rows in the mirror table';
COMMENT ON COLUMN hubsync.sync_status.archived_records IS 'Rows of records in HubSpot''s recycle bin';
COMMENT ON COLUMN hubsync.sync_status.pending_queue_entries IS 'QuickBooks transfer-queue entries of this type with status pending_review';
COMMENT ON COLUMN hubsync.sync_status.schedule IS 'Schedule of the active pg_cron job that syncs this type (GMT in pg_cron 1.4); NULL when there is none or pg_cron is in another database';
COMMENT ON COLUMN hubsync.sync_status.next_run_at IS 'When that pg_cron job runs next; NULL when there is no such job in this database';

-- ---------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------

-- Scheduling decides what runs as whom, so only superusers and members of
-- hubsync_admin (a role that part 30 creates) may do it, and read the
-- status, which shows errors and the job.
REVOKE ALL ON FUNCTION @extschema@.hubsync_schedule(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.hubsync_unschedule() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.hubsync_status_all() FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'hubsync_admin') THEN
        GRANT EXECUTE ON FUNCTION @extschema@.hubsync_schedule(text) TO hubsync_admin;
        GRANT EXECUTE ON FUNCTION @extschema@.hubsync_unschedule() TO hubsync_admin;
        GRANT EXECUTE ON FUNCTION @extschema@.hubsync_status_all() TO hubsync_admin;
        GRANT SELECT ON hubsync.sync_status TO hubsync_admin;
    END IF;
END;
$$;
