-- HTTP failures of a SELECT-started run.  5xx, connection resets, HTML
-- error pages, truncated bodies and hangs past hubsync.request_timeout are
-- retried a bounded number of times with backoff, then fail with a clear
-- error.  401 and 403 are never retried and never read as "no data".
-- Malformed JSON fails with an error naming the endpoint.  A failed run
-- writes nothing: mirror, associations and watermarks stay as they were.
SELECT hubsync_test.reset('small');
SELECT plan(76);

SET hubsync.max_retries = 2;
SET hubsync.retry_base_delay = '20ms';
SET hubsync.retry_max_delay = '1s';
SET hubsync.request_timeout = '400ms';

-- A synced mirror, then edits in the portal that the faulty runs would
-- have written.
SELECT is((SELECT count(*)::int FROM hubsync_full_incremental() WHERE status = 'ok'), 4, 'initial full sync');
SELECT hubsync_test.mock('edit', '{"type": "companies", "id": "1000002", "properties": {"city": "Faultville"}}');
SELECT hubsync_test.mock('edit', '{"type": "contacts", "id": "2000002", "properties": {"jobtitle": "Faulty"}}');

-- 500, 502, 503 and 504 on every attempt: 3 requests, then an error.
CREATE TEMP TABLE status_runs AS
SELECT status, hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    jsonb_build_array(jsonb_build_object('path', '^/crm/v3/objects/companies/search$',
                                         'kind', 'status', 'status', status, 'count', -1))) AS run
FROM unnest(ARRAY[500, 502, 503, 504]) AS status;

SELECT is(run->'error'->>'message',
          format('HubSpot request POST /crm/v3/objects/companies/search failed with HTTP %s after 2 retries', status),
          format('HTTP %s: the error names endpoint, status and retries', status))
FROM status_runs ORDER BY status;
SELECT is(run->'error'->>'sqlstate', '08006', format('HTTP %s: SQLSTATE 08006', status))
FROM status_runs ORDER BY status;
SELECT alike(run->'error'->>'detail', 'HubSpot says: % Correlation id: %',
             format('HTTP %s: the detail has HubSpot''s message and correlation id', status))
FROM status_runs ORDER BY status;
SELECT is(hubsync_test.run_requests(run, '/crm/v3/objects/companies/search'), 3,
          format('HTTP %s: one request and 2 retries', status))
FROM status_runs ORDER BY status;
SELECT ok((run->>'unchanged')::boolean, format('HTTP %s: nothing was written', status))
FROM status_runs ORDER BY status;
SELECT alike((SELECT run->'error'->>'hint' FROM status_runs WHERE status = 503),
             'HubSpot is unavailable for now. A CALL hubsync_run() keeps the pages it committed%', '503: the hint says what was kept');

-- Backoff: with a 200 ms base delay the two retries wait at least
-- 100 + 200 ms (jitter takes at most half of each delay).
SET hubsync.retry_base_delay = '200ms';
CREATE TEMP TABLE backoff AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies/search$", "kind": "status", "status": 503, "count": -1}]') AS run;
SET hubsync.retry_base_delay = '20ms';
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM backoff), '>=', 300::numeric,
              'backoff: the retries waited at least 300 ms');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM backoff), '<', 1500::numeric,
              'backoff: and at most 600 ms plus the requests');

-- A 503 that goes away is retried and the run completes.
CREATE TEMP TABLE transient AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies/search$", "kind": "status", "status": 503, "count": 2}]') AS run;
SELECT is((SELECT run->>'error' FROM transient), NULL, 'transient 503: the run succeeds');
SELECT is((SELECT retries::int FROM hubsync.sync_runs WHERE entity_type = 'companies' AND status = 'ok'
            ORDER BY id DESC LIMIT 1), 2, 'transient 503: sync_runs counts 2 retries');
SELECT is((SELECT properties->>'city' FROM hubsync.companies WHERE id = 1000002), 'Faultville',
          'transient 503: the edit is mirrored');

-- A connection reset on every attempt.
SELECT hubsync_test.mock('edit', '{"type": "companies", "id": "1000002", "properties": {"city": "Resetville"}}');
CREATE TEMP TABLE reset AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies/search$", "kind": "reset", "count": -1}]') AS run;
SELECT alike((SELECT run->'error'->>'message' FROM reset), 'HubSpot request POST /crm/v3/objects/companies/search failed: %',
             'reset: the error names the endpoint');
SELECT is((SELECT run->'error'->>'detail' FROM reset), 'Gave up after 2 retries.', 'reset: the detail counts the retries');
SELECT is((SELECT run->'error'->>'sqlstate' FROM reset), '08006', 'reset: SQLSTATE 08006');
SELECT alike((SELECT run->'error'->>'hint' FROM reset), '%hubsync.hubspot_url%', 'reset: the hint names hubsync.hubspot_url');
-- libcurl sends a request again, once, on a fresh connection when a reused
-- keep-alive connection closes without a response, so the first of the
-- three attempts may reach the server twice.
SELECT ok(hubsync_test.run_requests((SELECT run FROM reset), '/crm/v3/objects/companies/search') BETWEEN 3 AND 4,
          'reset: 3 attempts');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM reset), 'reset: nothing was written');

