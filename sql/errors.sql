-- Clear errors for bad input, before anything is sent to HubSpot.
\set VERBOSITY default
SELECT * FROM hubsync_incremental('deals');
SELECT hubsync_reset_watermark('Contacts');

SET hubsync.hubspot_token = '';
SELECT * FROM hubsync_incremental('contacts');
RESET hubsync.hubspot_token;

INSERT INTO hubsync.sync_properties (entity_type, property_name) VALUES ('contacts', 'Bad Name');
INSERT INTO hubsync.sync_properties (entity_type, property_name) VALUES ('deals', 'dealname');

-- An unreachable server: a connection error with a hint, after no retries.
SET hubsync.hubspot_url = 'http://127.0.0.1:9';
SET hubsync.max_retries = 0;
DO $$
BEGIN
    PERFORM * FROM hubsync_incremental('companies');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'sqlstate %: %', SQLSTATE, regexp_replace(SQLERRM, ': .*', ': <libcurl message>');
END;
$$;
SELECT entity_type, last_modified_at FROM hubsync.sync_watermarks WHERE entity_type = 'companies';

-- NULL and malformed arguments and settings.
RESET hubsync.hubspot_url;
SELECT * FROM hubsync_incremental(NULL);
SET hubsync.hubspot_url = 'http://127.0.0.1:99999';
SET hubsync.hubspot_url = 'http://[::1';
SET hubsync.hubspot_url = 'http:// 127.0.0.1';
SET hubsync.hubspot_token = E'abc\r\nX-Injected: 1';
DELETE FROM hubsync.sync_properties WHERE entity_type = 'contacts' AND property_name = 'email';
-- The token is masked for every role, superusers included.
SET hubsync.hubspot_token = 'pat-na1-shown-to-nobody';
SHOW hubsync.hubspot_token;
SELECT current_setting('hubsync.hubspot_token');
RESET hubsync.hubspot_token;

-- The shipped tracked fields gate the review and cannot be removed.
DELETE FROM hubsync.tracked_fields WHERE entity_type = 'invoices' AND property_name = 'hs_invoice_status';
UPDATE hubsync.tracked_fields SET property_name = 'hs_title' WHERE entity_type = 'invoices' AND property_name = 'hs_invoice_status';
UPDATE hubsync.tracked_fields SET label = 'Invoice status' WHERE entity_type = 'invoices' AND property_name = 'hs_invoice_status';
-- A rejection needs a reason that is more than white space.
SELECT * FROM hubsync_reject(1, E'\t\n');
