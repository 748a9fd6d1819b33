-- Test helpers, installed by test/run-tests.sh into the test database.
-- They drive the local HubSpot-compatible server's control API through
-- test/hubspot_ctl.py (COPY FROM PROGRAM, so superuser only) and reset
-- hubsync's state between test files.  Nothing here is part of hubsync.

CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cron;
CREATE EXTENSION IF NOT EXISTS hubsync;

CREATE SCHEMA IF NOT EXISTS hubsync_test;

-- Two reviewer logins for the review and audit tests.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hs_test_alice') THEN
        CREATE ROLE hs_test_alice LOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hs_test_bob') THEN
        CREATE ROLE hs_test_bob LOGIN;
    END IF;
END;
$$;
GRANT hubsync_reviewer TO hs_test_alice, hs_test_bob;

-- Tests switch to unprivileged roles and still call error_of().
GRANT USAGE ON SCHEMA hubsync_test TO PUBLIC;

-- Single-quote a string for /bin/sh.
CREATE OR REPLACE FUNCTION hubsync_test.shell_quote(value text) RETURNS text
LANGUAGE sql IMMUTABLE
RETURN '''' || replace(value, '''', '''\''''') || '''';

-- Lines printed by hubspot_ctl.py for one control call.
CREATE OR REPLACE FUNCTION hubsync_test.ctl_lines(verb text, body jsonb DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    command text;
BEGIN
    command := format('%s %s --url %s %s %s',
                      hubsync_test.shell_quote(coalesce(current_setting('hubsync_test.python', true), 'python3')),
                      hubsync_test.shell_quote(current_setting('hubsync_test.ctl')),
                      hubsync_test.shell_quote(current_setting('hubsync_test.mock_url')),
                      hubsync_test.shell_quote(verb),
                      CASE WHEN body IS NULL THEN '' ELSE hubsync_test.shell_quote(body::text) END);
    CREATE TEMP TABLE IF NOT EXISTS hubsync_test_output (n serial, line text);
    TRUNCATE hubsync_test_output;
    -- CSV with quote and delimiter characters that never occur keeps each
    -- output line exactly as printed, backslashes included.
    EXECUTE format('COPY hubsync_test_output (line) FROM PROGRAM %L'
                   ' WITH (FORMAT csv, DELIMITER E''\x01'', QUOTE E''\x02'')', command);
    RETURN QUERY SELECT line FROM hubsync_test_output WHERE line <> '' ORDER BY n;
END;
$$;

-- One control call whose response is a single JSON document.
CREATE OR REPLACE FUNCTION hubsync_test.mock(verb text, body jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql
RETURN (SELECT string_agg(l, E'\n')::jsonb FROM hubsync_test.ctl_lines(verb, body) AS l);

-- Every live (or archived) record of one type, as the API shapes it.
CREATE OR REPLACE FUNCTION hubsync_test.dump(entity_type text, archived boolean DEFAULT false)
RETURNS SETOF jsonb
LANGUAGE sql
AS $$
    SELECT l::jsonb FROM hubsync_test.ctl_lines(
        'dump', jsonb_build_object('type', entity_type, 'archived', archived)) AS l;
$$;

CREATE OR REPLACE FUNCTION hubsync_test.dump_associations(from_type text, to_type text)
RETURNS SETOF jsonb
LANGUAGE sql
AS $$
    SELECT l::jsonb FROM hubsync_test.ctl_lines(
        'dump_associations', jsonb_build_object('from_type', from_type, 'to_type', to_type)) AS l;
$$;

-- Request log of the server since the last reset or stats/clear.
CREATE OR REPLACE FUNCTION hubsync_test.requests() RETURNS SETOF jsonb
LANGUAGE sql
AS $$
    SELECT r FROM jsonb_array_elements(hubsync_test.mock('stats')->'requests') AS r;
$$;

-- Fresh portal on the server and an empty mirror with no watermarks.
CREATE OR REPLACE FUNCTION hubsync_test.reset(portal text DEFAULT 'small') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    PERFORM hubsync_test.mock('reset', jsonb_build_object('portal', portal));
    -- Every table of schema hubsync that holds state rather than configuration.
    FOR t IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'hubsync' AND c.relkind = 'r'
          AND c.relname NOT IN ('object_types', 'association_types', 'sync_properties',
                                'tracked_fields', 'sync_watermarks')
    LOOP
        EXECUTE format('TRUNCATE hubsync.%I RESTART IDENTITY CASCADE', t);
    END LOOP;
    UPDATE hubsync.sync_watermarks
       SET last_sync_at = NULL, last_modified_at = NULL, last_modified_id = NULL,
           indexed_before = NULL, entity_count = 0, last_archive_scan_at = NULL,
           last_reconcile_at = NULL;
    DELETE FROM hubsync.sync_properties WHERE NOT is_default;
END;
$$;

-- Helpers that capture a statement's error and compare what runs wrote.

CREATE OR REPLACE FUNCTION hubsync_test.error_of(statement text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_message text;
    v_detail text;
    v_hint text;
BEGIN
    EXECUTE statement;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
    RETURN jsonb_build_object('sqlstate', v_state, 'message', v_message,
                              'detail', v_detail, 'hint', v_hint);
END;
$$;

-- Fingerprint of everything a sync writes: mirror rows, associations and
-- watermarks.
CREATE OR REPLACE FUNCTION hubsync_test.mirror_digest() RETURNS text
LANGUAGE sql AS $$
    SELECT md5(concat_ws('|',
        (SELECT string_agg(format('%s %s %s %s', id, properties, updated_at, archived), ',' ORDER BY id) FROM hubsync.companies),
        (SELECT string_agg(format('%s %s %s %s', id, properties, updated_at, archived), ',' ORDER BY id) FROM hubsync.contacts),
        (SELECT string_agg(format('%s %s %s %s', id, properties, updated_at, archived), ',' ORDER BY id) FROM hubsync.line_items),
        (SELECT string_agg(format('%s %s %s %s', id, properties, updated_at, archived), ',' ORDER BY id) FROM hubsync.invoices),
        (SELECT string_agg(a::text, ',' ORDER BY a::text)
           FROM (SELECT from_type, from_id, to_type, to_id, type_id, category, label
                   FROM hubsync.associations) AS a),
        (SELECT string_agg(w::text, ',' ORDER BY w.entity_type) FROM hubsync.sync_watermarks w)))
$$;

-- Run statement with the given faults installed.  Returns its error (or
-- NULL), the requests the server saw, the elapsed time and whether the
-- mirror is unchanged.
CREATE OR REPLACE FUNCTION hubsync_test.run_with(statement text, faults jsonb DEFAULT '[]') RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_before text := hubsync_test.mirror_digest();
    v_started timestamptz;
    v_error jsonb;
    v_elapsed_ms numeric;
BEGIN
    PERFORM hubsync_test.mock('faults', jsonb_build_object('faults', faults));
    PERFORM hubsync_test.mock('stats/clear');
    v_started := clock_timestamp();
    v_error := hubsync_test.error_of(statement);
    v_elapsed_ms := extract(epoch FROM clock_timestamp() - v_started) * 1000;
    PERFORM hubsync_test.mock('faults', '{"faults": []}');
    RETURN jsonb_build_object(
        'error', v_error,
        'elapsed_ms', v_elapsed_ms,
        'unchanged', hubsync_test.mirror_digest() = v_before,
        'requests', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                'method', r->>'method', 'path', r->>'path', 'status', (r->>'status')::int)), '[]')
                       FROM hubsync_test.requests() AS r));
END;
$$;

-- Requests of one run to a path, optionally only those with a status.
CREATE OR REPLACE FUNCTION hubsync_test.run_requests(run jsonb, path text, status int DEFAULT NULL) RETURNS int
LANGUAGE sql AS $$
    SELECT count(*)::int FROM jsonb_array_elements(run->'requests') AS r
     WHERE r->>'path' = path AND (status IS NULL OR (r->>'status')::int = status)
$$;
