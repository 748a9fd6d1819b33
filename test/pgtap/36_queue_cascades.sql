-- Changes HubSpot makes to other records than the one edited: merges and
-- permanent deletions move or drop invoice links; a line item waits in
-- change_log until the invoice it belongs to is known, across commits too.
SELECT hubsync_test.reset('small');
SELECT plan(23);

CREATE TEMP TABLE run0 AS SELECT * FROM hubsync_full_incremental();

-- Merge two contacts: HubSpot makes a new contact and moves the links.
CREATE TEMP TABLE merged AS
SELECT (hubsync_test.mock('merge', '{"type": "contacts", "primary": 2000001, "secondary": 2000002}')->>'id')::bigint AS id;
CREATE TEMP TABLE run1 AS SELECT * FROM hubsync_full_incremental();
SELECT set_eq(
    $$SELECT entity_type, hubspot_id, action_type, trigger_reason FROM hubsync.quickbooks_transfer_queue$$,
    $$SELECT 'contacts', id, 'create' AS a, 'new' AS r FROM merged
      UNION ALL VALUES ('contacts', 2000001::bigint, 'delete', 'deleted'), ('contacts', 2000002, 'delete', 'deleted'),
                       ('invoices', 3000011, 'update', 'associations_changed'),
                       ('invoices', 3000001, 'update', 'associations_changed'),
                       ('invoices', 3000004, 'update', 'associations_changed')$$,
    'contact merge: the old contacts go, the new one comes, and every invoice of theirs changes customer contact');
SELECT is((SELECT changes->'contacts' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000004),
          jsonb_build_object('before', '[2000002]'::jsonb, 'after', jsonb_build_array((SELECT id FROM merged))),
          'the invoice entry shows the move from the old contact to the merged one');
SELECT is((SELECT what_changed FROM hubsync.review_queue WHERE hubspot_id = 2000002),
          format('merged into contact %s in HubSpot', (SELECT id FROM merged)), 'the merged-away contact says where it went');
SELECT is((SELECT count(*)::int FROM hubsync.change_log), 0, 'nothing is left in change_log');

-- Merge the two "Acme Corporation" companies: the customer of six invoices changes.
CREATE TEMP TABLE merged_company AS
SELECT (hubsync_test.mock('merge', '{"type": "companies", "primary": 1000006, "secondary": 1000010}')->>'id')::bigint AS id;
CREATE TEMP TABLE run2 AS SELECT * FROM hubsync_full_incremental();
SELECT set_eq($$SELECT hubspot_id FROM hubsync.quickbooks_transfer_queue WHERE entity_type = 'invoices' AND changes ? 'companies'$$,
              $$VALUES (3000003::bigint), (3000007), (3000009), (3000011), (3000012), (3000016)$$,
              'company merge: every invoice of either company gets an entry');
SELECT is((SELECT entity_data->'customer'->>'id' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000012),
          (SELECT id::text FROM merged_company), 'its customer is now the merged company');
SELECT results_eq($$SELECT version, reasons FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000011$$,
                  $$VALUES (2, ARRAY['associations_changed'])$$,
                  'an invoice already queued by the contact merge is refreshed, not queued twice');
SELECT ok((SELECT what_changed LIKE format('customer: Acme Corporation (company 1000010) → Acme Corporation (company %s)%%',
                                          (SELECT id FROM merged_company))
             FROM hubsync.review_queue WHERE hubspot_id = 3000012), 'the reviewer sees the customer change');

-- A contact deleted for good: only a reconcile finds it.
SELECT FROM hubsync_test.mock('gdpr_delete', '{"type": "contacts", "id": 2000022}');
CREATE TEMP TABLE run3 AS SELECT * FROM hubsync_reconcile('contacts');
SELECT set_eq($$SELECT hubspot_id, trigger_reason FROM hubsync.quickbooks_transfer_queue
                WHERE hubspot_id IN (2000022, 3000008, 3000014, 3000015, 3000018)$$,
              $$VALUES (2000022::bigint, 'deleted'), (3000008, 'associations_changed'), (3000014, 'associations_changed'),
                       (3000015, 'associations_changed'), (3000018, 'associations_changed')$$,
              'permanent delete: the contact is deleted and its four invoices lose it');
SELECT is((SELECT what_changed FROM hubsync.review_queue WHERE hubspot_id = 3000015), 'billing email: rosa.lopez@example.com → none; contacts: 2000022 → none',
          'the invoice entry says so');
