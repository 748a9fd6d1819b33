-- A first sync of the demo portal leaves every mirror table, every default
-- property and every association equal to the portal.
SELECT hubsync_test.reset('demo');
SELECT plan(20);

CREATE TEMP TABLE run1 AS SELECT * FROM hubsync_full_incremental();

SELECT is((SELECT count(*)::int FROM run1 WHERE status = 'ok'), 4, 'first sync: all four types ok');
SELECT is((SELECT sum(updated)::int FROM run1), 0, 'first sync: nothing counted as updated');

-- The properties hubsync requested, as the portal holds them now.
CREATE TEMP TABLE portal AS
SELECT t AS entity_type, (d->>'id')::bigint AS id,
       jsonb_strip_nulls(coalesce(
           (SELECT jsonb_object_agg(key, value) FROM jsonb_each(d->'properties')
             WHERE key = ANY (hubsync._request_properties(t))), '{}')) AS properties,
       (d->>'createdAt')::timestamptz AS created_at,
       (d->>'updatedAt')::timestamptz AS updated_at
FROM unnest(ARRAY['companies', 'contacts', 'line_items', 'invoices']) AS t,
     LATERAL hubsync_test.dump(t) AS d;

SELECT is((SELECT count(*)::int FROM portal WHERE entity_type = 'invoices'), 1124, 'demo portal has 1,124 invoices');
SELECT cmp_ok((SELECT count(*)::int FROM portal WHERE entity_type = 'contacts'), '>=', 1900, 'demo portal has about 2,000 contacts');

SELECT set_eq(
    $$SELECT id, jsonb_strip_nulls(properties), created_at, updated_at FROM hubsync.companies$$,
    $$SELECT id, properties, created_at, updated_at FROM portal WHERE entity_type = 'companies'$$,
    'companies mirror equals the portal');
SELECT set_eq(
    $$SELECT id, jsonb_strip_nulls(properties), created_at, updated_at FROM hubsync.contacts$$,
    $$SELECT id, properties, created_at, updated_at FROM portal WHERE entity_type = 'contacts'$$,
    'contacts mirror equals the portal');
SELECT set_eq(
    $$SELECT id, jsonb_strip_nulls(properties), created_at, updated_at FROM hubsync.line_items$$,
    $$SELECT id, properties, created_at, updated_at FROM portal WHERE entity_type = 'line_items'$$,
    'line_items mirror equals the portal');
SELECT set_eq(
    $$SELECT id, jsonb_strip_nulls(properties), created_at, updated_at FROM hubsync.invoices$$,
    $$SELECT id, properties, created_at, updated_at FROM portal WHERE entity_type = 'invoices'$$,
    'invoices mirror equals the portal');

SELECT is((SELECT count(*)::int FROM hubsync.contacts WHERE archived), 0, 'no live contact is flagged archived');

-- Typed columns follow the properties, with empty strings as NULL.
SELECT is((SELECT count(*)::int FROM hubsync.contacts
            WHERE email IS DISTINCT FROM nullif(properties->>'email', '')), 0,
          'contacts.email is the email property');
SELECT is((SELECT count(*)::int FROM hubsync.invoices
            WHERE amount_billed IS DISTINCT FROM nullif(properties->>'hs_amount_billed', '')::numeric), 0,
          'invoices.amount_billed is hs_amount_billed as numeric');
SELECT is((SELECT count(*)::int FROM hubsync.invoices
            WHERE properties->>'hs_invoice_date' <> '' AND invoice_date IS NULL), 0,
          'every invoice date parses, sloppy epoch values included');
SELECT is((SELECT count(*)::int FROM hubsync.line_items
            WHERE amount IS DISTINCT FROM nullif(properties->>'amount', '')::numeric), 0,
          'line_items.amount is the amount property as numeric');

-- Associations, per direction.
SELECT set_eq(
    format($$SELECT from_id, to_id, type_id, category, label FROM hubsync.associations
             WHERE from_type = %L AND to_type = %L$$, f, t),
    format($$SELECT (a->>'from_id')::bigint AS from_id, (a->>'to_id')::bigint AS to_id,
                    (a->>'type_id')::int AS type_id, a->>'category' AS category, a->>'label' AS label
               FROM hubsync_test.dump_associations(%L, %L) AS a$$, f, t),
    format('associations %s -> %s equal the portal', f, t))
FROM (VALUES ('invoices', 'line_items'), ('invoices', 'contacts'),
             ('invoices', 'companies'), ('contacts', 'companies')) AS pairs(f, t);

SELECT ok((SELECT bool_and(last_modified_at IS NOT NULL AND entity_count > 0)
             FROM hubsync.sync_watermarks), 'every type has a watermark and a row count');
SELECT is((SELECT sum(entity_count)::int FROM hubsync.sync_watermarks),
          (SELECT count(*)::int FROM portal), 'entity_count adds up to the portal size');

-- A second run right away reads nothing new.
CREATE TEMP TABLE run2 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT sum(fetched)::int FROM run2), 0, 'second sync fetches nothing');

SELECT * FROM finish();
