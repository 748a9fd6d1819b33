-- Bad tokens, missing scopes, bodies that are not JSON and NUL characters.
SELECT hubsync_test.reset('small');
SELECT plan(16);

SELECT * FROM hubsync_full_incremental();
CREATE TEMP TABLE marks AS SELECT * FROM hubsync.sync_watermarks;
SELECT hubsync_test.mock('edit', jsonb_build_object('type', 'invoices', 'id', (SELECT min(id) FROM hubsync.invoices),
                                                    'properties', '{"hs_title": "changed"}'::jsonb));

-- A wrong token: HTTP 401, an error with a hint, and the token in no text.
-- Statement logging on, and the setting's name in another letter case:
-- test/t/99_no_secrets.t later checks that the value reached no log line.
SET log_statement = 'all';
SET HubSync.HubSpot_Token = 'pat-na1-wrong-secret-0000';
RESET log_statement;
SELECT throws_ok($$SELECT * FROM hubsync_incremental('invoices')$$, '28000', NULL, 'wrong token raises 28000');
CREATE TEMP TABLE err AS SELECT hubsync_test.error_of($$SELECT * FROM hubsync_incremental('invoices')$$) AS e;
SELECT matches((SELECT e->>'message' FROM err), 'POST /crm/v3/objects/invoices/search.*HTTP 401', 'error names the endpoint and status');
SELECT matches((SELECT e->>'hint' FROM err), 'hubsync.hubspot_token', 'hint says how to set the token');
SELECT matches((SELECT e->>'detail' FROM err), 'Correlation id', 'detail carries the correlation id');
SELECT ok((SELECT e::text NOT LIKE '%wrong-secret%' FROM err), 'the token appears in no part of the error');
RESET hubsync.hubspot_token;

-- A missing scope: HTTP 403 is an error, never "no data".
SELECT hubsync_test.mock('config', '{"missing_scopes": ["crm.objects.invoices.read"]}');
SELECT throws_ok($$SELECT * FROM hubsync_incremental('invoices')$$, '42501', NULL, 'missing scope raises 42501');
SELECT matches(hubsync_test.error_of($$SELECT * FROM hubsync_incremental('invoices')$$)->>'hint',
               'crm.objects.invoices.read', 'hint names the missing scope');
SELECT hubsync_test.mock('config', '{"missing_scopes": []}');

-- A body that is not JSON: an error naming the endpoint, nothing written.
SELECT hubsync_test.mock('faults', '{"faults": [{"path": "/crm/v3/objects/invoices/search", "kind": "malformed", "count": -1}]}');
SELECT throws_ok($$SELECT * FROM hubsync_incremental('invoices')$$, '22032', NULL, 'malformed body raises 22032');
SELECT matches(hubsync_test.error_of($$SELECT * FROM hubsync_incremental('invoices')$$)->>'message',
               'invalid JSON for POST /crm/v3/objects/invoices/search', 'error names the endpoint');
SELECT isnt((SELECT properties->>'hs_title' FROM hubsync.invoices WHERE id = (SELECT min(id) FROM hubsync.invoices)),
            'changed', 'nothing was written while the body was not JSON');
SELECT hubsync_test.mock('faults', '{"faults": []}');
SELECT * FROM hubsync_incremental('invoices');
SELECT is((SELECT properties->>'hs_title' FROM hubsync.invoices WHERE id = (SELECT min(id) FROM hubsync.invoices)),
          'changed', 'once the server behaves the next run writes the change');

-- Truncated body: the same failure shape, and after the failure the
-- watermark is exactly what it was.
SELECT hubsync_test.mock('edit', jsonb_build_object('type', 'companies', 'id', (SELECT min(id) FROM hubsync.companies),
                                                    'properties', '{"city": "Łódź"}'::jsonb));
CREATE TEMP TABLE marks2 AS SELECT * FROM hubsync.sync_watermarks;
SET hubsync.max_retries = 1;
SET hubsync.retry_base_delay = 10;
SELECT hubsync_test.mock('faults', '{"faults": [{"path": "/crm/v3/objects/companies/search", "kind": "truncate", "count": -1}]}');
SELECT throws_ok($$SELECT * FROM hubsync_full_incremental()$$, '08006', NULL, 'truncated body raises after retries');
SELECT is((SELECT last_modified_at FROM hubsync.sync_watermarks WHERE entity_type = 'companies'),
          (SELECT last_modified_at FROM marks2 WHERE entity_type = 'companies'), 'watermark unchanged by the failed run');
SELECT isnt((SELECT properties->>'city' FROM hubsync.companies WHERE id = (SELECT min(id) FROM hubsync.companies)),
            'Łódź', 'nothing from the failed run was written');
SELECT hubsync_test.mock('faults', '{"faults": []}');
RESET hubsync.max_retries;
RESET hubsync.retry_base_delay;

-- U+0000 in a text value: stored without it, counted as a warning.
SELECT hubsync_test.mock('edit', jsonb_build_object('type', 'contacts', 'id', (SELECT min(id) FROM hubsync.contacts),
                                                    'properties', '{"jobtitle": "nul carrier"}'::jsonb));
SELECT hubsync_test.mock('faults', '{"faults": [{"path": "/crm/v3/objects/contacts/search", "kind": "nul", "count": -1}]}');
CREATE TEMP TABLE nul_run AS SELECT * FROM hubsync_incremental('contacts');
SELECT is((SELECT status FROM nul_run), 'ok', 'a NUL character does not fail the run');
SELECT is((SELECT warnings FROM hubsync.sync_runs WHERE entity_type = 'contacts' ORDER BY id DESC LIMIT 1),
          1::bigint, 'the removed NUL is counted as a warning');
SELECT hubsync_test.mock('faults', '{"faults": []}');

SELECT * FROM finish();
