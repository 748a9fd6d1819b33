-- At most one open entry per record: later changes refresh it (new
-- version, net diff against the books); a change after approval sends it
-- back to review; a record back in the books' state withdraws its entry;
-- after a transfer or a rejection a change opens a new entry.
SELECT hubsync_test.reset('small');
SELECT plan(36);

CREATE TEMP TABLE run0 AS SELECT * FROM hubsync_full_incremental();

CREATE FUNCTION pg_temp.edit(entity_type text, id bigint, properties jsonb) RETURNS void
LANGUAGE sql AS $$
    SELECT FROM hubsync_test.mock('edit', jsonb_build_object('type', entity_type, 'id', id, 'properties', properties));
$$;
CREATE FUNCTION pg_temp.sync() RETURNS bigint
LANGUAGE sql AS $$ SELECT sum(queue_entries)::bigint FROM hubsync_full_incremental() $$;
CREATE FUNCTION pg_temp.entry(entity_type text, id bigint) RETURNS hubsync.quickbooks_transfer_queue
LANGUAGE sql AS $$
    SELECT q FROM hubsync.quickbooks_transfer_queue q
    WHERE q.entity_type = $1 AND q.hubspot_id = $2 ORDER BY q.id DESC LIMIT 1;
$$;

-- A pending entry is refreshed, not duplicated.
SELECT FROM pg_temp.edit('invoices', 3000010, '{"hs_amount_billed": "3000.00"}');
SELECT is(pg_temp.sync(), 1::bigint, 'an amount change makes one entry');
CREATE TEMP TABLE e1 AS SELECT (pg_temp.entry('invoices', 3000010)).*;
SELECT FROM pg_temp.edit('invoices', 3000010, '{"hs_amount_billed": "3100.00"}');
SELECT is(pg_temp.sync(), 1::bigint, 'a second change refreshes it');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000010), 1,
          'still one entry for the invoice');
SELECT is((pg_temp.entry('invoices', 3000010)).id, (SELECT id FROM e1), 'the same entry');
SELECT is((pg_temp.entry('invoices', 3000010)).version, 2, 'its version went from 1 to 2');
SELECT is((pg_temp.entry('invoices', 3000010)).changes->'fields'->'hs_amount_billed',
          '{"before": 2779.96, "after": 3100.00}'::jsonb,
          'the diff is net: from what the books hold to the latest value');
SELECT FROM pg_temp.edit('line_items', 4000021, '{"name": "Widget XL"}');
SELECT FROM pg_temp.sync();
SELECT is((pg_temp.entry('invoices', 3000010)).version, 3, 'a line item change refreshes the same entry');
SELECT is((pg_temp.entry('invoices', 3000010)).reasons, ARRAY['modified', 'line_items_changed'],
          'the entry now holds both kinds of change');
SELECT is((pg_temp.entry('invoices', 3000010)).trigger_reason, 'modified', 'the more significant one is its reason');
-- Everything undone: nothing left for QuickBooks.
SELECT FROM pg_temp.edit('invoices', 3000010, '{"hs_amount_billed": "2779.96"}');
SELECT FROM pg_temp.edit('line_items', 4000021, '{"name": "Widget"}');
SELECT FROM pg_temp.sync();
SELECT is((pg_temp.entry('invoices', 3000010)).status, 'withdrawn', 'changes undone in HubSpot withdraw the entry');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue
            WHERE hubspot_id = 3000010 AND status IN ('pending_review', 'approved')), 0, 'no open entry is left');

-- A change after approval sends the entry back to review.
SELECT FROM pg_temp.edit('companies', 1000002, '{"name": "Big Co Ltd"}');
SELECT FROM pg_temp.sync();
CREATE TEMP TABLE e2 AS SELECT (pg_temp.entry('companies', 1000002)).*;
SELECT is((SELECT status FROM hubsync_approve((SELECT id FROM e2), 1)), 'approved', 'version 1 approved');
SELECT FROM pg_temp.edit('companies', 1000002, '{"name": "Big Company Ltd"}');
SELECT FROM pg_temp.sync();
SELECT results_eq(
    $$SELECT id, status, version, approved_at IS NULL, approved_by IS NULL FROM hubsync.quickbooks_transfer_queue
      WHERE entity_type = 'companies' AND hubspot_id = 1000002$$,
    $$SELECT id, 'pending_review'::text, 2, true, true FROM e2$$,
    'changed after approval: the same entry is back in review at version 2, without its approval');
SELECT results_eq(
    $$SELECT from_status, to_status, version, actor = session_user FROM hubsync.queue_events
      WHERE queue_id = (SELECT id FROM e2) ORDER BY id$$,
    $$VALUES (NULL, 'pending_review', 1, true),
             ('pending_review', 'approved', 1, true),
             ('approved', 'pending_review', 2, true)$$,
    'the earlier approval stays in the audit');
SELECT throws_ok(format('SELECT hubsync_approve(%s, 1)', (SELECT id FROM e2)), '40001',
                 format('queue entry %s is at version 2, not version 1', (SELECT id FROM e2)),
                 'approving the version that was approved before is refused');
SELECT is((SELECT version FROM hubsync_approve((SELECT id FROM e2), 2)), 2, 'version 2 can be approved');

-- Transferred: the next change is a new entry, diffed against what was transferred.
SELECT FROM hubsync_mark_transferred((SELECT id FROM e2), 2, '{"Id": "58"}');
SELECT is((pg_temp.entry('companies', 1000002)).status, 'transferred', 'marked transferred');
SELECT is((SELECT books_data->'properties'->>'name' FROM hubsync.transfer_state
            WHERE entity_type = 'companies' AND hubspot_id = 1000002), 'Big Company Ltd',
          'the books now hold what was transferred');
