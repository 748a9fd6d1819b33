-- Reviewing with SQL: approve and reject, their refusals (SQLSTATEs), who
-- is recorded, the bulk forms, the views and duplicate flags.
SELECT hubsync_test.reset('small');
SELECT plan(44);

-- Books empty: every record is queued.
SET hubsync.first_load = 'enqueue';
CREATE TEMP TABLE run0 AS SELECT * FROM hubsync_full_incremental();
RESET hubsync.first_load;

CREATE FUNCTION pg_temp.qid(entity_type text, id bigint) RETURNS bigint
LANGUAGE sql AS $$
    SELECT q.id FROM hubsync.quickbooks_transfer_queue q
    WHERE q.entity_type = $1 AND q.hubspot_id = $2 ORDER BY q.id DESC LIMIT 1;
$$;

-- The review view.
SELECT is((SELECT count(*)::int FROM hubsync.review_queue), 62, 'review_queue: one row per pending entry');
SELECT results_eq(
    $$SELECT entity_type, action_type, quickbooks_action, trigger_reason, version, customer_name,
             invoice_number, amount, currency, what_changed, approve_with
      FROM hubsync.review_queue WHERE entity_type = 'invoices' AND hubspot_id = 3000005$$,
    format($$VALUES ('invoices'::text, 'create'::text, 'create invoice'::text, 'new'::text, 1,
                     'Rocket 🚀 Labs'::text, 'INV-001004'::text, 4587.50::numeric, 'EUR'::text,
                     'new invoice with 3 line items'::text, 'SELECT hubsync_approve(%s, 1);'::text)$$,
           pg_temp.qid('invoices', 3000005)),
    'review_queue: an invoice with its customer, number, amount, currency and summary');
SELECT is((SELECT customer_name FROM hubsync.review_queue WHERE entity_type = 'contacts' AND hubspot_id = 2000002),
          'Seán O''Brien', 'review_queue: a contact''s name');
SELECT ok((SELECT age >= interval '0' AND age < interval '1 hour' FROM hubsync.review_queue LIMIT 1), 'review_queue: age');

-- Possible duplicates, in the view too.
SELECT results_eq(
    $$SELECT hubspot_id, duplicate_note FROM hubsync.review_queue WHERE possible_duplicate ORDER BY hubspot_id$$,
    $$VALUES (1000006::bigint, 'same name as HubSpot company 1000010'::text),
             (1000010, 'same name as HubSpot company 1000006'),
             (3000002, 'same invoice number as HubSpot invoice 3000003'),
             (3000003, 'same invoice number as HubSpot invoice 3000002')$$,
    'two companies with one name and two invoices with one number are flagged');
SELECT is((SELECT duplicate_of FROM hubsync.quickbooks_transfer_queue WHERE id = pg_temp.qid('invoices', 3000002)),
          ARRAY[3000003::bigint], 'the entry names the other record');
-- Renaming one of the companies clears both flags.
SELECT FROM hubsync_test.mock('edit', '{"type": "companies", "id": 1000010, "properties": {"name": "Acme Europe Ltd"}}');
CREATE TEMP TABLE run1 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT count(*)::int FROM hubsync.review_queue WHERE entity_type = 'companies' AND possible_duplicate), 0,
          'after a rename neither company is flagged any more');
SELECT is((SELECT version FROM hubsync.quickbooks_transfer_queue WHERE id = pg_temp.qid('companies', 1000006)), 1,
          'clearing a flag is not a new version');

SELECT is((SELECT pending_review FROM hubsync.queue_summary WHERE entity_type = 'all'), 62::bigint, 'queue_summary: pending total');
SELECT results_eq($$SELECT entity_type, pending_review, possible_duplicates FROM hubsync.queue_summary$$,
                  $$VALUES ('companies'::text, 12::bigint, 0::bigint), ('contacts', 30, 0), ('invoices', 20, 2), ('all', 62, 2)$$,
                  'queue_summary: counts by type, with a total row');
SELECT ok((SELECT oldest_pending_age IS NOT NULL AND oldest_pending_since IS NOT NULL FROM hubsync.queue_summary WHERE entity_type = 'all'),
          'queue_summary: age of the oldest pending entry');

-- approve: who is recorded.  (Reviewers cannot read the queue table, so
-- the ids are looked up first.)
SELECT pg_temp.qid('companies', 1000001) AS c1, pg_temp.qid('companies', 1000002) AS c2,
       pg_temp.qid('companies', 1000003) AS c3 \gset
