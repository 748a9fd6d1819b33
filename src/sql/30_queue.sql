-- hubsync--1.0.sql, part 30: change detection and the QuickBooks transfer queue.

-- Turn the change_log rows of this transaction into queue entries.
CREATE FUNCTION hubsync._flush_changes() RETURNS int
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 0 $$;
