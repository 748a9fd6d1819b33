-- hubsync_reviewer reads the review views and approves or rejects,
-- nothing else; hubsync_admin syncs and configures, but does not approve;
-- the audit is append-only for everyone.
SELECT hubsync_test.reset('small');
SELECT plan(38);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hs_test_alice') THEN
        CREATE ROLE hs_test_alice LOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hs_test_admin') THEN
        CREATE ROLE hs_test_admin LOGIN;
    END IF;
END;
$$;
GRANT hubsync_reviewer TO hs_test_alice;
GRANT hubsync_admin TO hs_test_admin;

SELECT ok((SELECT NOT rolcanlogin AND NOT rolsuper FROM pg_roles WHERE rolname = 'hubsync_reviewer'), 'hubsync_reviewer is a NOLOGIN role');
SELECT ok((SELECT NOT rolcanlogin AND NOT rolsuper FROM pg_roles WHERE rolname = 'hubsync_admin'), 'hubsync_admin is a NOLOGIN role');
SELECT is((SELECT count(*)::int FROM unnest(ARRAY['hubsync_full_incremental()', 'hubsync_incremental(text)',
                                                  'hubsync_reconcile(text)', 'hubsync_reset_watermark(text)',
                                                  'hubsync_run(text)']) AS f
            WHERE has_function_privilege('public', f, 'EXECUTE')), 0,
          'PUBLIC cannot execute the sync entry points');
SELECT is((SELECT count(*)::int FROM pg_proc p
            WHERE p.proname IN ('hubsync_full_incremental', 'hubsync_incremental', 'hubsync_reconcile',
                                'hubsync_approve', 'hubsync_reject', 'hubsync_approve_bulk', 'hubsync_reject_bulk',
                                'hubsync_enqueue_existing', 'hubsync_mark_transferred', 'hubsync_mark_failed', '_flush_changes')
              AND (NOT p.prosecdef OR NOT 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig))), 0,
          'the functions that cross the privilege line are SECURITY DEFINER with a fixed search_path');

-- The admin: runs syncs, changes configuration.
SET SESSION AUTHORIZATION hs_test_admin;
SELECT lives_ok('CREATE TEMP TABLE admin_run AS SELECT * FROM hubsync_full_incremental()', 'the admin runs hubsync_full_incremental()');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT count(*)::int FROM admin_run WHERE status = 'ok'), 4, 'and it synced all four types');
SELECT FROM hubsync_test.mock('edit', '{"type": "companies", "id": 1000001, "properties": {"name": "Summit Capital AG"}}');
SET SESSION AUTHORIZATION hs_test_admin;
CALL hubsync_run();
SELECT lives_ok($$INSERT INTO hubsync.tracked_fields (entity_type, property_name, label) VALUES ('contacts', 'jobtitle', 'Job title')$$,
                'the admin adds a tracked field');
SELECT lives_ok($$DELETE FROM hubsync.tracked_fields WHERE property_name = 'jobtitle'$$, 'and removes it');
SELECT lives_ok($$SELECT hubsync_reset_watermark('contacts')$$, 'the admin resets a watermark');
SELECT is((SELECT count(*)::int FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 1000001), 1,
          'CALL hubsync_run() by the admin queued the edit');
SELECT throws_ok(format('SELECT hubsync_approve(%s)', (SELECT id FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 1000001)),
                 '42501', NULL, 'the admin cannot approve');
SELECT throws_ok($$UPDATE hubsync.quickbooks_transfer_queue SET status = 'approved'$$, '42501', NULL,
                 'nor write the queue directly');
SELECT throws_ok($$SELECT current_setting('hubsync.hubspot_token')$$, '42501', NULL, 'nor read the token');
SELECT id AS entry FROM hubsync.quickbooks_transfer_queue WHERE hubspot_id = 1000001 \gset
RESET SESSION AUTHORIZATION;

-- The reviewer.
SET SESSION AUTHORIZATION hs_test_alice;
SELECT is((SELECT count(*)::int FROM hubsync.review_queue), 1, 'the reviewer reads review_queue');
SELECT is((SELECT pending_review FROM hubsync.queue_summary WHERE entity_type = 'all'), 1::bigint, 'and queue_summary');
SELECT ok((SELECT count(*) FROM hubsync.queue_history) > 0, 'and queue_history');
SELECT throws_ok($$UPDATE hubsync.quickbooks_transfer_queue SET status = 'approved'$$, '42501',
                 'permission denied for table quickbooks_transfer_queue', 'the reviewer cannot UPDATE the queue table');
