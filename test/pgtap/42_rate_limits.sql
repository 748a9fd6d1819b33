-- HTTP 429 responses.  TEN_SECONDLY_ROLLING and SECONDLY are waited out
-- (counted in sync_runs.rate_limited) and the data ends up complete.  The
-- DAILY limit stops the run at once with a clear error and writes nothing.
-- Runs here are SELECTs, so a failed run rolls back as a whole.  The
-- committed steps of a failed CALL hubsync_run() are checked in
-- test/t/40_partial_runs.t.
SELECT hubsync_test.reset('small');
SELECT plan(42);

SET hubsync.retry_base_delay = '10ms';
SET hubsync.retry_max_delay = '300ms';
SET hubsync.max_retries = 2;

-- Mirror rows (id, updated_at) against the portal's live records.
CREATE FUNCTION pg_temp.mirror_matches_portal() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    v_missing bigint;
BEGIN
    FOR t IN SELECT entity_type FROM hubsync.object_types LOOP
        EXECUTE format($q$
            SELECT count(*) FROM (
                (SELECT (d->>'id')::bigint, (d->>'updatedAt')::timestamptz FROM hubsync_test.dump(%1$L) AS d
                 EXCEPT SELECT id, updated_at FROM hubsync.%1$I)
                UNION ALL
                (SELECT id, updated_at FROM hubsync.%1$I
                 EXCEPT SELECT (d->>'id')::bigint, (d->>'updatedAt')::timestamptz FROM hubsync_test.dump(%1$L) AS d)) AS diff
            $q$, t) INTO v_missing;
        IF v_missing > 0 THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END;
$$;

CREATE FUNCTION pg_temp.associations_match_portal() RETURNS boolean
LANGUAGE sql AS $$
    SELECT NOT EXISTS (
        (SELECT from_type, from_id, to_type, to_id, type_id, category, label FROM hubsync.associations
         EXCEPT
         SELECT f, (a->>'from_id')::bigint, t, (a->>'to_id')::bigint, (a->>'type_id')::int, a->>'category', a->>'label'
           FROM hubsync.association_types AS p(f, t), LATERAL hubsync_test.dump_associations(f, t) AS a)
        UNION ALL
        (SELECT f, (a->>'from_id')::bigint, t, (a->>'to_id')::bigint, (a->>'type_id')::int, a->>'category', a->>'label'
           FROM hubsync.association_types AS p(f, t), LATERAL hubsync_test.dump_associations(f, t) AS a
         EXCEPT
         SELECT from_type, from_id, to_type, to_id, type_id, category, label FROM hubsync.associations))
$$;

-- TEN_SECONDLY_ROLLING on the association batch reads of a full load.
-- The non-search responses give a 10,000 ms window, and the wait is capped
-- by hubsync.retry_max_delay (300 ms).
CREATE TEMP TABLE ten_secondly AS
SELECT hubsync_test.run_with('SELECT * FROM hubsync_full_incremental()',
    '[{"path": "^/crm/v4/associations/", "kind": "rate429", "policy": "TEN_SECONDLY_ROLLING", "count": 2}]') AS run;
SELECT is((SELECT run->>'error' FROM ten_secondly), NULL, 'TEN_SECONDLY_ROLLING: the run succeeds');
SELECT is((SELECT count(*)::int FROM jsonb_array_elements((SELECT run->'requests' FROM ten_secondly)) r
            WHERE (r->>'status')::int = 429), 2, 'TEN_SECONDLY_ROLLING: the server sent two 429s');
SELECT is((SELECT sum(rate_limited)::int FROM hubsync.sync_runs), 2,
          'TEN_SECONDLY_ROLLING: sync_runs counts both in rate_limited');
SELECT is((SELECT sum(retries)::int FROM hubsync.sync_runs), 0,
          'TEN_SECONDLY_ROLLING: rate-limit waits are not counted as retries');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM ten_secondly), '>=', 600::numeric,
              'TEN_SECONDLY_ROLLING: the run waited 300 ms after each 429');
SELECT ok(pg_temp.mirror_matches_portal(), 'TEN_SECONDLY_ROLLING: every record is mirrored');
SELECT ok(pg_temp.associations_match_portal(), 'TEN_SECONDLY_ROLLING: every association is mirrored');

