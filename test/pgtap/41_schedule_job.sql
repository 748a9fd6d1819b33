-- hubsync_schedule() and hubsync_unschedule() manage one pg_cron job that
-- runs CALL hubsync_run() in this database (the cron database of the test
-- cluster), only for superusers and hubsync_admin, and hubsync.sync_status
-- shows the job's schedule and next run.
BEGIN;
SELECT plan(52);

-- Jobs of the test database that hubsync manages or runs.
CREATE FUNCTION pg_temp.jobs() RETURNS TABLE (jobid bigint, jobname text, schedule text,
    command text, database text, username text, active boolean)
LANGUAGE sql AS $$
    SELECT jobid, jobname::text, schedule, command, database, username, active
      FROM cron.job WHERE command LIKE '%hubsync_run%' ORDER BY jobid
$$;

DELETE FROM cron.job WHERE command LIKE '%hubsync_run%';

-- Functions and privileges.
SELECT has_function('hubsync_schedule', ARRAY['text'], 'hubsync_schedule(text) exists');
SELECT has_function('hubsync_unschedule', ARRAY[]::text[], 'hubsync_unschedule() exists');
SELECT has_function('hubsync_status_all', ARRAY[]::text[], 'hubsync_status_all() exists');
SELECT has_view('hubsync', 'sync_status', 'view hubsync.sync_status exists');
SELECT ok(NOT has_function_privilege('public', 'hubsync_schedule(text)', 'EXECUTE'),
          'PUBLIC may not call hubsync_schedule()');
SELECT ok(NOT has_function_privilege('public', 'hubsync_unschedule()', 'EXECUTE'),
          'PUBLIC may not call hubsync_unschedule()');
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hubsync_admin')
            THEN ok(has_function_privilege('hubsync_admin', 'hubsync_schedule(text)', 'EXECUTE')
                    AND has_function_privilege('hubsync_admin', 'hubsync_unschedule()', 'EXECUTE'),
                    'hubsync_admin may schedule and unschedule')
            ELSE skip('role hubsync_admin does not exist', 1) END;
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hubsync_admin')
            THEN ok(has_table_privilege('hubsync_admin', 'hubsync.sync_status', 'SELECT')
                    AND has_function_privilege('hubsync_admin', 'hubsync_status_all()', 'EXECUTE'),
                    'hubsync_admin may read sync_status')
            ELSE skip('role hubsync_admin does not exist', 1) END;
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hubsync_reviewer')
            THEN ok(NOT has_function_privilege('hubsync_reviewer', 'hubsync_schedule(text)', 'EXECUTE'),
                    'hubsync_reviewer may not schedule')
            ELSE skip('role hubsync_reviewer does not exist', 1) END;
SELECT ok(NOT has_function_privilege('public', 'hubsync_status_all()', 'EXECUTE'),
          'PUBLIC may not call hubsync_status_all()');

-- A new job with the default schedule.
CREATE TEMP TABLE first_job AS SELECT hubsync_schedule() AS jobid;
SELECT results_eq(
    'SELECT jobid, jobname, schedule, command, database, username, active FROM pg_temp.jobs()',
    format($$VALUES (%s::bigint, 'hubsync'::text, '*/15 * * * *'::text, 'CALL public.hubsync_run()'::text,
                     %L::text, %L::text, true)$$,
           (SELECT jobid FROM first_job), current_database(), current_user),
    'hubsync_schedule() creates job "hubsync" running CALL public.hubsync_run() every 15 minutes');

-- Scheduling again replaces the schedule of the same job.
SELECT is(hubsync_schedule(E' 0 */2 * * *\t'), (SELECT jobid FROM first_job),
          'hubsync_schedule() again returns the same job id');
SELECT results_eq('SELECT schedule FROM pg_temp.jobs()', $$VALUES ('0 */2 * * *'::text)$$,
                  'the job has the new schedule, trimmed, and no second job exists');

-- Invalid schedules leave the job alone.
SELECT is(hubsync_test.error_of($$SELECT hubsync_schedule('61 * * * *')$$) - 'hint',
          '{"sqlstate": "22023", "message": "invalid cron schedule \"61 * * * *\"", "detail": "The minute value 61 is out of range 0-59."}'::jsonb,
          'hubsync_schedule() rejects an out-of-range minute');
SELECT is(hubsync_test.error_of($$SELECT hubsync_schedule('0 0 30 2 *')$$)->>'detail',
          'The schedule never runs: no date matches its day-of-month, month and day-of-week fields.',
          'hubsync_schedule() rejects a schedule that never runs');
