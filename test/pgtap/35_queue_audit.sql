-- The audit trail: every transition of every entry, with who, when, from
-- and to, the version and a note; each new version's snapshot and diff.
SELECT hubsync_test.reset('small');
SELECT plan(14);

CREATE TEMP TABLE run0 AS SELECT * FROM hubsync_full_incremental();

-- One invoice goes through detection, a refresh, an approval, a change
-- after approval, a second approval and the transfer.
SELECT FROM hubsync_test.mock('edit', '{"type": "invoices", "id": 3000020, "properties": {"hs_due_date": "2025-06-30T00:00:00.000Z"}}');
CREATE TEMP TABLE run1 AS SELECT * FROM hubsync_full_incremental();
SELECT FROM hubsync_test.mock('edit', '{"type": "line_items", "id": 4000041, "properties": {"quantity": "3"}}');
CREATE TEMP TABLE run2 AS SELECT * FROM hubsync_full_incremental();
SELECT id AS entry FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000020 \gset
SET SESSION AUTHORIZATION hs_test_alice;
SELECT FROM hubsync_approve(:entry, 2);
RESET SESSION AUTHORIZATION;
SELECT FROM hubsync_test.mock('edit', '{"type": "invoices", "id": 3000020, "properties": {"hs_amount_billed": "1300.00"}}');
CREATE TEMP TABLE run3 AS SELECT * FROM hubsync_full_incremental();
SET SESSION AUTHORIZATION hs_test_bob;
SELECT FROM hubsync_approve(:entry, 3);
RESET SESSION AUTHORIZATION;
SELECT FROM hubsync_mark_transferred(:entry, 3, '{"Id": "130", "SyncToken": "0"}');

SELECT results_eq(
    format($$SELECT from_status, to_status, version, actor FROM hubsync.queue_events WHERE queue_id = %s ORDER BY id$$, :entry),
    format($$VALUES (NULL::text, 'pending_review'::text, 1, %1$L::text),
                    ('pending_review', 'pending_review', 2, %1$L),
                    ('pending_review', 'approved', 2, 'hs_test_alice'),
                    ('approved', 'pending_review', 3, %1$L),
                    ('pending_review', 'approved', 3, 'hs_test_bob'),
                    ('approved', 'transferred', 3, %1$L)$$, session_user),
    'every transition is recorded, in order, with who made it');
SELECT is((SELECT array_agg(regexp_replace(note, ' at \d{4}-\d\d-\d\d [0-9:.+]+ ', ' at TIME ') ORDER BY id)
             FROM hubsync.queue_events WHERE queue_id = :entry),
          ARRAY['detected: update in QuickBooks (modified)',
                'refreshed: update in QuickBooks (modified, line_items_changed)',
                'approved version 2',
                'back to review: the record changed after hs_test_alice approved version 2 at TIME (modified, line_items_changed)',
                'approved version 3',
                'transferred to QuickBooks (QuickBooks Id 130)'],
          'each with a note saying what happened');
SELECT ok((SELECT bool_and(event_at >= lag) FROM (SELECT event_at, lag(event_at, 1, '-infinity') OVER (ORDER BY id) AS lag
                                                  FROM hubsync.queue_events WHERE queue_id = :entry) AS t),
          'event times follow the order of the events');
SELECT is((SELECT count(*)::int FROM hubsync.queue_events WHERE queue_id = :entry AND entity_data IS NOT NULL), 3,
          'each of the three versions has its snapshot in the audit');
SELECT is((SELECT entity_data FROM hubsync.queue_events WHERE queue_id = :entry AND version = 3 AND entity_data IS NOT NULL),
          (SELECT entity_data FROM hubsync.quickbooks_transfer_queue WHERE id = :entry),
          'the approved version''s snapshot is the one that was transferred');
SELECT is((SELECT changes->'fields'->'hs_amount_billed'->>'after' FROM hubsync.queue_events
            WHERE queue_id = :entry AND version = 3 AND changes IS NOT NULL), '1300.00',
          'and its diff is kept with it');