SELECT throws_ok($$INSERT INTO hubsync.queue_events (queue_id, to_status, version, note) VALUES (1, 'approved', 1, 'x')$$,
                 '42501', NULL, 'nor write the audit');
SELECT throws_ok('SELECT count(*) FROM hubsync.quickbooks_transfer_queue', '42501', NULL, 'nor read the queue table itself');
SELECT throws_ok('SELECT count(*) FROM hubsync.invoices', '42501', NULL, 'nor the mirror');
SELECT throws_ok('SELECT * FROM hubsync_full_incremental()', '42501',
                 'permission denied for function hubsync_full_incremental', 'the reviewer cannot run a sync');
SELECT throws_ok('CALL hubsync_run()', '42501', NULL, 'nor the committing sync procedure');
SELECT throws_ok($$SELECT hubsync_reset_watermark('contacts')$$, '42501', NULL, 'nor reset a watermark');
SELECT throws_ok('SELECT hubsync._flush_changes()', '42501', NULL, 'nor flush changes');
SELECT throws_ok('SELECT * FROM hubsync_enqueue_existing()', '42501', NULL, 'nor enqueue records');
SELECT throws_ok(format('SELECT hubsync_mark_transferred(%s, 1)', :entry), '42501', NULL, 'nor mark a transfer');
SELECT throws_ok($$SELECT current_setting('hubsync.hubspot_token')$$, '42501', NULL, 'the reviewer cannot read the token');
SELECT throws_ok($$INSERT INTO hubsync.tracked_fields (entity_type, property_name, label) VALUES ('contacts', 'jobtitle', 'x')$$,
                 '42501', NULL, 'nor change which fields are tracked');
SELECT throws_ok($$SET hubsync.first_load = 'enqueue'$$, '42501', NULL, 'nor the first-load setting');
SELECT is((SELECT status FROM hubsync_approve(:entry, 1)), 'approved', 'the reviewer approves');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT approved_by FROM hubsync.quickbooks_transfer_queue WHERE id = :entry), 'hs_test_alice', 'as herself');

-- Append-only audit, even for a superuser.
SELECT throws_ok('UPDATE hubsync.queue_events SET note = $$edited$$', '42501', 'hubsync.queue_events is append-only',
                 'a superuser cannot UPDATE the audit');
SELECT throws_ok('DELETE FROM hubsync.queue_events', '42501', 'hubsync.queue_events is append-only',
                 'a superuser cannot DELETE from the audit');
SELECT ok((SELECT count(*) FROM hubsync.queue_events WHERE queue_id = :entry) = 2, 'the audit is intact');
SELECT throws_ok(format('DELETE FROM hubsync.quickbooks_transfer_queue WHERE id = %s', :entry), '23503', NULL,
                 'an audited entry cannot be deleted');
SELECT is((SELECT count(*)::int FROM pg_class c
            WHERE c.relnamespace = 'hubsync'::regnamespace AND c.relkind IN ('r', 'v')
              AND (has_table_privilege('hubsync_reviewer', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
                   OR has_table_privilege('hubsync_admin', c.oid, 'TRUNCATE'))), 0,
          'the reviewer may write no table of schema hubsync, and the admin may truncate none');
SELECT is((SELECT count(*)::int FROM pg_class c
            WHERE c.relnamespace = 'hubsync'::regnamespace AND c.relkind = 'r'
              AND has_table_privilege('hubsync_reviewer', c.oid, 'SELECT')), 0,
          'the reviewer can read no table of schema hubsync');
SELECT ok(has_table_privilege('hubsync_reviewer', 'hubsync.review_queue', 'SELECT')
          AND has_table_privilege('hubsync_reviewer', 'hubsync.queue_summary', 'SELECT')
          AND has_table_privilege('hubsync_reviewer', 'hubsync.queue_history', 'SELECT'),
          'only views: review_queue, queue_summary, queue_history');

SELECT * FROM finish();