-- SECONDLY on search, after an edit in the portal.
SELECT hubsync_test.mock('edit', '{"type": "companies", "id": "1000003", "properties": {"city": "Rate Limit City"}}');
CREATE TEMP TABLE secondly AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies/search$", "kind": "rate429", "policy": "SECONDLY", "count": 2}]') AS run;
SELECT is((SELECT run->>'error' FROM secondly), NULL, 'SECONDLY: the run succeeds');
SELECT is(hubsync_test.run_requests((SELECT run FROM secondly), '/crm/v3/objects/companies/search', 429), 2,
          'SECONDLY: two searches were rate limited');
SELECT is((SELECT rate_limited::int FROM hubsync.sync_runs WHERE entity_type = 'companies' ORDER BY id DESC LIMIT 1),
          2, 'SECONDLY: the companies run counts 2 rate-limited responses');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM secondly), '>=', 600::numeric,
              'SECONDLY: the run waited after each 429');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM secondly), '<', 1500::numeric,
              'SECONDLY: each wait is capped by hubsync.retry_max_delay');
SELECT is((SELECT properties->>'city' FROM hubsync.companies WHERE id = 1000003), 'Rate Limit City',
          'SECONDLY: the edit made before the run is mirrored');

-- TEN_SECONDLY_ROLLING on a search response, which has no rate-limit
-- headers: the 10-second default window is capped too.
CREATE TEMP TABLE no_headers AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('contacts')$$,
    '[{"path": "^/crm/v3/objects/contacts/search$", "kind": "rate429", "policy": "TEN_SECONDLY_ROLLING", "count": 1}]') AS run;
SELECT is((SELECT run->>'error' FROM no_headers), NULL, 'no window header: the run succeeds');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM no_headers), '<', 2000::numeric,
              'no window header: the wait is capped by hubsync.retry_max_delay');

-- Retry-After decides the wait when HubSpot sends it.
SET hubsync.retry_max_delay = '5s';
SELECT hubsync_test.mock('config', '{"retry_after_seconds": 1}');
SELECT hubsync_test.mock('edit', '{"type": "companies", "id": "1000004", "properties": {"city": "Retry After City"}}');
CREATE TEMP TABLE retry_after AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies$", "kind": "rate429", "policy": "TEN_SECONDLY_ROLLING", "count": 1}]') AS run;
SELECT hubsync_test.mock('config', '{"retry_after_seconds": null}');
SET hubsync.retry_max_delay = '300ms';
SELECT is((SELECT run->>'error' FROM retry_after), NULL, 'Retry-After: the run succeeds');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM retry_after), '>=', 1000::numeric,
              'Retry-After: 1 second was waited although the window header says 10 seconds');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM retry_after), '<', 4000::numeric,
              'Retry-After: no longer than needed');
SELECT is((SELECT properties->>'city' FROM hubsync.companies WHERE id = 1000004), 'Retry After City',
          'Retry-After: the edit is mirrored');

-- The server's own search limiter: 2 searches per second, while the client
-- is allowed 50.  Every page is waited for and read.
SELECT hubsync_test.reset('small');
SELECT hubsync_test.mock('config', '{"search_per_second": 2}');
CREATE TEMP TABLE limiter AS
SELECT hubsync_test.run_with('SELECT * FROM hubsync_full_incremental()') AS run;
SELECT hubsync_test.mock('config', '{"search_per_second": null}');
SELECT is((SELECT run->>'error' FROM limiter), NULL, 'search limiter: the full load succeeds');
SELECT cmp_ok((SELECT sum(rate_limited)::int FROM hubsync.sync_runs), '>', 0,
              'search limiter: rate-limited responses are counted');
SELECT is((SELECT sum(rate_limited)::int FROM hubsync.sync_runs),
          (SELECT count(*)::int FROM jsonb_array_elements((SELECT run->'requests' FROM limiter)) r
            WHERE (r->>'status')::int = 429),
          'search limiter: rate_limited equals the 429s the server sent');
SELECT ok(pg_temp.mirror_matches_portal(), 'search limiter: every record is mirrored');
SELECT ok(pg_temp.associations_match_portal(), 'search limiter: every association is mirrored');

-- A limit still reached after hubsync.max_rate_limit_waits waits fails
-- with an error that names the policy.
SET hubsync.max_rate_limit_waits = 2;
CREATE TEMP TABLE exhausted AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('contacts')$$,
    '[{"path": "^/crm/v3/objects/contacts/search$", "kind": "rate429", "policy": "SECONDLY", "count": -1}]') AS run;