SELECT is(hubsync_test.error_of($$SELECT hubsync_schedule('* * * * * *')$$)->>'sqlstate', '22023',
          'hubsync_schedule() rejects six fields, which pg_cron 1.4 would accept');
SELECT is(hubsync_test.error_of($$SELECT hubsync_schedule(NULL)$$)->>'sqlstate', '22004',
          'hubsync_schedule(NULL) raises null_value_not_allowed');
SELECT results_eq('SELECT schedule FROM pg_temp.jobs()', $$VALUES ('0 */2 * * *'::text)$$,
                  'rejected schedules left the job unchanged');

-- A job deactivated by hand is replaced by an active one.
SELECT cron.alter_job((SELECT jobid FROM first_job), active := false);
SELECT isnt(hubsync_schedule('*/5 * * * *'), (SELECT jobid FROM first_job),
            'a deactivated job is replaced by a new job');
SELECT results_eq('SELECT schedule, active FROM pg_temp.jobs()', $$VALUES ('*/5 * * * *'::text, true)$$,
                  'the replacement is active and the only job');

-- sync_status shows the schedule and next run on every row.
SELECT is((SELECT count(*)::int FROM hubsync.sync_status), 4, 'sync_status has one row per object type');
SELECT results_eq(
    'SELECT entity_type, schedule, next_run_at FROM hubsync.sync_status',
    $$SELECT entity_type, '*/5 * * * *'::text, hubsync.cron_next_run('*/5 * * * *', now())
        FROM hubsync.object_types ORDER BY sync_order$$,
    'sync_status shows the schedule and next run of each type');
SELECT ok((SELECT bool_and(next_run_at > now() AND next_run_at <= now() + interval '5 minutes'
                           AND extract(minute FROM next_run_at)::int % 5 = 0
                           AND extract(second FROM next_run_at) = 0)
             FROM hubsync.sync_status),
          'the next run is on a whole minute divisible by 5 within 5 minutes');
SELECT results_eq('SELECT entity_type, schedule, next_run_at FROM hubsync.sync_status',
                  'SELECT entity_type, schedule, next_run_at FROM hubsync_status_all()',
                  'the view shows the rows of hubsync_status_all()');

-- A job made by hand for one type counts for that type only.
SELECT cron.schedule('contacts at three', '0 3 * * *', $$CALL public.hubsync_run('contacts')$$);
SELECT ok(hubsync_unschedule(), 'hubsync_unschedule() returns true when it removed the job');
SELECT results_eq('SELECT jobname FROM pg_temp.jobs()', $$VALUES ('contacts at three'::text)$$,
                  'hubsync_unschedule() removed only its own job');
SELECT results_eq(
    'SELECT entity_type, schedule, next_run_at FROM hubsync.sync_status',
    $$SELECT entity_type,
             CASE WHEN entity_type = 'contacts' THEN '0 3 * * *' END,
             CASE WHEN entity_type = 'contacts' THEN hubsync.cron_next_run('0 3 * * *', now()) END
        FROM hubsync.object_types ORDER BY sync_order$$,
    'a job syncing contacts shows on the contacts row only');
SELECT ok(NOT hubsync_unschedule(), 'hubsync_unschedule() returns false when there is no job');
SELECT cron.unschedule('contacts at three');
SELECT is((SELECT count(*)::int FROM hubsync.sync_status WHERE schedule IS NOT NULL OR next_run_at IS NOT NULL),
          0, 'without jobs, sync_status shows no schedule and no next run');

-- Which commands sync which type.
SELECT is(hubsync._command_syncs(command, entity_type), expected, format('%s syncs %s: %s', command, entity_type, expected))
FROM (VALUES
    ('CALL public.hubsync_run()', 'invoices', true),
    ('call hubsync_run( )', 'contacts', true),
    ($$CALL public.hubsync_run('contacts')$$, 'contacts', true),
    ($$CALL public.hubsync_run('contacts')$$, 'invoices', false),
    ($$CALL hubsync_run(entity_type => 'invoices')$$, 'invoices', true),
    ('SELECT * FROM hubsync_full_incremental()', 'companies', true),
    ($$SELECT * FROM hubsync_incremental('line_items')$$, 'line_items', true),
    ('VACUUM hubsync.contacts', 'contacts', false)
) AS cases(command, entity_type, expected);

-- Roles: the job runs as the caller, who needs LOGIN and schema cron.
CREATE ROLE hubsync_test_scheduler LOGIN;
CREATE ROLE hubsync_test_nologin NOLOGIN;
-- What hubsync_admin is granted, given directly so that the test does not
-- depend on that role.
GRANT USAGE ON SCHEMA hubsync TO hubsync_test_scheduler, hubsync_test_nologin;
GRANT EXECUTE ON FUNCTION hubsync_schedule(text), hubsync_unschedule()
    TO hubsync_test_scheduler, hubsync_test_nologin;
