-- Every trigger reason, each from a real edit in the portal, and edits of
-- untracked properties that make no entry.
SELECT hubsync_test.reset('small');
SELECT plan(35);

CREATE TEMP TABLE run0 AS SELECT * FROM hubsync_full_incremental();

\o /dev/null
-- new: a company, a contact, and an open invoice with a new line item.
CREATE TEMP TABLE created AS
SELECT 'companies'::text AS entity_type,
       (hubsync_test.mock('create', '{"type": "companies", "properties": {"name": "Fjord Freight AS",
            "domain": "fjord.example", "city": "Bergen", "country": "Norway"}}')->>'id')::bigint AS id
UNION ALL
SELECT 'contacts', (hubsync_test.mock('create', '{"type": "contacts", "properties": {"email": "ola@fjord.example",
            "firstname": "Ola", "lastname": "Nordmann"}}')->>'id')::bigint
UNION ALL
SELECT 'invoices', (hubsync_test.mock('create', '{"type": "invoices", "properties": {"hs_number": "INV-009001",
            "hs_invoice_status": "open", "hs_currency": "USD", "hs_amount_billed": "40.00",
            "hs_balance_due": "40.00", "hs_invoice_date": "2025-06-01T00:00:00.000Z",
            "hs_due_date": "2025-07-01T00:00:00.000Z"},
            "associations": [{"to_type": "companies", "to_id": 1000003}, {"to_type": "contacts", "to_id": 2000016}]}')->>'id')::bigint;
INSERT INTO created
SELECT 'line_items', (hubsync_test.mock('create', jsonb_build_object('type', 'line_items',
            'properties', '{"name": "Consulting hour", "quantity": "2", "price": "20.00", "amount": "40.00"}'::jsonb,
            'associations', jsonb_build_array(jsonb_build_object('to_type', 'invoices', 'to_id', id))))->>'id')::bigint
FROM created WHERE entity_type = 'invoices';

-- modified: a contact's email, an invoice's due date.
SELECT hubsync_test.mock('edit', '{"type": "contacts", "id": 2000004, "properties": {"email": "umar@anders.example"}}');
SELECT hubsync_test.mock('edit', '{"type": "invoices", "id": 3000004, "properties": {"hs_due_date": "2023-09-01T00:00:00.000Z"}}');
-- status_changed: an open invoice is voided.
SELECT hubsync_test.mock('edit', '{"type": "invoices", "id": 3000010, "properties": {"hs_invoice_status": "voided"}}');
-- deleted: an invoice and a contact go to the recycle bin.
SELECT hubsync_test.mock('archive', '{"type": "invoices", "id": 3000020}');
SELECT hubsync_test.mock('archive', '{"type": "contacts", "id": 2000030}');
-- line_items_changed: a line item's price; a line item added, one
-- dissociated and one archived.
SELECT hubsync_test.mock('edit', '{"type": "line_items", "id": 4000004, "properties": {"price": "21.99", "amount": "153.93"}}');
CREATE TEMP TABLE added_line AS
SELECT (hubsync_test.mock('create', '{"type": "line_items", "properties": {"name": "Rush fee", "quantity": "1",
            "price": "99.00", "amount": "99.00"}, "associations": [{"to_type": "invoices", "to_id": 3000016}]}')->>'id')::bigint AS id;
SELECT hubsync_test.mock('dissociate', '{"from_type": "invoices", "from_id": 3000005, "to_type": "line_items", "to_id": 4000011}');
SELECT hubsync_test.mock('archive', '{"type": "line_items", "id": 4000022}');
-- associations_changed: the draft invoice moves to another company.
SELECT hubsync_test.mock('dissociate', '{"from_type": "invoices", "from_id": 3000013, "to_type": "companies", "to_id": 1000009}');
SELECT hubsync_test.mock('associate', '{"from_type": "invoices", "from_id": 3000013, "to_type": "companies", "to_id": 1000003}');
-- Untracked: a job title, a lifecycle stage, an invoice title and balance.
SELECT hubsync_test.mock('edit', '{"type": "contacts", "id": 2000006, "properties": {"jobtitle": "COO", "lifecyclestage": "customer"}}');
SELECT hubsync_test.mock('edit', '{"type": "invoices", "id": 3000006, "properties": {"hs_title": "Renamed", "hs_balance_due": "1.00"}}');

\o
CREATE TEMP TABLE run1 AS SELECT * FROM hubsync_full_incremental();

