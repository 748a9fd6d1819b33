-- hubsync--1.0.sql, part 40: the sync entry points and progress.
--
-- These functions are created in the extension's schema (public unless
-- CREATE EXTENSION named another), so they can be called unqualified.

CREATE FUNCTION @extschema@.hubsync_incremental(entity_type text)
RETURNS TABLE (entity_type text, status text, fetched bigint, inserted bigint,
               updated bigint, unchanged bigint, archived bigint, deleted bigint,
               queue_entries bigint, duration interval, watermark timestamptz)
AS 'MODULE_PATHNAME', 'hubsync_incremental'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.hubsync_incremental(text) IS 'Sync one HubSpot object type (companies, contacts, line_items or invoices) in the current transaction';

CREATE FUNCTION @extschema@.hubsync_full_incremental()
RETURNS TABLE (entity_type text, status text, fetched bigint, inserted bigint,
               updated bigint, unchanged bigint, archived bigint, deleted bigint,
               queue_entries bigint, duration interval, watermark timestamptz)
AS 'MODULE_PATHNAME', 'hubsync_full_incremental'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.hubsync_full_incremental() IS 'Sync every HubSpot object type and its associations in the current transaction: a full load the first time, changes since the watermark afterwards';

CREATE FUNCTION @extschema@.hubsync_reconcile(entity_type text DEFAULT NULL)
RETURNS TABLE (entity_type text, status text, fetched bigint, inserted bigint,
               updated bigint, unchanged bigint, archived bigint, deleted bigint,
               queue_entries bigint, duration interval, watermark timestamptz)
AS 'MODULE_PATHNAME', 'hubsync_reconcile'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.hubsync_reconcile(text) IS 'Sync one or every object type and also compare all record ids and associations with HubSpot now, to find permanent deletions';

CREATE PROCEDURE @extschema@.hubsync_run(entity_type text DEFAULT NULL)
AS 'MODULE_PATHNAME', 'hubsync_run'
LANGUAGE C;
COMMENT ON PROCEDURE @extschema@.hubsync_run(text) IS 'Sync one or every object type, committing after each page so that a long load is resumable (used by the pg_cron job)';

-- Start the next run of a type from scratch: it reads every record again
-- (unchanged ones are not updates) and keeps the mirror in the meantime.
-- A run in progress would write its own watermark over the reset, so the
-- reset takes the run lock of the type (the advisory lock the C code
-- takes: classid 1213419075, "HSNC", and the type's sync_order) and
-- fails while a run holds it.
CREATE FUNCTION @extschema@.hubsync_reset_watermark(entity_type text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_order int;
BEGIN
    SELECT o.sync_order INTO v_order FROM hubsync.object_types o WHERE o.entity_type = $1;
    IF v_order IS NULL THEN
        RAISE EXCEPTION 'unknown HubSpot object type "%"', $1
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of: companies, contacts, line_items, invoices.';
    END IF;
    IF NOT pg_try_advisory_xact_lock(1213419075, v_order) THEN
        RAISE EXCEPTION 'a sync of % is in progress', $1
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it to finish (see hubsync.sync_progress), or cancel it, then reset the watermark.';
    END IF;
    UPDATE hubsync.sync_watermarks w
       SET last_modified_at = NULL, last_modified_id = NULL, indexed_before = NULL,
           updated_at = now()
     WHERE w.entity_type = $1;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_reset_watermark(text) IS 'Make the next run of one object type read every record again';

CREATE FUNCTION @extschema@.hubsync_progress()
RETURNS TABLE (entity_type text, pid int, phase text, started_at timestamptz,
               updated_at timestamptz, pages bigint, fetched bigint, inserted bigint,
               updated bigint, http_requests bigint, watermark timestamptz,
               rate_limited bigint)
AS 'MODULE_PATHNAME', 'hubsync_progress'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.hubsync_progress() IS 'Progress of the running sync of each object type, or of its last run, from shared memory (needs hubsync in shared_preload_libraries)';

CREATE VIEW hubsync.sync_progress AS
    SELECT * FROM @extschema@.hubsync_progress();
COMMENT ON VIEW hubsync.sync_progress IS 'Live progress of running syncs, updated after every page, visible from any session';
COMMENT ON COLUMN hubsync.sync_progress.entity_type IS 'Object type';
COMMENT ON COLUMN hubsync.sync_progress.pid IS 'Backend running the sync; NULL once the run has ended';
COMMENT ON COLUMN hubsync.sync_progress.phase IS 'starting, search, archive scan, association refresh, reconcile, association sweep, done, failed, or interrupted (its backend died)';
COMMENT ON COLUMN hubsync.sync_progress.started_at IS 'When the run started';
COMMENT ON COLUMN hubsync.sync_progress.updated_at IS 'When the run last reported progress';
COMMENT ON COLUMN hubsync.sync_progress.pages IS 'Search pages written so far';
COMMENT ON COLUMN hubsync.sync_progress.fetched IS 'Distinct records read from search so far';
COMMENT ON COLUMN hubsync.sync_progress.inserted IS 'New rows written so far';
COMMENT ON COLUMN hubsync.sync_progress.updated IS 'Changed rows written so far';
COMMENT ON COLUMN hubsync.sync_progress.http_requests IS 'HubSpot requests sent so far, retries included';
COMMENT ON COLUMN hubsync.sync_progress.watermark IS 'Last-modified time reached';
COMMENT ON COLUMN hubsync.sync_progress.rate_limited IS 'HTTP 429 responses received so far';