RESET hubsync.max_rate_limit_waits;
SELECT is((SELECT run->'error'->>'message' FROM exhausted),
          'HubSpot rate limit SECONDLY still reached for POST /crm/v3/objects/contacts/search after 2 waits (HTTP 429)',
          'waits exhausted: the error names policy, endpoint and waits');
SELECT is((SELECT run->'error'->>'sqlstate' FROM exhausted), '53400', 'waits exhausted: SQLSTATE 53400');
SELECT alike((SELECT run->'error'->>'hint' FROM exhausted), '%hubsync.max_rate_limit_waits%',
             'waits exhausted: the hint names the setting');
SELECT is(hubsync_test.run_requests((SELECT run FROM exhausted), '/crm/v3/objects/contacts/search'), 3,
          'waits exhausted: the first request and two more after waiting');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM exhausted), 'waits exhausted: nothing was written');

-- DAILY stops the run at the first 429, without waiting or retrying.
SELECT hubsync_test.mock('edit', '{"type": "contacts", "id": "2000002", "properties": {"jobtitle": "Daily"}}');
SELECT hubsync_test.mock('edit', '{"type": "invoices", "id": "3000002", "properties": {"hs_title": "Daily"}}');
CREATE TEMP TABLE watermarks_before AS SELECT * FROM hubsync.sync_watermarks;
CREATE TEMP TABLE daily AS
SELECT hubsync_test.run_with('SELECT * FROM hubsync_full_incremental()',
    '[{"path": "^/crm/v3/objects/invoices/search$", "kind": "rate429", "policy": "DAILY", "count": -1}]') AS run;
SELECT is((SELECT run->'error'->>'message' FROM daily),
          'HubSpot daily request limit reached for POST /crm/v3/objects/invoices/search (HTTP 429, policy DAILY)',
          'DAILY: the error names the endpoint and the policy');
SELECT is((SELECT run->'error'->>'sqlstate' FROM daily), '53400', 'DAILY: SQLSTATE 53400');
SELECT alike((SELECT run->'error'->>'hint' FROM daily), '%resets at midnight in the portal''s time zone%',
             'DAILY: the hint says when the limit resets');
SELECT alike((SELECT run->'error'->>'detail' FROM daily), 'HubSpot says: You have reached your daily limit.%',
             'DAILY: the detail has HubSpot''s message');
SELECT is(hubsync_test.run_requests((SELECT run FROM daily), '/crm/v3/objects/invoices/search'), 1,
          'DAILY: exactly one search request, no retry');
SELECT is((SELECT (r->>'path') FROM jsonb_array_elements((SELECT run->'requests' FROM daily)) WITH ORDINALITY AS x(r, n)
            ORDER BY n DESC LIMIT 1),
          '/crm/v3/objects/invoices/search', 'DAILY: nothing was requested after the 429');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM daily), '<', 2000::numeric, 'DAILY: no waiting');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM daily), 'DAILY: mirror, associations and watermarks are unchanged');
SELECT set_eq('SELECT * FROM hubsync.sync_watermarks', 'SELECT * FROM watermarks_before',
              'DAILY: no watermark moved, not even those of the types before invoices');

-- The daily limit of the server itself.
SELECT hubsync_test.mock('stats/clear');
SELECT hubsync_test.mock('config', '{"daily": 2}');
CREATE TEMP TABLE daily_limiter AS
SELECT hubsync_test.run_with('SELECT * FROM hubsync_full_incremental()') AS run;
SELECT hubsync_test.mock('config', '{"daily": null}');
SELECT alike((SELECT run->'error'->>'message' FROM daily_limiter),
             'HubSpot daily request limit reached for % (HTTP 429, policy DAILY)',
             'daily limiter: the run stops with the daily-limit error');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM daily_limiter), 'daily limiter: nothing was written');

-- Once the limit is gone the next run catches up.
SELECT is((SELECT count(*)::int FROM hubsync_full_incremental() WHERE status = 'ok'), 4,
          'after the limit: every type syncs');
SELECT is((SELECT properties->>'jobtitle' FROM hubsync.contacts WHERE id = 2000002), 'Daily',
          'after the limit: the contact edit is mirrored');

SELECT * FROM finish();