-- An HTML error page from a proxy.
CREATE TEMP TABLE html AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies/search$", "kind": "html", "status": 502, "count": -1}]') AS run;
SELECT is((SELECT run->'error'->>'message' FROM html),
          'HubSpot request POST /crm/v3/objects/companies/search failed with HTTP 502 after 2 retries',
          'HTML page: the error names endpoint and status');
SELECT alike((SELECT run->'error'->>'detail' FROM html),
          'The response is not a HubSpot error body (content type text/html; charset=UTF-8).%',
          'HTML page: the detail says it was not a HubSpot error body');
SELECT is(hubsync_test.run_requests((SELECT run FROM html), '/crm/v3/objects/companies/search'), 3, 'HTML page: 3 attempts');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM html), 'HTML page: nothing was written');

-- A hang longer than hubsync.request_timeout (400 ms): each attempt times out.
CREATE TEMP TABLE hang AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies/search$", "kind": "hang", "ms": 1500, "count": -1}]') AS run;
-- The server completes the abandoned requests later, so wait for them to
-- keep them out of the request counts of the next cases.
SELECT pg_sleep(1.5);
SELECT alike((SELECT run->'error'->>'message' FROM hang),
             'HubSpot request POST /crm/v3/objects/companies/search failed: %timed out%',
             'hang: the error says the request timed out');
SELECT is((SELECT run->'error'->>'detail' FROM hang), 'Gave up after 2 retries.', 'hang: 2 retries');
SELECT alike((SELECT run->'error'->>'hint' FROM hang), '%hubsync.request_timeout bounds each attempt%',
              'hang: the hint names hubsync.request_timeout');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM hang), '>=', 1200::numeric,
              'hang: three attempts of 400 ms');
SELECT cmp_ok((SELECT (run->>'elapsed_ms')::numeric FROM hang), '<', 2500::numeric,
              'hang: the run did not wait for the 1.5-second hangs');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM hang), 'hang: nothing was written');

-- A body shorter than its Content-Length: a transport error, retried.
CREATE TEMP TABLE truncated AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies$", "kind": "truncate", "count": -1}]') AS run;
SELECT alike((SELECT run->'error'->>'message' FROM truncated),
             'HubSpot request GET /crm/v3/objects/companies failed: %',
             'truncated: the error names the endpoint without its query string');
SELECT is(hubsync_test.run_requests((SELECT run FROM truncated), '/crm/v3/objects/companies'), 3, 'truncated: 3 attempts');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM truncated), 'truncated: nothing was written');
CREATE TEMP TABLE truncated_once AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies/search$", "kind": "truncate", "count": 1}]') AS run;
SELECT is((SELECT run->>'error' FROM truncated_once), NULL, 'truncated once: the retry succeeds');
SELECT is((SELECT properties->>'city' FROM hubsync.companies WHERE id = 1000002), 'Resetville',
          'truncated once: the edit is mirrored');

-- Malformed JSON with status 200: not retried, nothing from it written.
SELECT hubsync_test.mock('edit', '{"type": "companies", "id": "1000002", "properties": {"city": "Malformed"}}');
CREATE TEMP TABLE malformed AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('companies')$$,
    '[{"path": "^/crm/v3/objects/companies/search$", "kind": "malformed", "count": 1}]') AS run;
SELECT is((SELECT run->'error'->>'message' FROM malformed),
          'HubSpot returned invalid JSON for POST /crm/v3/objects/companies/search',
          'malformed: the error names the endpoint');
SELECT is((SELECT run->'error'->>'sqlstate' FROM malformed), '22032', 'malformed: SQLSTATE 22032 (invalid JSON text)');
SELECT alike((SELECT run->'error'->>'detail' FROM malformed), '%Body starts with: {"results": [%',
             'malformed: the detail quotes the start of the body');
SELECT is((SELECT run->'error'->>'hint' FROM malformed),
          'Nothing from this response was written; the next run retries it.', 'malformed: the hint');
SELECT is(hubsync_test.run_requests((SELECT run FROM malformed), '/crm/v3/objects/companies/search'), 1,
          'malformed: not retried');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM malformed), 'malformed: nothing was written');

-- Malformed association batch read: the invoices of that page are not
-- written either.
SELECT hubsync_test.mock('edit', '{"type": "invoices", "id": "3000003", "properties": {"hs_title": "Malformed links"}}');
CREATE TEMP TABLE malformed_links AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('invoices')$$,
    '[{"path": "^/crm/v4/associations/invoices/", "kind": "malformed", "count": 1}]') AS run;