SELECT is((SELECT entity_data->'line_items'->0->'properties'->>'quantity' FROM hubsync.queue_events
            WHERE queue_id = :entry AND version = 2 AND entity_data IS NOT NULL), '3',
          'the snapshot alice approved is kept, as she saw it');
SELECT results_eq(format('SELECT approved_by, transferred_at IS NOT NULL, transfer_result->>$$Id$$ FROM hubsync.quickbooks_transfer_queue WHERE id = %s', :entry),
                  $$VALUES ('hs_test_bob'::text, true, '130'::text)$$, 'the entry shows the last approval and the transfer');

-- A rejection and a failed transfer.
SELECT FROM hubsync_test.mock('edit', '{"type": "contacts", "id": 2000011, "properties": {"lastname": "Unknown"}}');
SELECT FROM hubsync_test.mock('edit', '{"type": "companies", "id": 1000004, "properties": {"phone": "+48 42 000 00 00"}}');
CREATE TEMP TABLE run4 AS SELECT * FROM hubsync_full_incremental();
SELECT id AS rejected FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 2000011 \gset
SELECT id AS failing FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 1000004 \gset
SET SESSION AUTHORIZATION hs_test_alice;
SELECT FROM hubsync_reject(:rejected, 'not a real customer');
SELECT FROM hubsync_approve(:failing, 1);
RESET SESSION AUTHORIZATION;
SELECT FROM hubsync_mark_failed(:failing, 1, 'QuickBooks 6240: Duplicate Name Exists Error');
SELECT results_eq(format($$SELECT to_status, actor, note FROM hubsync.queue_events WHERE queue_id = %s ORDER BY id$$, :rejected),
                  format($$VALUES ('pending_review'::text, %L::text, 'detected: update in QuickBooks (modified)'::text),
                                  ('rejected', 'hs_test_alice', 'rejected: not a real customer')$$, session_user),
                  'a rejection is audited with its reason');
SELECT results_eq(format($$SELECT to_status, note FROM hubsync.queue_events WHERE queue_id = %s ORDER BY id$$, :failing),
                  $$VALUES ('pending_review'::text, 'detected: update in QuickBooks (modified)'::text),
                           ('approved', 'approved version 1'),
                           ('failed', 'transfer failed: QuickBooks 6240: Duplicate Name Exists Error')$$,
                  'a failed transfer is audited with its error');
SELECT is((SELECT books_source FROM hubsync.transfer_state WHERE entity_type = 'companies' AND hubspot_id = 1000004), 'baseline',
          'a failed transfer changes nothing the books are taken to hold');

-- Completeness: every entry's history starts with its creation and ends
-- in its current status and version.
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue q
            WHERE (SELECT e.from_status IS NULL FROM hubsync.queue_events e WHERE e.queue_id = q.id ORDER BY e.id LIMIT 1)
                  IS DISTINCT FROM true
               OR (SELECT (e.to_status, e.version) FROM hubsync.queue_events e WHERE e.queue_id = q.id ORDER BY e.id DESC LIMIT 1)
                  IS DISTINCT FROM (q.status, q.version)), 0,
          'every entry''s audit starts at its creation and ends at its current state');
SELECT is((SELECT count(*)::int FROM (SELECT e.queue_id, e.to_status, lead(e.from_status) OVER w AS next_from
                                       FROM hubsync.queue_events e WINDOW w AS (PARTITION BY e.queue_id ORDER BY e.id)) AS t
            WHERE t.next_from IS NOT NULL AND t.next_from <> t.to_status), 0,
          'with no gap: each event starts where the previous one ended');
SELECT throws_ok(format('UPDATE hubsync.queue_events SET actor = $$someone else$$ WHERE queue_id = %s', :entry), '42501', NULL,
                 'and no one can rewrite it');

SELECT * FROM finish();
