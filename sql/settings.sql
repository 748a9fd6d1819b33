-- Settings: validation, and who may read or change what.
SELECT boot_val FROM pg_settings WHERE name = 'hubsync.hubspot_url';
SHOW hubsync.search_overlap;
SHOW hubsync.request_timeout;

SET hubsync.hubspot_url = 'ftp://api.hubapi.com';
SET hubsync.hubspot_url = 'https://';
SET hubsync.hubspot_url = 'https://user:secret@api.hubapi.com';
SET hubsync.hubspot_url = 'https://api.hubapi.com/?x=1';
SET hubsync.first_load = 'everything';
SET hubsync.request_timeout = 0;
SET hubsync.no_such_setting = 1;

-- An ordinary role can neither read the token nor redirect it.
CREATE ROLE hubsync_settings_user;
SET ROLE hubsync_settings_user;
SHOW hubsync.hubspot_token;
SELECT current_setting('hubsync.hubspot_token');
SELECT count(*) FROM pg_settings WHERE name = 'hubsync.hubspot_token';
SET hubsync.hubspot_url = 'https://attacker.invalid';
SET hubsync.hubspot_token = 'stolen';
-- Tuning settings only change the caller's own session.
SET hubsync.request_timeout = '5s';
SHOW hubsync.request_timeout;
RESET ROLE;
DROP ROLE hubsync_settings_user;

-- Monitoring roles may read every setting, but the token only as a mask.
CREATE ROLE hubsync_settings_monitor IN ROLE pg_monitor;
SET ROLE hubsync_settings_monitor;
SHOW hubsync.hubspot_token;
SELECT current_setting('hubsync.hubspot_token');
RESET ROLE;
DROP ROLE hubsync_settings_monitor;