SELECT alike((SELECT run->'error'->>'message' FROM malformed_links),
             'HubSpot returned invalid JSON for POST /crm/v4/associations/invoices/%/batch/read',
             'malformed association read: the error names the endpoint');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM malformed_links), 'malformed association read: nothing was written');
SELECT isnt((SELECT properties->>'hs_title' FROM hubsync.invoices WHERE id = 3000003), 'Malformed links',
            'malformed association read: the edited invoice is not mirrored yet');

-- 401: a token HubSpot does not accept.  One request, no retry.
CREATE TEMP TABLE ok_runs_before AS SELECT count(*) AS n FROM hubsync.sync_runs WHERE status = 'ok';
SELECT hubsync_test.mock('config', '{"token": "pat-na1-some-other-token"}');
CREATE TEMP TABLE unauthorized AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('contacts')$$) AS run;
SELECT hubsync_test.mock('config', '{"token": "pat-na1-hubsync-test"}');
SELECT is((SELECT run->'error'->>'message' FROM unauthorized),
          'HubSpot rejected the access token for POST /crm/v3/objects/contacts/search (HTTP 401)',
          '401: the error names the endpoint');
SELECT is((SELECT run->'error'->>'sqlstate' FROM unauthorized), '28000', '401: SQLSTATE 28000');
SELECT alike((SELECT run->'error'->>'hint' FROM unauthorized), '%ALTER SYSTEM SET hubsync.hubspot_token%',
             '401: the hint shows how to set the token');
SELECT alike((SELECT run->'error'->>'detail' FROM unauthorized), 'HubSpot says: %Category: INVALID_AUTHENTICATION.%',
             '401: the detail has HubSpot''s message and category');
SELECT is(jsonb_array_length((SELECT run->'requests' FROM unauthorized)), 1, '401: one request, no retry');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM unauthorized), '401: nothing was written');
SELECT is((SELECT count(*)::int FROM hubsync.sync_runs WHERE status = 'ok'),
          (SELECT n::int FROM ok_runs_before), '401: not recorded as an ok run (no data is not success)');

-- 403: the app lacks the contacts scope.
SELECT hubsync_test.mock('config', '{"missing_scopes": ["crm.objects.contacts.read"]}');
CREATE TEMP TABLE forbidden AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('contacts')$$) AS run;
SELECT hubsync_test.mock('config', '{"missing_scopes": []}');
SELECT is((SELECT run->'error'->>'message' FROM forbidden),
          'HubSpot denied access to POST /crm/v3/objects/contacts/search (HTTP 403)', '403: the error names the endpoint');
SELECT is((SELECT run->'error'->>'sqlstate' FROM forbidden), '42501', '403: SQLSTATE 42501');
SELECT is((SELECT run->'error'->>'hint' FROM forbidden),
          'Grant the private app the missing scopes in HubSpot: crm.objects.contacts.read.', '403: the hint names the scope');
SELECT is(jsonb_array_length((SELECT run->'requests' FROM forbidden)), 1, '403: one request, no retry');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM forbidden), '403: nothing was written');

-- 403 on the association read of invoices: the scope of the target type.
SELECT hubsync_test.mock('config', '{"missing_scopes": ["crm.objects.line_items.read"]}');
CREATE TEMP TABLE forbidden_links AS
SELECT hubsync_test.run_with($$SELECT * FROM hubsync_incremental('invoices')$$) AS run;
SELECT hubsync_test.mock('config', '{"missing_scopes": []}');
SELECT alike((SELECT run->'error'->>'message' FROM forbidden_links),
             'HubSpot denied access to POST /crm/v4/associations/invoices/line_items/batch/read (HTTP 403)',
             '403 on associations: the error names the association endpoint');
SELECT ok((SELECT (run->>'unchanged')::boolean FROM forbidden_links), '403 on associations: nothing was written');

-- Every fault gone: one run writes all the edits.
SELECT is((SELECT count(*)::int FROM hubsync_full_incremental() WHERE status = 'ok'), 4, 'after the faults: every type syncs');
SELECT is((SELECT properties->>'city' FROM hubsync.companies WHERE id = 1000002), 'Malformed',
          'after the faults: the company edit is mirrored');
SELECT is((SELECT properties->>'jobtitle' FROM hubsync.contacts WHERE id = 2000002), 'Faulty',
          'after the faults: the contact edit is mirrored');
SELECT is((SELECT properties->>'hs_title' FROM hubsync.invoices WHERE id = 3000003), 'Malformed links',
          'after the faults: the invoice edit is mirrored');

-- The failures of the SELECT runs were kept in shared memory and written
-- to sync_runs by the next run of each type.
SELECT alike((SELECT error FROM hubsync.sync_runs WHERE entity_type = 'contacts' AND status = 'failed'
               ORDER BY id DESC LIMIT 1),
             'HubSpot denied access to POST /crm/v3/objects/contacts/search (HTTP 403)',
             'the last contacts failure is recorded in sync_runs');

SELECT * FROM finish();
