-- After a full load, an incremental run fetches exactly the records edited
-- in the portal, moves each watermark, and leaves the mirror equal to the
-- portal again.
SELECT hubsync_test.reset('small');
SELECT plan(17);

CREATE TEMP TABLE run1 AS SELECT * FROM hubsync_full_incremental();
CREATE TEMP TABLE marks1 AS SELECT entity_type, last_modified_at FROM hubsync.sync_watermarks;

-- Two contacts, one company, one invoice and three line items change.
CREATE TEMP TABLE edited (entity_type text, id bigint);
INSERT INTO edited
SELECT 'contacts', id FROM (SELECT id FROM hubsync.contacts ORDER BY id LIMIT 2) AS s
UNION ALL SELECT 'companies', (SELECT min(id) FROM hubsync.companies)
UNION ALL SELECT 'invoices', (SELECT max(id) FROM hubsync.invoices)
UNION ALL SELECT 'line_items', id FROM (SELECT id FROM hubsync.line_items ORDER BY id DESC LIMIT 3) AS s;

SELECT hubsync_test.mock('edit', jsonb_build_object(
           'type', entity_type, 'id', id,
           'properties', CASE entity_type
               WHEN 'contacts' THEN jsonb_build_object('firstname', 'Zoë ' || id, 'jobtitle', 'CFO')
               WHEN 'companies' THEN '{"name": "O''Brien & \"Söhne\" 🚀"}'::jsonb
               WHEN 'invoices' THEN '{"hs_invoice_status": "paid", "hs_balance_due": "0.00"}'::jsonb
               ELSE '{"quantity": "7", "price": "12.50", "amount": "87.50"}'::jsonb
           END))
FROM edited;

SELECT hubsync_test.mock('stats/clear');
CREATE TEMP TABLE run2 AS SELECT * FROM hubsync_full_incremental();

SELECT is((SELECT fetched FROM run2 WHERE entity_type = 'contacts'), 2::bigint, 'contacts: only the 2 edited records fetched');
SELECT is((SELECT fetched FROM run2 WHERE entity_type = 'companies'), 1::bigint, 'companies: only the edited record fetched');
SELECT is((SELECT fetched FROM run2 WHERE entity_type = 'invoices'), 1::bigint, 'invoices: only the edited record fetched');
SELECT is((SELECT fetched FROM run2 WHERE entity_type = 'line_items'), 3::bigint, 'line_items: only the 3 edited records fetched');
SELECT is((SELECT sum(updated)::int FROM run2), 7, 'all 7 edits counted as updates');
SELECT is((SELECT sum(inserted)::int FROM run2), 0, 'no record counted as new');

SELECT ok(bool_and(w.last_modified_at > m.last_modified_at), 'every watermark moved forward')
FROM hubsync.sync_watermarks w JOIN marks1 m USING (entity_type);

SELECT is((SELECT first_name FROM hubsync.contacts WHERE id = (SELECT min(id) FROM edited WHERE entity_type = 'contacts')),
          'Zoë ' || (SELECT min(id) FROM edited WHERE entity_type = 'contacts'), 'edited contact name stored with its accent');
SELECT is((SELECT name FROM hubsync.companies WHERE id = (SELECT id FROM edited WHERE entity_type = 'companies')),
          'O''Brien & "Söhne" 🚀', 'quotes, apostrophe and emoji survive');
SELECT is((SELECT status FROM hubsync.invoices WHERE id = (SELECT id FROM edited WHERE entity_type = 'invoices')),
          'paid', 'edited invoice status stored');
SELECT is((SELECT sum(quantity) FROM hubsync.line_items WHERE id IN (SELECT id FROM edited WHERE entity_type = 'line_items')),
          21::numeric, 'edited line item quantities stored as numeric');

-- The search requests carried the watermark as their lower bound.
SELECT ok(bool_and(r->'filters' IS NOT NULL), 'every search request had filters')
FROM hubsync_test.requests() AS r WHERE r->>'kind' = 'search';

CREATE TEMP TABLE portal AS
SELECT t AS entity_type, (d->>'id')::bigint AS id,
       jsonb_strip_nulls(coalesce((SELECT jsonb_object_agg(key, value) FROM jsonb_each(d->'properties')
                                    WHERE key = ANY (hubsync._request_properties(t))), '{}')) AS properties
FROM unnest(ARRAY['companies', 'contacts', 'line_items', 'invoices']) AS t,
     LATERAL hubsync_test.dump(t) AS d;
SELECT set_eq(
    $$SELECT 'contacts', id, jsonb_strip_nulls(properties) FROM hubsync.contacts
      UNION ALL SELECT 'companies', id, jsonb_strip_nulls(properties) FROM hubsync.companies
      UNION ALL SELECT 'invoices', id, jsonb_strip_nulls(properties) FROM hubsync.invoices
      UNION ALL SELECT 'line_items', id, jsonb_strip_nulls(properties) FROM hubsync.line_items$$,
    $$SELECT entity_type, id, properties FROM portal$$,
    'mirror equals the portal after the incremental run');

-- The edits are younger than hubsync.search_overlap, so the next run reads
-- them again in case the search index showed them late; unchanged records
-- read again are not updates.
CREATE TEMP TABLE run3 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT sum(fetched)::int FROM run3), 7, 'a third run re-reads the 7 recent edits');
SELECT is((SELECT sum(updated + inserted)::int FROM run3), 0, 're-read records are not updates');
SELECT is((SELECT sum(unchanged)::int FROM run3), 7, 're-read records count as unchanged');

-- With no overlap, the run after one that recorded it reads nothing.
SET hubsync.search_overlap = 0;
SELECT * FROM hubsync_full_incremental();
CREATE TEMP TABLE run5 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT sum(fetched)::int FROM run5), 0, 'without overlap a later run fetches nothing');

SELECT * FROM finish();
