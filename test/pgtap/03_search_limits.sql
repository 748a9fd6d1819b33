-- The search API returns at most 10,000 results per query and orders
-- records that share a last-modified millisecond arbitrarily.  A sync
-- must neither loop nor skip in either case.
SELECT hubsync_test.reset('small');
SELECT plan(11);

SELECT * FROM hubsync_incremental('companies');

-- 10,050 companies stamped with one millisecond, as a bulk import does.
SELECT hubsync_test.mock('bulk_stamp', '{"type": "companies", "count": 10050, "modified_at": 1751328000000}');
SELECT hubsync_test.mock('stats/clear');
CREATE TEMP TABLE tied AS SELECT * FROM hubsync_incremental('companies');

SELECT is((SELECT fetched FROM tied), 10050::bigint, 'tied millisecond: all 10,050 records fetched once');
SELECT is((SELECT count(*)::int FROM hubsync.companies),
          (SELECT count(*)::int FROM hubsync_test.dump('companies')), 'tied millisecond: mirror has every company');
SELECT is((SELECT last_modified_at FROM hubsync.sync_watermarks WHERE entity_type = 'companies'),
          to_timestamp(1751328000), 'tied millisecond: watermark is that millisecond');
SELECT is((SELECT last_modified_id FROM hubsync.sync_watermarks WHERE entity_type = 'companies'),
          (SELECT max(id) FROM hubsync.companies), 'tied millisecond: tie-break id is the greatest id');
SELECT cmp_ok((SELECT count(*)::int FROM hubsync_test.requests() r WHERE r->>'kind' = 'search'),
              '<=', 10050 / 200 + 5, 'tied millisecond: about one search request per 200 records');
SELECT is((SELECT count(*)::int FROM hubsync_test.requests() r WHERE r->>'kind' = 'search' AND (r->>'status')::int <> 200),
          0, 'tied millisecond: no search request was rejected');

-- 10,500 companies with distinct times: more than one query can return.
SELECT hubsync_test.mock('bulk_stamp', '{"type": "companies", "count": 10500, "modified_at": 1751414400000, "spread_ms": 7}');
SELECT hubsync_test.mock('stats/clear');
CREATE TEMP TABLE spread AS SELECT * FROM hubsync_incremental('companies');

SELECT is((SELECT fetched FROM spread), 10500::bigint, 'past the 10,000 cap: all 10,500 records fetched');
SELECT is((SELECT count(*)::int FROM hubsync_test.requests() r WHERE r->>'kind' = 'search' AND (r->>'status')::int <> 200),
          0, 'past the 10,000 cap: no search request was rejected');
SELECT is((SELECT coalesce(max((r->>'after')::int), 0) FROM hubsync_test.requests() r WHERE r->>'kind' = 'search'),
          0, 'past the 10,000 cap: no request pages by offset');
SELECT is((SELECT last_modified_at FROM hubsync.sync_watermarks WHERE entity_type = 'companies'),
          to_timestamp((1751414400000 + 10499 * 7) / 1000.0), 'past the 10,000 cap: watermark is the newest record');
SELECT set_eq($$SELECT id, updated_at FROM hubsync.companies$$,
              $$SELECT (d->>'id')::bigint, (d->>'updatedAt')::timestamptz FROM hubsync_test.dump('companies') d$$,
              'past the 10,000 cap: mirror equals the portal');

SELECT * FROM finish();
