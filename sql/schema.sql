-- The objects CREATE EXTENSION makes, and their documentation.
CREATE EXTENSION hubsync;

SELECT c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'hubsync' AND c.relkind IN ('r', 'v')
ORDER BY c.relkind, c.relname;

SELECT entity_type, object_type_id, modified_property, sync_order, mergeable
FROM hubsync.object_types ORDER BY sync_order;

SELECT entity_type, string_agg(property_name, ', ' ORDER BY property_name) AS default_properties
FROM hubsync.sync_properties WHERE is_default GROUP BY entity_type ORDER BY entity_type;

SELECT hubsync._request_properties('contacts');
SELECT hubsync._request_properties('invoices');

-- Every table and view of schema hubsync, and every column of its views,
-- carries a comment.
SELECT c.relname AS undocumented
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'hubsync' AND c.relkind IN ('r', 'v')
  AND obj_description(c.oid, 'pg_class') IS NULL;
SELECT c.relname, a.attname AS undocumented_view_column
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'hubsync' AND c.relkind = 'v' AND col_description(c.oid, a.attnum) IS NULL;

-- Typed columns are generated from properties.
INSERT INTO hubsync.invoices (id, properties)
VALUES (1, '{"hs_number": "INV-1", "hs_amount_billed": "1234.50", "hs_balance_due": "",
             "hs_invoice_date": "2024-09-11T00:00:00.000Z", "hs_due_date": "1729859279",
             "hs_currency": "EUR", "hs_invoice_status": "open"}');
SELECT number, status, currency, amount_billed, balance_due, invoice_date, due_date
FROM hubsync.invoices;
UPDATE hubsync.invoices SET properties = properties || '{"hs_amount_billed": "n/a"}';
SELECT amount_billed FROM hubsync.invoices;
TRUNCATE hubsync.invoices;

-- The watermark rows exist for every type from the start.
SELECT entity_type, last_modified_at, entity_count FROM hubsync.sync_watermarks ORDER BY entity_type;