SET SESSION AUTHORIZATION hs_test_alice;
SELECT results_eq(format('SELECT status, version, approved_by FROM hubsync_approve(%s, 1)', :c1),
                  $$VALUES ('approved'::text, 1, 'hs_test_alice'::text)$$, 'approve returns the approved version and who approved');
SET ROLE hubsync_reviewer;
SELECT is((SELECT approved_by FROM hubsync_approve(:c2)), 'hs_test_alice',
          'approved_by is the login role, not a role taken with SET ROLE');
RESET ROLE;
RESET SESSION AUTHORIZATION;
SELECT is((SELECT approved_by FROM hubsync.quickbooks_transfer_queue WHERE id = pg_temp.qid('companies', 1000001)), 'hs_test_alice',
          'the entry records the approver');
SELECT is((SELECT actor FROM hubsync.queue_events WHERE queue_id = pg_temp.qid('companies', 1000001) AND to_status = 'approved'),
          'hs_test_alice', 'and so does the audit');
SELECT is((SELECT count(*)::int FROM pg_proc WHERE proname = 'hubsync_approve'
             AND 'approved_by' = ANY (proargnames) AND proargmodes[array_position(proargnames, 'approved_by')] = 'i'), 0,
          'no argument lets a caller name the approver');

-- Refusals, with their SQLSTATEs.
SELECT throws_ok('SELECT hubsync_approve(999999)', 'P0002', 'queue entry 999999 does not exist', 'unknown entry');
SELECT throws_ok('SELECT hubsync_approve(NULL)', '22004', NULL, 'NULL id');
SELECT throws_ok(format('SELECT hubsync_approve(%s)', pg_temp.qid('companies', 1000001)), '55000',
                 format('queue entry %s is not pending review', pg_temp.qid('companies', 1000001)),
                 'an approved entry cannot be approved again');
SELECT throws_ok(format('SELECT hubsync_approve(%s, 7)', pg_temp.qid('companies', 1000003)), '40001',
                 format('queue entry %s is at version 1, not version 7', pg_temp.qid('companies', 1000003)),
                 'a version that is not the current one is refused');
SELECT is((SELECT status FROM hubsync.quickbooks_transfer_queue WHERE id = pg_temp.qid('companies', 1000003)), 'pending_review',
          'and the entry stays pending');
SELECT throws_ok(format('SELECT hubsync_approve(%s, 1)', pg_temp.qid('invoices', 3000013)), '55000',
                 format('queue entry %s is a draft invoice', pg_temp.qid('invoices', 3000013)),
                 'a draft invoice cannot be approved');
SELECT throws_ok(format($$SELECT hubsync_reject(%s, '   ')$$, pg_temp.qid('companies', 1000003)), '22023',
                 format('a reason is required to reject queue entry %s', pg_temp.qid('companies', 1000003)),
                 'reject needs a reason');
SELECT throws_ok(format($$SELECT hubsync_reject(%s, NULL)$$, pg_temp.qid('companies', 1000003)), '22023', NULL,
                 'a NULL reason is no reason');
SELECT throws_ok(format($$SELECT hubsync_reject(%s, 'x', 3)$$, pg_temp.qid('companies', 1000003)), '40001', NULL,
                 'reject checks the version too');

-- reject
SET SESSION AUTHORIZATION hs_test_bob;
SELECT results_eq(format($$SELECT status, rejected_by FROM hubsync_reject(%s, '  already in QuickBooks by hand ')$$, :c3),
                  $$VALUES ('rejected'::text, 'hs_test_bob'::text)$$, 'reject records who rejected');
SELECT throws_ok(format('SELECT hubsync_approve(%s)', :c3), '55000', NULL, 'a rejected entry cannot be approved');
SELECT is((SELECT status FROM hubsync_reject(:c1, 'approved by mistake')), 'rejected',
          'an approved entry not yet transferred can still be rejected');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT rejected_reason FROM hubsync.quickbooks_transfer_queue WHERE id = pg_temp.qid('companies', 1000003)),
          'already in QuickBooks by hand', 'the reason is kept, trimmed');
SELECT results_eq(format($$SELECT status, approved_at IS NULL, rejected_by FROM hubsync.quickbooks_transfer_queue WHERE id = %s$$,
                         pg_temp.qid('companies', 1000001)),
                  $$VALUES ('rejected'::text, true, 'hs_test_bob'::text)$$, 'rejecting an approved entry clears the approval');