SELECT throws_ok(format('SELECT hubsync_mark_transferred(%s, 2)', (SELECT id FROM e2)), '55000', NULL,
                 'an entry is transferred once');
SELECT FROM pg_temp.edit('companies', 1000002, '{"name": "Big Company Limited"}');
SELECT FROM pg_temp.sync();
SELECT isnt((pg_temp.entry('companies', 1000002)).id, (SELECT id FROM e2), 'a change after the transfer opens a new entry');
SELECT is((pg_temp.entry('companies', 1000002)).changes->'fields'->'name',
          '{"before": "Big Company Ltd", "after": "Big Company Limited"}'::jsonb,
          'its diff starts from what was transferred');
SELECT is((pg_temp.entry('companies', 1000002)).action_type, 'update', 'and it is an update');

-- An approved entry ignores untracked edits.
SELECT FROM pg_temp.edit('invoices', 3000004, '{"hs_due_date": "2023-09-01T00:00:00.000Z"}');
SELECT FROM pg_temp.sync();
CREATE TEMP TABLE e3 AS SELECT (pg_temp.entry('invoices', 3000004)).*;
SELECT FROM hubsync_approve((SELECT id FROM e3), 1);
SELECT FROM pg_temp.edit('invoices', 3000004, '{"hs_title": "New title", "hs_balance_due": "5.00"}');
SELECT FROM pg_temp.sync();
SELECT results_eq($$SELECT status, version FROM hubsync.quickbooks_transfer_queue WHERE id = (SELECT id FROM e3)$$,
                  $$VALUES ('approved'::text, 1)$$, 'an untracked edit leaves an approved entry approved');

-- Rejected: the rejection stands until a tracked change, which opens a
-- new entry showing everything the books lack.
SELECT FROM pg_temp.edit('contacts', 2000007, '{"email": "hiro@private.example"}');
SELECT FROM pg_temp.sync();
CREATE TEMP TABLE e4 AS SELECT (pg_temp.entry('contacts', 2000007)).*;
SELECT is((SELECT status FROM hubsync_reject((SELECT id FROM e4), 'private address, keep the old one')), 'rejected',
          'entry rejected');
SELECT FROM pg_temp.edit('contacts', 2000007, '{"jobtitle": "CTO"}');
SELECT is(pg_temp.sync(), 0::bigint, 'an untracked edit after a rejection makes no entry');
SELECT FROM pg_temp.edit('contacts', 2000007, '{"phone": "+81 3 1234 5678"}');
SELECT FROM pg_temp.sync();
SELECT isnt((pg_temp.entry('contacts', 2000007)).id, (SELECT id FROM e4), 'a tracked edit opens a new entry');
SELECT is((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys((pg_temp.entry('contacts', 2000007)).changes->'fields') AS k),
          ARRAY['email', 'phone'], 'which shows the rejected change too, since the books lack both');

-- A new record deleted before it reached QuickBooks.
CREATE TEMP TABLE new_company AS
SELECT (hubsync_test.mock('create', '{"type": "companies", "properties": {"name": "Short-lived Ltd"}}')->>'id')::bigint AS id;
SELECT FROM pg_temp.sync();
SELECT is((pg_temp.entry('companies', (SELECT id FROM new_company))).action_type, 'create', 'a new company is a create');
SELECT FROM hubsync_test.mock('archive', jsonb_build_object('type', 'companies', 'id', (SELECT id FROM new_company)));
SELECT FROM pg_temp.sync();
SELECT is((pg_temp.entry('companies', (SELECT id FROM new_company))).status, 'withdrawn',
          'archived before its transfer: the create is withdrawn');
SELECT is((SELECT note FROM hubsync.queue_events WHERE queue_id = (pg_temp.entry('companies', (SELECT id FROM new_company))).id
            ORDER BY id DESC LIMIT 1),
          'withdrawn: the record was deleted in HubSpot before it reached QuickBooks', 'the audit says why');

-- A restore cancels a pending delete.
SELECT FROM hubsync_test.mock('archive', '{"type": "invoices", "id": 3000016}');
SELECT FROM pg_temp.sync();
SELECT is((pg_temp.entry('invoices', 3000016)).action_type, 'delete', 'an archived invoice is a delete');
SELECT FROM hubsync_test.mock('restore', '{"type": "invoices", "id": 3000016}');
SELECT FROM pg_temp.sync();
SELECT is((pg_temp.entry('invoices', 3000016)).status, 'withdrawn', 'restored before the transfer: the delete is withdrawn');

-- The rules hold for any writer.
SELECT throws_ok(format($$INSERT INTO hubsync.quickbooks_transfer_queue
                            (entity_type, hubspot_id, action_type, trigger_reason, reasons, entity_data, changes)
                          VALUES ('companies', 1000002, 'update', 'modified', '{modified}', '{}', '{}')$$),
                 '23505', NULL, 'a second open entry for a record is refused by the unique index');
SELECT throws_ok(format($$UPDATE hubsync.quickbooks_transfer_queue SET entity_data = '{}' WHERE id = %s$$,
                        (pg_temp.entry('companies', 1000002)).id),
                 '23000', NULL, 'a snapshot cannot change without a new version');
SELECT throws_ok(format($$UPDATE hubsync.quickbooks_transfer_queue SET status = 'pending_review' WHERE id = %s$$,
                        (SELECT id FROM e4)),
                 '23000', NULL, 'a rejected entry stays rejected');
SELECT is((SELECT count(*)::int FROM (SELECT entity_type, hubspot_id FROM hubsync.quickbooks_transfer_queue
                                       WHERE status IN ('pending_review', 'approved')
                                       GROUP BY 1, 2 HAVING count(*) > 1) AS d), 0,
          'no record has two open entries');

SELECT * FROM finish();
