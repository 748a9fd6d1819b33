-- Users add properties per type without recompiling; a property list too
-- long for a search request body is read with batch read instead.
SELECT hubsync_test.reset('small');
SELECT plan(6);

INSERT INTO hubsync.sync_properties (entity_type, property_name)
VALUES ('contacts', 'hs_analytics_num_visits'), ('companies', 'industry');
SELECT * FROM hubsync_full_incremental();

SELECT is((SELECT count(*)::int FROM hubsync.contacts WHERE properties ? 'hs_analytics_num_visits'),
          (SELECT count(*)::int FROM hubsync_test.dump('contacts') d WHERE d->'properties'->>'hs_analytics_num_visits' IS NOT NULL),
          'an added contact property is synced');
SELECT is((SELECT count(*)::int FROM hubsync.companies WHERE properties->>'industry' IS NOT NULL),
          (SELECT count(*)::int FROM hubsync_test.dump('companies') d WHERE d->'properties'->>'industry' IS NOT NULL),
          'an added company property is synced');

-- 150 more property names push the search body past 3,000 characters.
INSERT INTO hubsync.sync_properties (entity_type, property_name)
SELECT 'line_items', 'custom_field_number_' || n FROM generate_series(1, 150) AS n;
SELECT hubsync_reset_watermark('line_items');
SELECT hubsync_test.mock('stats/clear');
CREATE TEMP TABLE wide AS SELECT * FROM hubsync_incremental('line_items');
SELECT is((SELECT fetched FROM wide), (SELECT count(*) FROM hubsync_test.dump('line_items')),
          'wide property list: every line item fetched');
SELECT is((SELECT count(*)::int FROM hubsync_test.requests() r
            WHERE r->>'kind' = 'search' AND (r->>'status')::int <> 200), 0,
          'wide property list: no search request was rejected');
SELECT ok((SELECT count(*) > 0 FROM hubsync_test.requests() r WHERE r->>'kind' = 'batch_read'),
          'wide property list: records were read with batch read');
SELECT set_eq($$SELECT id, properties->>'name' AS name, properties->>'amount' AS amount FROM hubsync.line_items$$,
              $$SELECT (d->>'id')::bigint AS id, d->'properties'->>'name' AS name, d->'properties'->>'amount' AS amount
                  FROM hubsync_test.dump('line_items') d$$,
              'wide property list: line items equal the portal');

SELECT * FROM finish();