-- Bulk forms.
SELECT throws_ok('SELECT * FROM hubsync_approve_bulk()', '22023', 'a filter is required', 'a bulk approval needs a filter');
SELECT throws_ok($$SELECT * FROM hubsync_approve_bulk(entity_type => 'deals')$$, '22023', NULL, 'an unknown type is refused');
SELECT throws_ok($$SELECT * FROM hubsync_approve_bulk(trigger_reason => 'whim')$$, '22023', NULL, 'an unknown reason is refused');
SELECT throws_ok($$SELECT * FROM hubsync_reject_bulk('', entity_type => 'contacts')$$, '22023', NULL,
                 'a bulk rejection needs a reason');
SET SESSION AUTHORIZATION hs_test_alice;
CREATE TEMP TABLE bulk1 AS SELECT * FROM hubsync_approve_bulk(entity_type => 'invoices', trigger_reason => 'new');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT count(*)::int FROM bulk1), 20, 'bulk approve reports every matching entry');
SELECT results_eq($$SELECT entity, outcome, detail FROM bulk1 WHERE outcome = 'skipped' ORDER BY id$$,
                  $$VALUES ('invoices 3000002'::text, 'skipped'::text, 'possible duplicate of 3000003; approve it on its own'::text),
                           ('invoices 3000003', 'skipped', 'possible duplicate of 3000002; approve it on its own'),
                           ('invoices 3000013', 'skipped', 'draft invoice: QuickBooks takes open and paid invoices only')$$,
                  'it skips possible duplicates and drafts, and says why');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue
            WHERE entity_type = 'invoices' AND status = 'approved' AND approved_by = 'hs_test_alice'), 17,
          'the other 17 invoices are approved, by the caller');
SELECT is((SELECT count(*)::int FROM hubsync.queue_events e JOIN hubsync.quickbooks_transfer_queue q ON q.id = e.queue_id
            WHERE q.entity_type = 'invoices' AND e.to_status = 'approved'), 17, 'one audit row per approval');
CREATE TEMP TABLE bulk2 AS
SELECT * FROM hubsync_reject_bulk('test records', queue_ids => ARRAY[pg_temp.qid('contacts', 2000001),
                                                                    pg_temp.qid('contacts', 2000002),
                                                                    pg_temp.qid('invoices', 3000001), 999999]);
SELECT results_eq($$SELECT entity, outcome, detail FROM bulk2 ORDER BY id$$,
                  $$VALUES ('contacts 2000001'::text, 'rejected'::text, NULL::text),
                           ('contacts 2000002', 'rejected', NULL),
                           ('invoices 3000001', 'skipped', 'status is approved'),
                           (NULL, 'skipped', 'no such entry')$$,
                  'bulk reject by ids: what it did with each id');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue WHERE status = 'rejected' AND rejected_reason = 'test records'), 2,
          'both rejected with the one reason');
CREATE TEMP TABLE bulk3 AS SELECT * FROM hubsync_approve_bulk(entity_type => 'contacts', queue_ids => ARRAY[pg_temp.qid('contacts', 2000003), pg_temp.qid('companies', 1000004)]);
SELECT results_eq($$SELECT entity, outcome FROM bulk3 ORDER BY id$$,
                  $$VALUES ('companies 1000004'::text, 'skipped'::text), ('contacts 2000003', 'approved')$$,
                  'filters combine: an id of another type is not approved');

-- Every view column is documented.
SELECT is((SELECT count(*)::int FROM pg_attribute a
            WHERE a.attrelid IN ('hubsync.review_queue'::regclass, 'hubsync.queue_summary'::regclass, 'hubsync.queue_history'::regclass)
              AND a.attnum > 0 AND col_description(a.attrelid, a.attnum) IS NULL), 0,
          'every column of the three review views has a comment');
SELECT is((SELECT count(*)::int FROM unnest(ARRAY['hubsync.review_queue', 'hubsync.queue_summary', 'hubsync.queue_history',
                                                   'hubsync.quickbooks_transfer_queue', 'hubsync.queue_events',
                                                   'hubsync.tracked_fields', 'hubsync.transfer_state']::regclass[]) AS c
            WHERE obj_description(c, 'pg_class') IS NULL), 0, 'and every queue table and view');
SELECT is((SELECT count(*)::int FROM hubsync.queue_history), (SELECT count(*)::int FROM hubsync.queue_events),
          'queue_history shows every audit row');

SELECT * FROM finish();
