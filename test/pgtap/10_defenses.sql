-- Responses that are valid JSON but not what HubSpot sends, and state that
-- must survive resets.
SELECT hubsync_test.reset('small');
SELECT plan(6);

SELECT * FROM hubsync_full_incremental();
SELECT hubsync_test.mock('archive', jsonb_build_object('type', 'companies', 'id', (SELECT min(id) FROM hubsync.companies)));
SELECT * FROM hubsync_incremental('companies');
SELECT ok((SELECT archived FROM hubsync.companies WHERE id = (SELECT min(id) FROM hubsync.companies)),
          'the archived company is flagged');

-- A 200 without a "results" array is not an empty recycle bin.
SELECT hubsync_test.mock('faults', '{"faults": [{"kind": "status", "status": 200, "method": "GET",
                                                  "path": "^/crm/v3/objects/companies$", "count": -1}]}');
SELECT throws_ok($$SELECT * FROM hubsync_incremental('companies')$$, '38000', NULL,
                 'a list response without results raises');
SELECT hubsync_test.mock('faults', '{"faults": []}');
SELECT ok(EXISTS (SELECT 1 FROM hubsync.companies WHERE id = (SELECT min(id) FROM hubsync.companies) AND archived),
          'the archived company was not deleted');

-- A reset watermark re-reads everything but is no reconcile: a due
-- reconcile still runs and finds a permanent delete.
SELECT hubsync_test.mock('gdpr_delete', jsonb_build_object('type', 'contacts', 'id', (SELECT max(id) FROM hubsync.contacts)));
UPDATE hubsync.sync_watermarks SET last_reconcile_at = now() - interval '2 days' WHERE entity_type = 'contacts';
CREATE TEMP TABLE gone AS SELECT max(id) AS id FROM hubsync.contacts;
SELECT hubsync_reset_watermark('contacts');
CREATE TEMP TABLE reread AS SELECT * FROM hubsync_incremental('contacts');
SELECT is((SELECT deleted FROM reread), 1::bigint, 'after a reset the due reconcile deletes the record');
SELECT ok(NOT EXISTS (SELECT 1 FROM hubsync.contacts WHERE id = (SELECT id FROM gone)), 'the deleted contact is gone');

-- finished_at is the time the run ended, not the start of its transaction.
SELECT ok((SELECT bool_and(finished_at >= started_at) FROM hubsync.sync_runs), 'no run finishes before it starts');

SELECT * FROM finish();