SELECT set_eq(
    $$SELECT entity_type, hubspot_id, action_type, trigger_reason FROM hubsync.quickbooks_transfer_queue$$,
    $$SELECT entity_type, id, 'create' AS a, 'new' AS r FROM created WHERE entity_type <> 'line_items'
      UNION ALL VALUES ('contacts', 2000004::bigint, 'update', 'modified'),
                       ('invoices', 3000004, 'update', 'modified'),
                       ('invoices', 3000010, 'update', 'status_changed'),
                       ('invoices', 3000020, 'delete', 'deleted'),
                       ('contacts', 2000030, 'delete', 'deleted'),
                       ('invoices', 3000002, 'update', 'line_items_changed'),
                       ('invoices', 3000016, 'update', 'line_items_changed'),
                       ('invoices', 3000005, 'update', 'line_items_changed'),
                       ('invoices', 3000011, 'update', 'line_items_changed'),
                       ('invoices', 3000013, 'create', 'associations_changed')$$,
    'exactly the tracked edits made entries, each with its action and reason');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue WHERE status <> 'pending_review' OR version <> 1), 0,
          'all of them pending review at version 1');
SELECT is((SELECT sum(queue_entries)::int FROM run1), 13, 'the run counts 13 queue entries');
SELECT is((SELECT count(*)::int FROM hubsync.change_log), 0, 'every noted change was used');

-- new
SELECT is((SELECT jsonb_array_length(entity_data->'line_items') FROM hubsync.quickbooks_transfer_queue
            WHERE hubspot_id = (SELECT id FROM created WHERE entity_type = 'invoices')), 1,
          'new invoice: its line item, synced before the invoice, is in the snapshot');
SELECT is((SELECT entity_data->'customer'->>'id' FROM hubsync.quickbooks_transfer_queue
            WHERE hubspot_id = (SELECT id FROM created WHERE entity_type = 'invoices')), '1000003',
          'new invoice: its customer is the linked company');
SELECT is((SELECT what_changed FROM hubsync.review_queue WHERE hubspot_id = (SELECT id FROM created WHERE entity_type = 'invoices')),
          'new invoice with 1 line item', 'new invoice: summary');
SELECT is((SELECT changes->'fields'->'name' FROM hubsync.quickbooks_transfer_queue
            WHERE hubspot_id = (SELECT id FROM created WHERE entity_type = 'companies')),
          '{"before": null, "after": "Fjord Freight AS"}'::jsonb, 'new company: every field is new');

-- modified
SELECT is((SELECT changes FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 2000004),
          '{"fields": {"email": {"before": "umar.anders@example.com", "after": "umar@anders.example"}}}'::jsonb,
          'modified contact: the field-level diff');
SELECT is((SELECT what_changed FROM hubsync.review_queue WHERE hubspot_id = 3000004),
          'Due date: 2023-08-06 → 2023-09-01', 'modified invoice: the due date, as a date');

-- status_changed
SELECT is((SELECT changes->'fields'->'hs_invoice_status' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000010),
          '{"before": "open", "after": "voided"}'::jsonb, 'voided invoice: status before and after');
SELECT is((SELECT quickbooks_action FROM hubsync.review_queue WHERE hubspot_id = 3000010), 'void invoice',
          'voided invoice: the reviewer is told it is a void');

-- deleted
SELECT is((SELECT changes FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000020),
          '{"archived": {"before": false, "after": true}}'::jsonb, 'archived invoice: a delete entry');
SELECT is((SELECT what_changed || ' / ' || quickbooks_action FROM hubsync.review_queue WHERE hubspot_id = 2000030),
          'archived in HubSpot / make customer inactive', 'archived contact: the customer is made inactive');

-- line_items_changed
SELECT is((SELECT changes->'line_items'->'changed'->0->'fields' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000002),
          '{"price": {"before": 19.99, "after": 21.99}, "amount": {"before": 139.93, "after": 153.93}}'::jsonb,
          'changed line item: its field-level diff on the invoice''s entry');
SELECT is((SELECT changes->'line_items'->'added'->0->>'id' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000016),
          (SELECT id::text FROM added_line), 'added line item: listed as added');
SELECT is((SELECT changes->'line_items'->'removed'->0->>'id' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000005),
          '4000011', 'dissociated line item: listed as removed');
SELECT is((SELECT changes->'line_items'->'removed'->0->>'id' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000011),
          '4000022', 'archived line item: listed as removed');
SELECT ok((SELECT 'no line items' = ANY (warnings) FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000011),
          'an invoice left without line items is flagged');
