-- Archived, restored, merged and permanently deleted records.
SELECT hubsync_test.reset('small');
SELECT plan(15);

SELECT * FROM hubsync_full_incremental();

CREATE TEMP TABLE picks AS
SELECT (SELECT min(id) FROM hubsync.contacts) AS archived_contact,
       (SELECT max(id) FROM hubsync.invoices) AS archived_invoice,
       (SELECT id FROM hubsync.contacts ORDER BY id OFFSET 1 LIMIT 1) AS merge_primary,
       (SELECT id FROM hubsync.contacts ORDER BY id OFFSET 2 LIMIT 1) AS merge_secondary,
       (SELECT id FROM hubsync.contacts ORDER BY id OFFSET 3 LIMIT 1) AS deleted_contact;

-- Archive: search never returns the record again and its last-modified
-- time does not move; the recycle-bin scan finds it.
SELECT hubsync_test.mock('archive', jsonb_build_object('type', 'contacts', 'id', archived_contact)) FROM picks;
SELECT hubsync_test.mock('archive', jsonb_build_object('type', 'invoices', 'id', archived_invoice)) FROM picks;
CREATE TEMP TABLE run_archive AS SELECT * FROM hubsync_full_incremental();
SELECT ok((SELECT archived AND archived_at IS NOT NULL FROM hubsync.contacts WHERE id = (SELECT archived_contact FROM picks)),
          'archived contact flagged with its archive time');
SELECT ok((SELECT archived FROM hubsync.invoices WHERE id = (SELECT archived_invoice FROM picks)),
          'archived invoice flagged');
SELECT is((SELECT archived FROM run_archive WHERE entity_type = 'contacts'), 1::bigint, 'run counts one archived contact');
CREATE TEMP TABLE run_archive_again AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT sum(archived)::int FROM run_archive_again), 0, 'an archived record is counted once');

-- Restore brings it back as live.
SELECT hubsync_test.mock('restore', jsonb_build_object('type', 'contacts', 'id', archived_contact)) FROM picks;
SELECT * FROM hubsync_full_incremental();
SELECT ok((SELECT NOT archived FROM hubsync.contacts WHERE id = (SELECT archived_contact FROM picks)),
          'restored contact is live again');

-- Merge: HubSpot makes a new record and both old ids disappear.
CREATE TEMP TABLE merged AS
SELECT (hubsync_test.mock('merge', jsonb_build_object('type', 'contacts',
            'primary', merge_primary, 'secondary', merge_secondary))->>'id')::bigint AS new_id
FROM picks;
CREATE TEMP TABLE links_before AS
SELECT from_id FROM hubsync.associations, picks
WHERE from_type = 'invoices' AND to_type = 'contacts' AND to_id IN (merge_primary, merge_secondary);
SELECT * FROM hubsync_full_incremental();
SELECT ok(EXISTS (SELECT 1 FROM hubsync.contacts WHERE id = (SELECT new_id FROM merged)), 'merged record stored under its new id');
SELECT is((SELECT count(*)::int FROM hubsync.contacts, picks WHERE id IN (merge_primary, merge_secondary)), 0,
          'no stale duplicate of the merged contacts is left');
SELECT is((SELECT count(*)::int FROM hubsync.associations, picks
            WHERE to_type = 'contacts' AND to_id IN (merge_primary, merge_secondary)), 0,
          'no link points at a merged-away id');
SELECT set_eq($$SELECT from_id FROM hubsync.associations
                 WHERE from_type = 'invoices' AND to_type = 'contacts' AND to_id = (SELECT new_id FROM merged)$$,
              $$SELECT from_id FROM links_before$$,
              'invoices that pointed at the old contacts point at the merged one');

-- Permanent (GDPR) delete: gone from the live list and the recycle bin;
-- the reconcile finds it.
SELECT hubsync_test.mock('gdpr_delete', jsonb_build_object('type', 'contacts', 'id', deleted_contact)) FROM picks;
CREATE TEMP TABLE run_plain AS SELECT * FROM hubsync_incremental('contacts');
SELECT ok(EXISTS (SELECT 1 FROM hubsync.contacts WHERE id = (SELECT deleted_contact FROM picks)),
          'an incremental run before the reconcile interval cannot see a permanent delete');
CREATE TEMP TABLE run_reconcile AS SELECT * FROM hubsync_reconcile('contacts');
SELECT ok(NOT EXISTS (SELECT 1 FROM hubsync.contacts WHERE id = (SELECT deleted_contact FROM picks)),
          'reconcile removes the permanently deleted contact');
SELECT is((SELECT deleted FROM run_reconcile), 1::bigint, 'reconcile counts one deletion');
SELECT is((SELECT count(*)::int FROM hubsync.associations, picks
            WHERE (to_type = 'contacts' AND to_id = deleted_contact) OR (from_type = 'contacts' AND from_id = deleted_contact)),
          0, 'no association of the deleted contact remains');

-- A reconcile that is due runs by itself.
UPDATE hubsync.sync_watermarks SET last_reconcile_at = now() - interval '2 days' WHERE entity_type = 'contacts';
SELECT * FROM hubsync_incremental('contacts');
SELECT ok((SELECT last_reconcile_at > now() - interval '1 minute' FROM hubsync.sync_watermarks WHERE entity_type = 'contacts'),
          'an overdue reconcile runs as part of the incremental run');

SELECT set_eq($$SELECT id FROM hubsync.contacts WHERE NOT archived$$,
              $$SELECT (d->>'id')::bigint FROM hubsync_test.dump('contacts') d$$,
              'live contacts equal the portal after all of it');

SELECT * FROM finish();
