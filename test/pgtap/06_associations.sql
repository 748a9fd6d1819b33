-- Associations are read for every fetched parent, page by page per
-- parent, and replace the stored set, so removed links disappear.
SELECT hubsync_test.reset('small');
SELECT plan(9);

-- Two association rows a page forces the per-parent paging of the v4
-- batch read.
SELECT hubsync_test.mock('config', '{"assoc_page_size": 2}');
SELECT * FROM hubsync_full_incremental();
SELECT set_eq(
    format($$SELECT from_id, to_id, type_id, category, label FROM hubsync.associations
             WHERE from_type = %L AND to_type = %L$$, f, t),
    format($$SELECT (a->>'from_id')::bigint AS from_id, (a->>'to_id')::bigint AS to_id,
                    (a->>'type_id')::int AS type_id, a->>'category' AS category, a->>'label' AS label
               FROM hubsync_test.dump_associations(%L, %L) AS a$$, f, t),
    format('paged associations %s -> %s equal the portal', f, t))
FROM (VALUES ('invoices', 'line_items'), ('invoices', 'contacts'),
             ('invoices', 'companies'), ('contacts', 'companies')) AS pairs(f, t);

-- An open invoice loses a line item and gets another contact, without any
-- property change: HubSpot does not bump its last-modified time.
CREATE TEMP TABLE target AS
SELECT i.id AS invoice_id,
       (SELECT min(to_id) FROM hubsync.associations a
         WHERE a.from_type = 'invoices' AND a.from_id = i.id AND a.to_type = 'line_items') AS dropped_line,
       (SELECT max(id) FROM hubsync.contacts) AS new_contact
FROM hubsync.invoices i
WHERE i.status IN ('open', 'draft')
  AND (SELECT count(*) FROM hubsync.associations a
        WHERE a.from_type = 'invoices' AND a.from_id = i.id AND a.to_type = 'line_items') >= 2
ORDER BY i.id LIMIT 1;
SELECT isnt((SELECT invoice_id FROM target), NULL, 'an open invoice with two line items exists');

SELECT hubsync_test.mock('dissociate', jsonb_build_object('from_type', 'invoices', 'from_id', invoice_id,
                                                          'to_type', 'line_items', 'to_id', dropped_line))
FROM target;
SELECT hubsync_test.mock('associate', jsonb_build_object('from_type', 'invoices', 'from_id', invoice_id,
                                                         'to_type', 'contacts', 'to_id', new_contact, 'type_id', 177))
FROM target;

CREATE TEMP TABLE run2 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT fetched FROM run2 WHERE entity_type = 'invoices'), 0::bigint,
          'the invoice itself did not change');
SELECT ok(NOT EXISTS (SELECT 1 FROM hubsync.associations, target
                       WHERE from_type = 'invoices' AND from_id = invoice_id
                         AND to_type = 'line_items' AND to_id = dropped_line),
          'the removed line item link is gone');
SELECT ok(EXISTS (SELECT 1 FROM hubsync.associations, target
                   WHERE from_type = 'invoices' AND from_id = invoice_id
                     AND to_type = 'contacts' AND to_id = new_contact AND type_id = 177),
          'the added contact link is stored');
SELECT set_eq($$SELECT from_id, to_id, type_id FROM hubsync.associations WHERE from_type = 'invoices'$$,
              $$SELECT (a->>'from_id')::bigint AS from_id, (a->>'to_id')::bigint AS to_id, (a->>'type_id')::int AS type_id
                  FROM hubsync_test.dump_associations('invoices', 'line_items') a
                UNION ALL SELECT (a->>'from_id')::bigint, (a->>'to_id')::bigint, (a->>'type_id')::int
                  FROM hubsync_test.dump_associations('invoices', 'contacts') a
                UNION ALL SELECT (a->>'from_id')::bigint, (a->>'to_id')::bigint, (a->>'type_id')::int
                  FROM hubsync_test.dump_associations('invoices', 'companies') a$$,
              'invoice associations equal the portal after the change');

SELECT * FROM finish();
