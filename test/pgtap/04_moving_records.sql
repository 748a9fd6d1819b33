-- Records edited while a run pages through search, and writes that the
-- search index shows late, are neither skipped nor counted twice.
SELECT hubsync_test.reset('demo');
SELECT plan(10);

SELECT * FROM hubsync_incremental('companies');

-- Edit contacts after the second search page has been answered: some that
-- the run has already written (the oldest) and some it has not reached yet
-- (the newest).  Offset paging would skip records after such edits.
CREATE TEMP TABLE portal_contacts AS
SELECT (d->>'id')::bigint AS id, (d->'properties'->>'lastmodifieddate')::timestamptz AS modified
FROM hubsync_test.dump('contacts') AS d;
CREATE TEMP TABLE moved AS
(SELECT id FROM portal_contacts ORDER BY modified, id LIMIT 5)
UNION ALL
(SELECT id FROM portal_contacts ORDER BY modified DESC, id LIMIT 5);

SELECT hubsync_test.mock('edit_on_search', jsonb_build_object(
    'type', 'contacts', 'after_search_requests', 2,
    'ids', (SELECT jsonb_agg(id) FROM moved),
    'properties', '{"jobtitle": "Moved while paging"}'::jsonb));

-- The 5 newest contacts move past the run's upper bound (its start time)
-- before the run reaches them, so they belong to the next run.
CREATE TEMP TABLE paged AS SELECT * FROM hubsync_incremental('contacts');
SELECT set_eq($$SELECT id FROM portal_contacts EXCEPT SELECT id FROM hubsync.contacts$$,
              $$(SELECT id FROM portal_contacts ORDER BY modified DESC, id LIMIT 5)$$,
              'edits while paging: only the contacts moved past the run are left for the next run');
SELECT is((SELECT fetched FROM paged), (SELECT count(*) - 5 FROM portal_contacts),
          'edits while paging: no contact fetched twice');

CREATE TEMP TABLE after_move AS SELECT * FROM hubsync_incremental('contacts');
SELECT is((SELECT count(*)::int FROM hubsync.contacts WHERE properties->>'jobtitle' = 'Moved while paging'),
          10, 'the next run has every edit made while paging');
SELECT is((SELECT updated + inserted FROM after_move), 10::bigint, 'the next run writes exactly those 10 records');

-- A write that search shows only after the run that should have seen it:
-- modelled by a record stamped 10 s before the newest record already read.
SELECT hubsync_test.reset('small');
SELECT * FROM hubsync_incremental('contacts');
SELECT hubsync_test.mock('edit', jsonb_build_object('type', 'contacts', 'id', (SELECT min(id) FROM hubsync.contacts),
                                                    'properties', '{"jobtitle": "newest"}'::jsonb));
SELECT * FROM hubsync_incremental('contacts');
SELECT hubsync_test.mock('edit', jsonb_build_object(
    'type', 'contacts', 'id', (SELECT max(id) FROM hubsync.contacts),
    'properties', '{"jobtitle": "indexed late"}'::jsonb,
    'modified_at', (extract(epoch FROM (SELECT last_modified_at FROM hubsync.sync_watermarks
                                         WHERE entity_type = 'contacts')) * 1000)::bigint - 10000));
CREATE TEMP TABLE late AS SELECT * FROM hubsync_incremental('contacts');
SELECT is((SELECT properties->>'jobtitle' FROM hubsync.contacts WHERE id = (SELECT max(id) FROM hubsync.contacts)),
          'indexed late', 'overlap window: a write indexed late is picked up');
SELECT is((SELECT updated FROM late), 1::bigint, 'overlap window: only that record is an update');
SELECT is((SELECT unchanged FROM late), 1::bigint, 'overlap window: the re-read newest record is unchanged');

-- The search index itself lagging: an edit is invisible for 1.5 s.
SELECT hubsync_test.mock('config', '{"index_lag_ms": 1500}');
SELECT hubsync_test.mock('edit', jsonb_build_object('type', 'contacts', 'id', (SELECT min(id) FROM hubsync.contacts),
                                                    'properties', '{"jobtitle": "lagging"}'::jsonb));
CREATE TEMP TABLE too_soon AS SELECT * FROM hubsync_incremental('contacts');
SELECT is((SELECT properties->>'jobtitle' FROM hubsync.contacts WHERE id = (SELECT min(id) FROM hubsync.contacts)),
          'newest', 'index lag: the edit is not visible yet');
SELECT pg_sleep(2);
CREATE TEMP TABLE in_time AS SELECT * FROM hubsync_incremental('contacts');
SELECT is((SELECT properties->>'jobtitle' FROM hubsync.contacts WHERE id = (SELECT min(id) FROM hubsync.contacts)),
          'lagging', 'index lag: the next run picks the edit up');
SELECT is((SELECT updated FROM in_time), 1::bigint, 'index lag: one update');

SELECT * FROM finish();
