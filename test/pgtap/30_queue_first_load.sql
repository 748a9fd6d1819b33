-- The first load of a portal and the transfer queue: the default baseline
-- records what the books hold and makes no entry; re-reading unchanged
-- records makes none either; hubsync_enqueue_existing() and
-- hubsync.first_load = 'enqueue' enqueue every live record as new.
SELECT hubsync_test.reset('small');
SELECT plan(29);

CREATE TEMP TABLE portal AS
SELECT t AS entity_type, (d->>'id')::bigint AS id, d->'properties' AS properties
FROM unnest(ARRAY['companies', 'contacts', 'invoices']) AS t,
     LATERAL hubsync_test.dump(t) AS d;

SELECT is(current_setting('hubsync.first_load'), 'baseline', 'hubsync.first_load defaults to baseline');

-- Baseline first load.
CREATE TEMP TABLE run1 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue), 0, 'baseline first load: no queue entry');
SELECT is((SELECT sum(queue_entries)::int FROM run1), 0, 'baseline first load: the run reports no queue entries');
SELECT set_eq($$SELECT entity_type, hubspot_id FROM hubsync.transfer_state WHERE books_source = 'baseline'$$,
              $$SELECT entity_type, id FROM portal$$,
              'baseline: every live customer and invoice is recorded as held by the books');
SELECT is((SELECT count(*)::int FROM hubsync.transfer_state WHERE books_data IS DISTINCT FROM seen_data), 0,
          'baseline: what the books hold is what was seen');
SELECT is((SELECT count(*)::int FROM hubsync.change_log), 0,
          'every change of the first load was used, the line items included');
SELECT is((SELECT jsonb_array_length(seen_data->'line_items') FROM hubsync.transfer_state
            WHERE entity_type = 'invoices' AND hubspot_id = 3000001), 3,
          'an invoice snapshot holds its line items');
SELECT is((SELECT seen_data->'properties'->>'hs_invoice_date' FROM hubsync.transfer_state
            WHERE entity_type = 'invoices' AND hubspot_id = 3000005), '2023-07-02',
          'an epoch-seconds invoice date is stored as a calendar date in the snapshot');
SELECT is((SELECT seen_data->'properties'->'hs_amount_billed' FROM hubsync.transfer_state
            WHERE entity_type = 'invoices' AND hubspot_id = 3000005), '4587.50'::jsonb,
          'amounts are numbers in the snapshot');

-- An immediate second run, and a full re-read of every type: nothing.
CREATE TEMP TABLE run2 AS SELECT * FROM hubsync_full_incremental();
CREATE TEMP TABLE seen_before AS SELECT entity_type, hubspot_id, seen_at FROM hubsync.transfer_state;
SELECT hubsync_reset_watermark(t) FROM unnest(ARRAY['companies', 'contacts', 'line_items', 'invoices']) AS t;
CREATE TEMP TABLE run3 AS SELECT * FROM hubsync_full_incremental();
SELECT ok((SELECT sum(fetched) FROM run3) >= 100, 'after hubsync_reset_watermark every record is read again');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue), 0, 're-reading unchanged records makes no entry');
SELECT is((SELECT count(*)::int FROM hubsync.transfer_state s JOIN seen_before b USING (entity_type, hubspot_id)
            WHERE s.seen_at <> b.seen_at), 0, 're-reading unchanged records does not even touch their state');

-- Empty books: enqueue what exists.
CREATE TEMP TABLE enq AS SELECT * FROM hubsync_enqueue_existing();
SELECT set_eq($$SELECT object_type, enqueued, already_queued, already_transferred FROM enq$$,
              $$SELECT entity_type, count(*), 0::bigint AS q, 0::bigint AS t FROM portal GROUP BY entity_type$$,
              'hubsync_enqueue_existing() enqueues every live record, per type');
SELECT set_eq($$SELECT entity_type, hubspot_id FROM hubsync.quickbooks_transfer_queue$$,
              $$SELECT entity_type, id FROM portal$$, 'one entry per live record');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue
            WHERE action_type = 'create' AND trigger_reason = 'new' AND status = 'pending_review' AND version = 1),
          (SELECT count(*)::int FROM portal), 'each one a pending create, reason new, version 1');
SELECT is((SELECT count(*)::int FROM hubsync.transfer_state WHERE books_data IS NOT NULL), 0,
          'the books are now taken to hold nothing');
SELECT is((SELECT jsonb_array_length(entity_data->'line_items') FROM hubsync.quickbooks_transfer_queue
            WHERE entity_type = 'invoices' AND hubspot_id = 3000001), 3, 'an invoice entry carries its line items');
SELECT is((SELECT entity_data->'customer'->>'name' FROM hubsync.quickbooks_transfer_queue
            WHERE entity_type = 'invoices' AND hubspot_id = 3000001), 'Meridian Energy LLC',
          'and its customer, the linked company');
CREATE TEMP TABLE enq2 AS SELECT * FROM hubsync_enqueue_existing('invoices');
SELECT results_eq($$SELECT object_type, enqueued, already_queued FROM enq2$$,
                  $$VALUES ('invoices', 0::bigint, 20::bigint)$$,
                  'enqueueing again finds every invoice already queued');
SELECT is((SELECT max(version) FROM hubsync.quickbooks_transfer_queue), 1, 'and changes no entry');
SELECT throws_ok($$SELECT * FROM hubsync_enqueue_existing('line_items')$$, '22023',
                 'cannot enqueue records of type "line_items"', 'line items are not enqueued on their own');

-- first_load = enqueue: a first load enqueues every record as new.
SELECT hubsync_test.reset('small');
SET hubsync.first_load = 'enqueue';
CREATE TEMP TABLE run4 AS SELECT * FROM hubsync_full_incremental();
RESET hubsync.first_load;
SELECT set_eq($$SELECT entity_type, hubspot_id FROM hubsync.quickbooks_transfer_queue
                 WHERE action_type = 'create' AND trigger_reason = 'new' AND status = 'pending_review'$$,
              $$SELECT entity_type, id FROM portal$$,
              'first_load = enqueue: every live record is a pending create');
SELECT is((SELECT sum(queue_entries)::int FROM run4), (SELECT count(*)::int FROM portal),
          'the run reports one queue entry per record');
SELECT is((SELECT count(*)::int FROM hubsync.transfer_state WHERE books_data IS NOT NULL), 0,
          'first_load = enqueue records nothing as held by the books');
SELECT is((SELECT count(*)::int FROM hubsync.change_log), 0, 'no change is left over');
CREATE TEMP TABLE run5 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT max(version) FROM hubsync.quickbooks_transfer_queue), 1, 'a second run does not touch the entries');
SELECT throws_ok($$SET hubsync.first_load = 'everything'$$, '22023', NULL, 'hubsync.first_load takes baseline or enqueue only');

-- Other types still in their first load when one type has finished:
-- whatever a baseline run of invoices sees is the books' state.
SELECT hubsync_test.reset('small');
CREATE TEMP TABLE run6 AS SELECT * FROM hubsync_incremental('line_items');
SELECT is((SELECT count(*)::int FROM hubsync.change_log WHERE entity_type = 'line_items'), 42,
          'line items synced before their invoices wait in change_log');
CREATE TEMP TABLE run7 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT count(*)::int FROM hubsync.change_log) + (SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue), 0,
          'the invoices'' first load uses them as baseline: no entry, nothing left');

SELECT * FROM finish();
