-- hubsync--1.0.sql, part 60: roles and privileges.
--
--   hubsync_reviewer  reads hubsync.review_queue, hubsync.queue_summary and
--                     hubsync.queue_history, and calls hubsync_approve,
--                     hubsync_reject and their bulk forms.  Nothing else: no
--                     table, no sync, no configuration, no token.
--   hubsync_admin     runs syncs, changes the configuration tables, reads
--                     every table, enqueues existing records and records
--                     transfers.  It cannot approve or reject, nor write the
--                     queue tables directly (grant hubsync_reviewer as well
--                     to someone who should do both).
--
-- Both are NOLOGIN group roles, created only if missing (roles belong to
-- the cluster, so a second database reuses them); grant them to login
-- roles.  Approvals are recorded under session_user, so every reviewer
-- should log in as a role of their own.
--
-- The sync functions run as the extension owner (SECURITY DEFINER, fixed
-- search_path; every query in them is schema-qualified).  The procedure
-- hubsync_run() cannot: PostgreSQL does not let a SECURITY DEFINER
-- procedure commit, and it commits after every page.  It runs as its
-- caller, which is why hubsync_admin may write the mirror, sync-state and
-- change_log tables.  The queue tables are written only by SECURITY
-- DEFINER functions; hubsync.queue_events also refuses UPDATE and DELETE
-- from anyone, superusers included, by trigger.

-- The roles themselves are created at the start of part 30, so that every
-- later part can grant to them.

-- The sync entry points: owner's rights, fixed search_path, admins only.
ALTER FUNCTION @extschema@.hubsync_incremental(text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.hubsync_full_incremental() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.hubsync_reconcile(text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.hubsync_reset_watermark(text) SECURITY DEFINER;

REVOKE EXECUTE ON FUNCTION
    @extschema@.hubsync_incremental(text),
    @extschema@.hubsync_full_incremental(),
    @extschema@.hubsync_reconcile(text),
    @extschema@.hubsync_reset_watermark(text),
    @extschema@.hubsync_enqueue_existing(text),
    @extschema@.hubsync_mark_transferred(bigint, int, jsonb),
    @extschema@.hubsync_mark_failed(bigint, int, text, jsonb),
    @extschema@.hubsync_approve(bigint, int),
    @extschema@.hubsync_reject(bigint, text, int),
    @extschema@.hubsync_approve_bulk(text, text, bigint[]),
    @extschema@.hubsync_reject_bulk(text, text, text, bigint[])
FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE @extschema@.hubsync_run(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.hubsync_progress() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.hubsync_progress() TO hubsync_admin;

GRANT EXECUTE ON FUNCTION
    @extschema@.hubsync_incremental(text),
    @extschema@.hubsync_full_incremental(),
    @extschema@.hubsync_reconcile(text),
    @extschema@.hubsync_reset_watermark(text),
    @extschema@.hubsync_enqueue_existing(text),
    @extschema@.hubsync_mark_transferred(bigint, int, jsonb),
    @extschema@.hubsync_mark_failed(bigint, int, text, jsonb)
TO hubsync_admin;
GRANT EXECUTE ON PROCEDURE @extschema@.hubsync_run(text) TO hubsync_admin;

GRANT EXECUTE ON FUNCTION
    @extschema@.hubsync_approve(bigint, int),
    @extschema@.hubsync_reject(bigint, text, int),
    @extschema@.hubsync_approve_bulk(text, text, bigint[]),
    @extschema@.hubsync_reject_bulk(text, text, text, bigint[])
TO hubsync_reviewer;

-- Of the functions in schema hubsync only the SECURITY DEFINER flush is
-- guarded: every other one runs with its caller's privileges, so calling
-- it directly gains nothing (a reviewer has no table privilege to use).
REVOKE EXECUTE ON FUNCTION hubsync._flush_changes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hubsync._flush_changes() TO hubsync_admin;

GRANT USAGE ON SCHEMA hubsync TO hubsync_reviewer, hubsync_admin;

GRANT SELECT ON hubsync.review_queue, hubsync.queue_summary, hubsync.queue_history TO hubsync_reviewer;

GRANT SELECT ON ALL TABLES IN SCHEMA hubsync TO hubsync_admin;
GRANT INSERT, UPDATE, DELETE ON hubsync.tracked_fields, hubsync.sync_properties TO hubsync_admin;
-- What hubsync_run() writes as its caller.
GRANT INSERT, UPDATE, DELETE ON
    hubsync.contacts, hubsync.companies, hubsync.invoices, hubsync.line_items,
    hubsync.associations, hubsync.change_log, hubsync.sync_runs, hubsync.sync_watermarks
TO hubsync_admin;

-- pg_dump keeps what people decided and configured: the queue, its audit,
-- the books' state, and user-added tracked fields and synced properties
-- (a restored user tracked field needs its synced property).
SELECT pg_catalog.pg_extension_config_dump('hubsync.quickbooks_transfer_queue', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hubsync.quickbooks_transfer_queue', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('hubsync.queue_events', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('hubsync.queue_events', 'id'), '');
SELECT pg_catalog.pg_extension_config_dump('hubsync.transfer_state', '');
SELECT pg_catalog.pg_extension_config_dump('hubsync.tracked_fields', 'WHERE NOT is_default');
SELECT pg_catalog.pg_extension_config_dump('hubsync.sync_properties', 'WHERE NOT is_default');
