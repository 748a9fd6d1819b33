-- A company customer's billing email comes from the invoice's contact, so
-- a new contact with another email shows in the invoice's own diff.
SELECT hubsync_test.reset('small');
SELECT plan(4);

SELECT * FROM hubsync_full_incremental();

-- An open invoice whose customer is a company and whose contact has an
-- email, and another contact with a different email.
CREATE TEMP TABLE pick AS
SELECT i.id AS invoice_id, a.to_id AS old_contact, k.email AS old_email,
       (SELECT k2.id FROM hubsync.contacts k2
         WHERE k2.email IS NOT NULL AND k2.email <> k.email ORDER BY k2.id LIMIT 1) AS new_contact
FROM hubsync.invoices i
JOIN hubsync.associations a ON a.from_type = 'invoices' AND a.from_id = i.id AND a.to_type = 'contacts'
JOIN hubsync.contacts k ON k.id = a.to_id AND k.email IS NOT NULL
WHERE i.status IN ('open', 'draft')
  AND EXISTS (SELECT 1 FROM hubsync.associations c
               WHERE c.from_type = 'invoices' AND c.from_id = i.id AND c.to_type = 'companies')
ORDER BY i.id LIMIT 1;
SELECT isnt((SELECT invoice_id FROM pick), NULL, 'an open invoice with a company customer exists');

SELECT hubsync_test.mock('dissociate', jsonb_build_object('from_type', 'invoices', 'from_id', invoice_id,
                                                          'to_type', 'contacts', 'to_id', old_contact)) FROM pick;
SELECT hubsync_test.mock('associate', jsonb_build_object('from_type', 'invoices', 'from_id', invoice_id,
                                                         'to_type', 'contacts', 'to_id', new_contact, 'type_id', 177)) FROM pick;
SELECT * FROM hubsync_full_incremental();

SELECT is((SELECT changes->'billing_email'->>'before' FROM hubsync.quickbooks_transfer_queue, pick
            WHERE entity_type = 'invoices' AND hubspot_id = invoice_id),
          (SELECT old_email FROM pick), 'the diff has the old billing email');
SELECT is((SELECT changes->'billing_email'->>'after' FROM hubsync.quickbooks_transfer_queue, pick
            WHERE entity_type = 'invoices' AND hubspot_id = invoice_id),
          (SELECT email FROM hubsync.contacts WHERE id = (SELECT new_contact FROM pick)), 'the diff has the new billing email');
SELECT ok((SELECT what_changed LIKE '%billing email: %' FROM hubsync.review_queue, pick
            WHERE entity_type = 'invoices' AND hubspot_id = invoice_id), 'review_queue shows the billing email change');

SELECT * FROM finish();