GRANT EXECUTE ON PROCEDURE hubsync_run(text) TO hubsync_test_scheduler, hubsync_test_nologin;

SET ROLE hubsync_test_nologin;
SELECT is(hubsync_test.error_of('SELECT hubsync_schedule()') - 'hint' - 'detail',
          '{"sqlstate": "28000", "message": "role \"hubsync_test_nologin\" cannot log in, so pg_cron cannot run the sync job as it"}'::jsonb,
          'a role without LOGIN cannot schedule');
RESET ROLE;

SET ROLE hubsync_test_scheduler;
SELECT is(hubsync_test.error_of('SELECT hubsync_schedule()') - 'detail',
          '{"sqlstate": "42501", "message": "role \"hubsync_test_scheduler\" may not use schema cron", "hint": "As a superuser, run: GRANT USAGE ON SCHEMA cron TO hubsync_test_scheduler;"}'::jsonb,
          'a role without USAGE on schema cron gets the GRANT to run');
RESET ROLE;
GRANT USAGE ON SCHEMA cron TO hubsync_test_scheduler;
SET ROLE hubsync_test_scheduler;
SELECT lives_ok('SELECT hubsync_schedule(''*/30 * * * *'')', 'a role with LOGIN and USAGE on cron can schedule');
RESET ROLE;
SELECT results_eq('SELECT username, schedule FROM pg_temp.jobs()',
                  $$VALUES ('hubsync_test_scheduler'::text, '*/30 * * * *'::text)$$,
                  'the job runs as the role that scheduled it');
SELECT results_eq('SELECT schedule FROM hubsync.sync_status LIMIT 1', $$VALUES ('*/30 * * * *'::text)$$,
                  'sync_status shows a job of another role');

-- A superuser's call replaces the other role's job.
SELECT lives_ok('SELECT hubsync_schedule()', 'a superuser schedules over another role''s job');
SELECT results_eq('SELECT username, schedule FROM pg_temp.jobs()',
                  format($$VALUES (%L::text, '*/15 * * * *'::text)$$, current_user),
                  'only the superuser''s job is left');
SET ROLE hubsync_test_scheduler;
SELECT ok(NOT hubsync_unschedule(), 'another role does not see, and cannot remove, the superuser''s job');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM pg_temp.jobs()), 1, 'the superuser''s job is still there');

REVOKE EXECUTE ON PROCEDURE hubsync_run(text) FROM PUBLIC, hubsync_test_scheduler;
SET ROLE hubsync_test_scheduler;
SELECT is(hubsync_test.error_of('SELECT hubsync_schedule()')->>'message',
          'role "hubsync_test_scheduler" may not call hubsync_run(), so the sync job would fail',
          'a role that may not call hubsync_run() cannot schedule it');
RESET ROLE;

-- Documentation.
SELECT is((SELECT count(*)::int FROM pg_attribute
            WHERE attrelid = 'hubsync.sync_status'::regclass AND attnum > 0
              AND col_description(attrelid, attnum) IS NULL),
          0, 'every column of sync_status has a comment');
SELECT ok(obj_description('hubsync.sync_status'::regclass, 'pg_class') IS NOT NULL,
          'sync_status has a comment');
SELECT ok(obj_description('hubsync_schedule(text)'::regprocedure, 'pg_proc') IS NOT NULL
          AND obj_description('hubsync_unschedule()'::regprocedure, 'pg_proc') IS NOT NULL
          AND obj_description('hubsync_status_all()'::regprocedure, 'pg_proc') IS NOT NULL
          AND obj_description('hubsync.cron_next_run(text, timestamptz, text)'::regprocedure, 'pg_proc') IS NOT NULL,
          'the public functions have comments');

-- Without pg_cron in this database (DROP EXTENSION is rolled back below).
DROP EXTENSION pg_cron;
SELECT is(hubsync_test.error_of('SELECT hubsync_schedule()') - 'detail',
          jsonb_build_object('sqlstate', '55000',
                             'message', format('pg_cron is not installed in database "%s"', current_database()),
                             'hint', 'Run CREATE EXTENSION pg_cron; in this database as a superuser.'),
          'without the pg_cron extension, hubsync_schedule() says what to install');
SELECT is((SELECT count(*)::int FROM hubsync.sync_status WHERE next_run_at IS NULL), 4,
          'without the pg_cron extension, sync_status has no next run');

SELECT * FROM finish();
ROLLBACK;
