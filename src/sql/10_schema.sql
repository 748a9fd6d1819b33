-- hubsync--1.0.sql, part 10: mirror tables, configuration and sync state.
--
-- The install script is assembled by the Makefile from src/sql/*.sql in
-- name order.  Objects that users touch by name live in schema hubsync;
-- the SQL-callable entry points (hubsync_full_incremental() and friends)
-- are created in the extension's own schema, public unless CREATE
-- EXTENSION names another, so that they can be called unqualified.

\echo Use "CREATE EXTENSION hubsync" to load this file. \quit

CREATE SCHEMA hubsync;
COMMENT ON SCHEMA hubsync IS 'HubSpot mirror, sync state and QuickBooks transfer queue';

-- Object types and the HubSpot facts the sync engine needs for each.
CREATE TABLE hubsync.object_types (
    entity_type       text PRIMARY KEY,
    object_type_id    text NOT NULL UNIQUE,
    modified_property text NOT NULL,
    sync_order        int  NOT NULL UNIQUE,
    mergeable         boolean NOT NULL
);
COMMENT ON TABLE hubsync.object_types IS 'HubSpot object types that hubsync mirrors (fixed)';
COMMENT ON COLUMN hubsync.object_types.modified_property IS 'HubSpot property holding the last-modified time: lastmodifieddate for contacts, hs_lastmodifieddate for the others';
COMMENT ON COLUMN hubsync.object_types.sync_order IS 'Order in which hubsync_full_incremental() syncs the types: children and customers before the invoices that refer to them';
COMMENT ON COLUMN hubsync.object_types.mergeable IS 'Whether HubSpot can merge two records of this type into a new one (listing the old ids in hs_merged_object_ids)';

INSERT INTO hubsync.object_types VALUES
    ('companies',  '0-2',  'hs_lastmodifieddate', 1, true),
    ('contacts',   '0-1',  'lastmodifieddate',    2, true),
    ('line_items', '0-8',  'hs_lastmodifieddate', 3, false),
    ('invoices',   '0-53', 'hs_lastmodifieddate', 4, false);

-- Which parent -> child associations are read, in the direction HubSpot
-- is asked for them.
CREATE TABLE hubsync.association_types (
    from_type text NOT NULL REFERENCES hubsync.object_types,
    to_type   text NOT NULL REFERENCES hubsync.object_types,
    PRIMARY KEY (from_type, to_type)
);
COMMENT ON TABLE hubsync.association_types IS 'Association directions that hubsync reads from the parent record (fixed)';

INSERT INTO hubsync.association_types VALUES
    ('invoices', 'line_items'),
    ('invoices', 'contacts'),
    ('invoices', 'companies'),
    ('contacts', 'companies');

-- Properties requested from HubSpot for each type.  The rows marked
-- is_default are the ones the typed columns need; users may INSERT more
-- (and DELETE their own) without recompiling.  The id, created and
-- last-modified properties, and hs_merged_object_ids for mergeable types,
-- are always requested in addition.
CREATE TABLE hubsync.sync_properties (
    entity_type   text NOT NULL REFERENCES hubsync.object_types,
    property_name text NOT NULL,
    is_default    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (entity_type, property_name)
);
COMMENT ON TABLE hubsync.sync_properties IS 'HubSpot properties requested per object type; add rows to sync more properties';
COMMENT ON COLUMN hubsync.sync_properties.property_name IS 'HubSpot internal property name (lower case letters, digits and underscores)';
COMMENT ON COLUMN hubsync.sync_properties.is_default IS 'Shipped with hubsync; the typed columns depend on these rows';

-- Reject a row with a message that states what is wrong and what is valid,
-- instead of a bare constraint violation.  Names end up in search request
-- bodies and list URLs, which is why only HubSpot's own name alphabet is
-- accepted.
CREATE FUNCTION hubsync._check_sync_property() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM hubsync.object_types WHERE entity_type = NEW.entity_type) THEN
        RAISE EXCEPTION 'unknown HubSpot object type "%"', NEW.entity_type
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of: companies, contacts, line_items, invoices.';
    END IF;
    IF NEW.property_name !~ '^[a-z0-9_]{1,100}$' THEN
        RAISE EXCEPTION 'invalid HubSpot property name "%"', NEW.property_name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use the internal name (lower case letters, digits and underscores), as GET /crm/v3/properties/<object type> lists it.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER sync_properties_check
    BEFORE INSERT OR UPDATE ON hubsync.sync_properties
    FOR EACH ROW EXECUTE FUNCTION hubsync._check_sync_property();

-- The shipped rows feed the typed columns; deleting one would leave its
-- column NULL on every row that syncs afterwards.
CREATE FUNCTION hubsync._keep_default_property() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.is_default THEN
        RAISE EXCEPTION 'property "%" of % is required by hubsync', OLD.property_name, OLD.entity_type
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Only rows added by users (is_default = false) can be deleted.';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER sync_properties_keep_defaults
    BEFORE DELETE ON hubsync.sync_properties
    FOR EACH ROW EXECUTE FUNCTION hubsync._keep_default_property();

INSERT INTO hubsync.sync_properties (entity_type, property_name, is_default)
SELECT t, p, true
FROM (VALUES
    ('contacts',   ARRAY['email', 'firstname', 'lastname', 'phone', 'company',
                         'jobtitle', 'lifecyclestage']),
    ('companies',  ARRAY['name', 'domain', 'phone', 'city', 'country']),
    ('invoices',   ARRAY['hs_number', 'hs_invoice_status', 'hs_currency',
                         'hs_amount_billed', 'hs_balance_due', 'hs_invoice_date',
                         'hs_due_date', 'hs_title']),
    ('line_items', ARRAY['name', 'hs_sku', 'quantity', 'price', 'amount',
                         'hs_product_id', 'discount'])
) AS d(t, props), unnest(props) AS p;

-- Conversions used by the typed columns.  HubSpot sends every property as
-- a string; a value that does not parse becomes NULL in the typed column
-- (the raw string stays in properties, and the sync counts a warning).

CREATE FUNCTION hubsync.to_numeric(value text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN value ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?\s*$'
    THEN value::numeric
END;
COMMENT ON FUNCTION hubsync.to_numeric(text) IS 'HubSpot number string to numeric; NULL for empty or unparseable values';

-- Dates arrive as ISO-8601 date-times in UTC, as plain dates, or (in data
-- written by careless integrations) as epoch milliseconds or epoch seconds.
-- The calendar date is taken in UTC.  Each branch depends only on its
-- input, never on the session's TimeZone, which is what makes the function
-- safe to declare IMMUTABLE for a generated column.
CREATE FUNCTION hubsync.to_date(value text) RETURNS date
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF value ~ '^[0-9]{13}$' THEN
        RETURN (pg_catalog.to_timestamp(value::bigint / 1000.0) AT TIME ZONE 'UTC')::date;
    ELSIF value ~ '^[0-9]{9,10}$' THEN
        RETURN (pg_catalog.to_timestamp(value::bigint) AT TIME ZONE 'UTC')::date;
    ELSIF value ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN
        RETURN value::date;
    ELSIF value ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9:.]+(Z|[+-][0-9]{2}(:?[0-9]{2})?)$' THEN
        RETURN (value::timestamptz AT TIME ZONE 'UTC')::date;
    END IF;
    RETURN NULL;
EXCEPTION
    WHEN datetime_field_overflow OR invalid_datetime_format OR numeric_value_out_of_range THEN
        RETURN NULL;
END;
$$;
COMMENT ON FUNCTION hubsync.to_date(text) IS 'HubSpot date or date-time string (ISO-8601, epoch ms or epoch s) to its UTC calendar date; NULL when unparseable';

CREATE FUNCTION hubsync.to_text(value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN NULLIF(value, '');
COMMENT ON FUNCTION hubsync.to_text(text) IS 'HubSpot string to text, with the empty string as NULL';

-- Mirror tables.  Every table has the same core columns, which the sync
-- writes; the typed columns are generated from properties, so they can
-- never disagree with what HubSpot sent.

CREATE TABLE hubsync.contacts (
    id          bigint PRIMARY KEY,
    properties  jsonb NOT NULL,
    created_at  timestamptz,
    updated_at  timestamptz,
    archived    boolean NOT NULL DEFAULT false,
    archived_at timestamptz,
    synced_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    email       text GENERATED ALWAYS AS (hubsync.to_text(properties->>'email')) STORED,
    first_name  text GENERATED ALWAYS AS (hubsync.to_text(properties->>'firstname')) STORED,
    last_name   text GENERATED ALWAYS AS (hubsync.to_text(properties->>'lastname')) STORED
);
CREATE INDEX contacts_email_idx ON hubsync.contacts (pg_catalog.lower(email));

CREATE TABLE hubsync.companies (
    id          bigint PRIMARY KEY,
    properties  jsonb NOT NULL,
    created_at  timestamptz,
    updated_at  timestamptz,
    archived    boolean NOT NULL DEFAULT false,
    archived_at timestamptz,
    synced_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    name        text GENERATED ALWAYS AS (hubsync.to_text(properties->>'name')) STORED,
    domain      text GENERATED ALWAYS AS (hubsync.to_text(properties->>'domain')) STORED
);
CREATE INDEX companies_name_idx ON hubsync.companies (pg_catalog.lower(name));

CREATE TABLE hubsync.invoices (
    id            bigint PRIMARY KEY,
    properties    jsonb NOT NULL,
    created_at    timestamptz,
    updated_at    timestamptz,
    archived      boolean NOT NULL DEFAULT false,
    archived_at   timestamptz,
    synced_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    number        text GENERATED ALWAYS AS (hubsync.to_text(properties->>'hs_number')) STORED,
    status        text GENERATED ALWAYS AS (hubsync.to_text(properties->>'hs_invoice_status')) STORED,
    currency      text GENERATED ALWAYS AS (hubsync.to_text(properties->>'hs_currency')) STORED,
    amount_billed numeric GENERATED ALWAYS AS (hubsync.to_numeric(properties->>'hs_amount_billed')) STORED,
    balance_due   numeric GENERATED ALWAYS AS (hubsync.to_numeric(properties->>'hs_balance_due')) STORED,
    invoice_date  date GENERATED ALWAYS AS (hubsync.to_date(properties->>'hs_invoice_date')) STORED,
    due_date      date GENERATED ALWAYS AS (hubsync.to_date(properties->>'hs_due_date')) STORED
);
CREATE INDEX invoices_number_idx ON hubsync.invoices (number);
CREATE INDEX invoices_status_idx ON hubsync.invoices (status);

CREATE TABLE hubsync.line_items (
    id          bigint PRIMARY KEY,
    properties  jsonb NOT NULL,
    created_at  timestamptz,
    updated_at  timestamptz,
    archived    boolean NOT NULL DEFAULT false,
    archived_at timestamptz,
    synced_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    name        text GENERATED ALWAYS AS (hubsync.to_text(properties->>'name')) STORED,
    sku         text GENERATED ALWAYS AS (hubsync.to_text(properties->>'hs_sku')) STORED,
    quantity    numeric GENERATED ALWAYS AS (hubsync.to_numeric(properties->>'quantity')) STORED,
    price       numeric GENERATED ALWAYS AS (hubsync.to_numeric(properties->>'price')) STORED,
    amount      numeric GENERATED ALWAYS AS (hubsync.to_numeric(properties->>'amount')) STORED
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['contacts', 'companies', 'invoices', 'line_items'] LOOP
        EXECUTE format($c$
            COMMENT ON TABLE hubsync.%1$I IS 'HubSpot %1$s, one row per record id, as of the last sync';
            COMMENT ON COLUMN hubsync.%1$I.id IS 'HubSpot record id (hs_object_id)';
            COMMENT ON COLUMN hubsync.%1$I.properties IS 'Every synced property exactly as HubSpot returned it (all values are strings or null)';
            COMMENT ON COLUMN hubsync.%1$I.created_at IS 'HubSpot createdAt';
            COMMENT ON COLUMN hubsync.%1$I.updated_at IS 'HubSpot updatedAt (the last-modified time)';
            COMMENT ON COLUMN hubsync.%1$I.archived IS 'True once the record is in HubSpot''s recycle bin';
            COMMENT ON COLUMN hubsync.%1$I.archived_at IS 'HubSpot archivedAt, when archived';
            COMMENT ON COLUMN hubsync.%1$I.synced_at IS 'When hubsync last wrote this row';
            $c$, t);
    END LOOP;
END;
$$;

CREATE TABLE hubsync.associations (
    from_type text   NOT NULL REFERENCES hubsync.object_types,
    from_id   bigint NOT NULL,
    to_type   text   NOT NULL REFERENCES hubsync.object_types,
    to_id     bigint NOT NULL,
    type_id   int    NOT NULL,
    category  text   NOT NULL,
    label     text,
    synced_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (from_type, from_id, to_type, to_id, category, type_id)
);
CREATE INDEX associations_to_idx ON hubsync.associations (to_type, to_id);
COMMENT ON TABLE hubsync.associations IS 'HubSpot v4 associations, one row per (from, to, association type), stored in the direction read from the parent';
COMMENT ON COLUMN hubsync.associations.type_id IS 'HubSpot association type id, e.g. 409 invoice to line item, 177 invoice to contact, 179 invoice to company, 279 contact to company';
COMMENT ON COLUMN hubsync.associations.category IS 'HUBSPOT_DEFINED, USER_DEFINED or INTEGRATOR_DEFINED';
COMMENT ON COLUMN hubsync.associations.label IS 'Association label; NULL for the unlabeled default type';

-- Sync state, one row per object type.  The cursor (last_modified_at,
-- last_modified_id) says that every record ordered at or before it by
-- (last-modified time, id) has been written.  indexed_before means that
-- every record last modified before that instant was already visible to
-- HubSpot's search index when it was read; runs re-read from there, which
-- is how records that the index showed late are picked up.
CREATE TABLE hubsync.sync_watermarks (
    entity_type       text PRIMARY KEY REFERENCES hubsync.object_types,
    last_sync_at      timestamptz,
    last_modified_at  timestamptz,
    last_modified_id  bigint,
    indexed_before    timestamptz,
    entity_count      bigint NOT NULL DEFAULT 0,
    last_archive_scan_at timestamptz,
    last_reconcile_at timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE hubsync.sync_watermarks IS 'Incremental sync position per object type; moved only in the transaction that writes the rows it covers';
COMMENT ON COLUMN hubsync.sync_watermarks.last_sync_at IS 'Start of the last run that read every change up to its start';
COMMENT ON COLUMN hubsync.sync_watermarks.last_modified_at IS 'High-water mark: greatest HubSpot last-modified time written';
COMMENT ON COLUMN hubsync.sync_watermarks.last_modified_id IS 'Tie-break: greatest record id written among records modified at last_modified_at (0 when none yet)';
COMMENT ON COLUMN hubsync.sync_watermarks.indexed_before IS 'Every record last modified before this time was visible to search when read; the next run re-reads from here';
COMMENT ON COLUMN hubsync.sync_watermarks.entity_count IS 'Rows stored for this type, archived ones included';
COMMENT ON COLUMN hubsync.sync_watermarks.last_archive_scan_at IS 'When the recycle bin was last compared with the mirror';
COMMENT ON COLUMN hubsync.sync_watermarks.last_reconcile_at IS 'When all record ids were last compared with HubSpot to find permanent deletions';

INSERT INTO hubsync.sync_watermarks (entity_type)
SELECT entity_type FROM hubsync.object_types;

-- Every write the sync makes to a mirror row or to an association set is
-- noted here in the same statement; the queue part of the extension turns
-- the notes into transfer-queue entries in the same transaction.
CREATE TABLE hubsync.change_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_type text   NOT NULL REFERENCES hubsync.object_types,
    hubspot_id  bigint NOT NULL,
    change_kind text   NOT NULL CHECK (change_kind IN
        ('new', 'modified', 'archived', 'restored', 'deleted', 'merged',
         'associations_changed')),
    before      jsonb,
    after       jsonb,
    detail      jsonb,
    noted_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE hubsync.change_log IS 'Changes written by the sync and not yet turned into queue entries';
COMMENT ON COLUMN hubsync.change_log.before IS 'properties before the change (NULL for new records)';
COMMENT ON COLUMN hubsync.change_log.after IS 'properties after the change (NULL for deleted records)';
COMMENT ON COLUMN hubsync.change_log.detail IS 'For associations_changed: {"to_type", "added": [ids], "removed": [ids]}; for merged: {"merged_into": id}';

-- One row per run and object type.  A run started by the procedure
-- hubsync_run() is inserted as running and committed at once, so a row
-- still marked running after its backend died shows the interruption; the
-- next run of that type marks it failed.
CREATE TABLE hubsync.sync_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_type      text NOT NULL REFERENCES hubsync.object_types,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    status           text NOT NULL
        CHECK (status IN ('running', 'ok', 'failed', 'skipped', 'partial')),
    mode             text NOT NULL DEFAULT 'incremental'
        CHECK (mode IN ('incremental', 'reconcile')),
    pid              int,
    fetched          bigint NOT NULL DEFAULT 0,
    inserted         bigint NOT NULL DEFAULT 0,
    updated          bigint NOT NULL DEFAULT 0,
    unchanged        bigint NOT NULL DEFAULT 0,
    archived         bigint NOT NULL DEFAULT 0,
    deleted          bigint NOT NULL DEFAULT 0,
    warnings         bigint NOT NULL DEFAULT 0,
    queue_entries    bigint NOT NULL DEFAULT 0,
    pages            bigint NOT NULL DEFAULT 0,
    http_requests    bigint NOT NULL DEFAULT 0,
    retries          bigint NOT NULL DEFAULT 0,
    rate_limited     bigint NOT NULL DEFAULT 0,
    watermark_before timestamptz,
    watermark_after  timestamptz,
    error            text
);
CREATE INDEX sync_runs_entity_started_idx ON hubsync.sync_runs (entity_type, started_at DESC);
CREATE INDEX sync_runs_finished_idx ON hubsync.sync_runs (finished_at);
COMMENT ON TABLE hubsync.sync_runs IS 'History of sync runs, one row per run and object type; pruned after hubsync.run_history_retention';
COMMENT ON COLUMN hubsync.sync_runs.status IS 'running, ok, failed (nothing committed), partial (some steps committed before the failure) or skipped (another run of the type was in progress)';
COMMENT ON COLUMN hubsync.sync_runs.fetched IS 'Distinct records read from search';
COMMENT ON COLUMN hubsync.sync_runs.unchanged IS 'Records read again whose stored copy was already up to date';
COMMENT ON COLUMN hubsync.sync_runs.archived IS 'Rows that became archived';
COMMENT ON COLUMN hubsync.sync_runs.deleted IS 'Rows removed because HubSpot merged them away or deleted them for good';
COMMENT ON COLUMN hubsync.sync_runs.warnings IS 'Removed NUL characters and property values that did not fit their typed column';
COMMENT ON COLUMN hubsync.sync_runs.queue_entries IS 'Transfer-queue entries created or refreshed';
COMMENT ON COLUMN hubsync.sync_runs.rate_limited IS 'HTTP 429 responses received';
COMMENT ON COLUMN hubsync.sync_runs.error IS 'Error message of a failed run (never contains the token)';