SELECT is((SELECT entity_data->'properties'->>'email' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 2000022),
          'rosa.lopez@example.com', 'the delete entry keeps what was known of the contact');

-- A line item deleted for good.
SELECT FROM hubsync_test.mock('gdpr_delete', '{"type": "line_items", "id": 4000039}');
CREATE TEMP TABLE run4 AS SELECT * FROM hubsync_reconcile('line_items');
SELECT is((SELECT changes->'line_items'->'removed'->0->>'id' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000019),
          '4000039', 'a permanently deleted line item is removed from its invoice''s entry, although its links are gone');

-- A line item archived and restored: its invoice's entry comes and goes.
-- (The invoice is paid, so its links are not read again: only the
-- stored link names the invoice of the restored line item.)
SELECT FROM hubsync_test.mock('archive', '{"type": "line_items", "id": 4000013}');
CREATE TEMP TABLE run4a AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT changes->'line_items'->'removed'->0->>'id' FROM hubsync.quickbooks_transfer_queue
            WHERE hubspot_id = 3000006 AND status = 'pending_review'), '4000013',
          'an archived line item leaves its paid invoice');
SELECT FROM hubsync_test.mock('restore', '{"type": "line_items", "id": 4000013}');
CREATE TEMP TABLE run4b AS SELECT * FROM hubsync_full_incremental();
SELECT results_eq($$SELECT status FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000006$$,
                  $$VALUES ('withdrawn'::text)$$, 'restored, it is back on the invoice and the entry is withdrawn');
SELECT is((SELECT count(*)::int FROM hubsync.change_log), 0, 'nothing waits in change_log');

-- A line item no invoice names yet waits in change_log ...
CREATE TEMP TABLE orphan AS
SELECT (hubsync_test.mock('create', '{"type": "line_items", "properties": {"name": "Loose item", "quantity": "1",
            "price": "5.00", "amount": "5.00"}}')->>'id')::bigint AS id;
CREATE TEMP TABLE before_orphan AS SELECT id, version FROM hubsync.quickbooks_transfer_queue;
CREATE TEMP TABLE run5 AS SELECT * FROM hubsync_full_incremental();
SELECT results_eq($$SELECT entity_type, hubspot_id, change_kind FROM hubsync.change_log$$,
                  $$SELECT 'line_items'::text, id, 'new'::text FROM orphan$$,
                  'a line item of no known invoice stays in change_log after the invoices ran');
CREATE TEMP TABLE run6 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT count(*)::int FROM hubsync.change_log), 1, 'and after another run too');
SELECT set_eq('SELECT id, version FROM hubsync.quickbooks_transfer_queue', 'SELECT * FROM before_orphan',
              'meanwhile it touches no entry');
-- ... until it is linked to an invoice.
SELECT FROM hubsync_test.mock('associate', jsonb_build_object('from_type', 'invoices', 'from_id', 3000020,
                                                              'to_type', 'line_items', 'to_id', (SELECT id FROM orphan)));
CREATE TEMP TABLE run7 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT changes->'line_items'->'added'->0->>'id' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000020),
          (SELECT id::text FROM orphan), 'once linked, it is on its invoice''s entry');
SELECT is((SELECT count(*)::int FROM hubsync.change_log), 0, 'and gone from change_log');

-- Across commits: a committing line-item run, then a committing invoice run.
CREATE TEMP TABLE late AS
SELECT (hubsync_test.mock('create', '{"type": "line_items", "properties": {"name": "Late fee", "quantity": "1",
            "price": "15.00", "amount": "15.00"}, "associations": [{"to_type": "invoices", "to_id": 3000005}]}')->>'id')::bigint AS id;
CALL hubsync_run('line_items');
SELECT results_eq($$SELECT hubspot_id FROM hubsync.change_log$$, $$SELECT id FROM late$$,
                  'a committed line-item run leaves the new line item waiting, committed');
CALL hubsync_run('invoices');
SELECT is((SELECT changes->'line_items'->'added'->0->>'id' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000005),
          (SELECT id::text FROM late), 'a later committing invoice run puts it on its invoice''s entry');
SELECT is((SELECT count(*)::int FROM hubsync.change_log), 0, 'and nothing is left waiting');

SELECT * FROM finish();