SELECT is((SELECT what_changed FROM hubsync.review_queue WHERE hubspot_id = 3000016),
          format('line item %s added: Rush fee, 1 × 99.00 = 99.00', (SELECT id FROM added_line)),
          'added line item: readable summary');
SELECT ok((SELECT warnings LIKE '%line amounts add up to 9009.00 but the amount billed is 8910.00%'
             FROM hubsync.review_queue WHERE hubspot_id = 3000016),
          'a total that no longer matches its lines is flagged');

-- associations_changed
SELECT is((SELECT changes->'companies' FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 3000013),
          '{"before": [1000009], "after": [1000003]}'::jsonb, 'changed company link: before and after');
SELECT is((SELECT what_changed FROM hubsync.review_queue WHERE hubspot_id = 3000013),
          'customer: Quartz Systems Inc (company 1000009) → Müller & Söhne AG (company 1000003); companies: 1000009 → 1000003',
          'changed company link: the reviewer sees the customer change');
SELECT ok((SELECT warnings LIKE 'draft:%' FROM hubsync.review_queue WHERE hubspot_id = 3000013),
          'a draft invoice is flagged as not transferable');

-- Untracked edits reached the mirror but made no entry.
SELECT is((SELECT properties->>'jobtitle' FROM hubsync.contacts WHERE id = 2000006), 'COO', 'untracked contact edit is mirrored');
SELECT is((SELECT properties->>'hs_title' FROM hubsync.invoices WHERE id = 3000006), 'Renamed', 'untracked invoice edit is mirrored');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id IN (2000006, 3000006)), 0,
          'untracked edits make no entry');

-- An analytics counter: synced, not tracked.
INSERT INTO hubsync.sync_properties (entity_type, property_name) VALUES ('contacts', 'hs_analytics_num_visits');
\o /dev/null
SELECT hubsync_reset_watermark('contacts');
\o
CREATE TEMP TABLE queue_before AS SELECT id, version, status FROM hubsync.quickbooks_transfer_queue;
CREATE TEMP TABLE run2 AS SELECT * FROM hubsync_full_incremental();
SELECT ok((SELECT count(*) FROM hubsync.contacts WHERE properties ? 'hs_analytics_num_visits') > 0,
          'the new property was synced into every contact');
\o /dev/null
SELECT hubsync_test.mock('edit', '{"type": "contacts", "id": 2000007, "properties": {"hs_analytics_num_visits": "4242"}}');
SELECT hubsync_test.mock('edit', '{"type": "invoices", "id": 3000004, "properties": {"hs_balance_due": "12.00"}}');
\o
CREATE TEMP TABLE run3 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT properties->>'hs_analytics_num_visits' FROM hubsync.contacts WHERE id = 2000007), '4242',
          'an analytics counter edit is mirrored');
SELECT is((SELECT updated FROM run3 WHERE entity_type = 'contacts'), 1::bigint, 'and counted as an update of the mirror');
SELECT set_eq($$SELECT id, version, status FROM hubsync.quickbooks_transfer_queue$$,
              $$SELECT id, version, status FROM queue_before$$,
              'the counter and an untracked edit of a queued invoice create or touch no entry');
SELECT is((SELECT sum(queue_entries)::int FROM run2) + (SELECT sum(queue_entries)::int FROM run3), 0,
          'neither run reports a queue entry');

-- Starting to track a synced field: no entry for it, but its next change counts.
INSERT INTO hubsync.tracked_fields (entity_type, property_name, label) VALUES ('contacts', 'jobtitle', 'Job title');
SELECT is((SELECT seen_data->'properties'->>'jobtitle' FROM hubsync.transfer_state
            WHERE entity_type = 'contacts' AND hubspot_id = 2000008), 'C:\Users\admin\sales',
          'a newly tracked field is taken to hold its current value');
\o /dev/null
SELECT hubsync_test.mock('edit', '{"type": "contacts", "id": 2000008, "properties": {"jobtitle": "Sales Director"}}');
SELECT hubsync_test.mock('edit', '{"type": "contacts", "id": 2000012, "properties": {"lifecyclestage": "evangelist"}}');
\o
CREATE TEMP TABLE run4 AS SELECT * FROM hubsync_full_incremental();
SELECT is((SELECT changes FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 2000008),
          '{"fields": {"jobtitle": {"before": "C:\\Users\\admin\\sales", "after": "Sales Director"}}}'::jsonb,
          'and its next change is a change');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 2000012), 0,
          'while other untracked edits still make none');
DELETE FROM hubsync.tracked_fields WHERE property_name = 'jobtitle';

SELECT * FROM finish();
