-- hubsync--1.0.sql, part 30: change detection and the QuickBooks transfer queue.
--
-- The sync notes every write in hubsync.change_log and, at the end of each
-- step, calls hubsync._flush_changes() in the same transaction.  The flush
-- turns the notes into candidates (a customer or an invoice that may have
-- changed for QuickBooks), builds each candidate's snapshot from the
-- mirror, and compares it with two remembered states in
-- hubsync.transfer_state:
--
--   seen   what hubsync last saw of the record.  Equal snapshots mean the
--          write touched nothing QuickBooks cares about (an untracked
--          property, a last-modified date, a re-read), so nothing happens.
--   books  what QuickBooks is taken to hold: the first-load baseline, or
--          the snapshot of the last transferred entry; NULL when the books
--          do not have the record.  An entry's diff is books -> now, so
--          coalesced changes show their net effect, and a record that
--          returns to the books' state withdraws its entry.
--
-- Snapshots contain the tracked fields only (hubsync.tracked_fields), with
-- values normalised: '' is null, numbers are numbers, dates are dates.  An
-- invoice's snapshot also has its live line items, its contact and company
-- ids and a frozen copy of its customer.  What the reviewer approves is
-- therefore exactly what gets transferred.
--
-- Every transition of an entry is written to hubsync.queue_events by a
-- trigger on the queue table, whoever makes it.
--
-- Locking.  Every writer of the queue takes the row locks of the open
-- entries it changes in ascending id order (flush, approve, reject, bulk
-- forms, transfer marks), so they serialise without deadlocks.  Flushes
-- (and hubsync_enqueue_existing) also take a transaction advisory lock,
-- classid 'HSNQ', so concurrent syncs of different types never race on
-- the same entry or state row, and only they create entries.

-- The roles of the review workflow (their privileges are granted in part
-- 60).  Group roles without LOGIN, created only if missing: roles belong
-- to the cluster, so a second database with hubsync reuses them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'hubsync_reviewer') THEN
        CREATE ROLE hubsync_reviewer NOLOGIN;
        COMMENT ON ROLE hubsync_reviewer IS 'hubsync: reviews the QuickBooks transfer queue (approve, reject, read the review views)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'hubsync_admin') THEN
        CREATE ROLE hubsync_admin NOLOGIN;
        COMMENT ON ROLE hubsync_admin IS 'hubsync: runs syncs and changes hubsync configuration';
    END IF;
END;
$$;

-- Advisory lock key of the queue writers: "HSNQ" and 1.
CREATE FUNCTION hubsync._queue_lock() RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_advisory_xact_lock(1213418065, 1) $$;

-- ---------------------------------------------------------------------
-- Configuration: which properties matter to QuickBooks
-- ---------------------------------------------------------------------

CREATE TABLE hubsync.tracked_fields (
    entity_type   text NOT NULL
        CHECK (entity_type IN ('contacts', 'companies', 'invoices', 'line_items')),
    property_name text NOT NULL,
    label         text NOT NULL,
    value_type    text NOT NULL DEFAULT 'text'
        CHECK (value_type IN ('text', 'numeric', 'date')),
    quickbooks_field text,
    is_default    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (entity_type, property_name),
    FOREIGN KEY (entity_type, property_name)
        REFERENCES hubsync.sync_properties (entity_type, property_name) ON DELETE CASCADE
);
COMMENT ON TABLE hubsync.tracked_fields IS 'Properties whose changes matter to QuickBooks, per object type; a change to any other property updates the mirror but makes no queue entry';
COMMENT ON COLUMN hubsync.tracked_fields.entity_type IS 'contacts, companies, invoices, or line_items (line item fields count as changes of their invoice)';
COMMENT ON COLUMN hubsync.tracked_fields.property_name IS 'HubSpot property; it must also be in hubsync.sync_properties (deleting it there stops tracking it)';
COMMENT ON COLUMN hubsync.tracked_fields.label IS 'Name shown to reviewers in hubsync.review_queue';
COMMENT ON COLUMN hubsync.tracked_fields.value_type IS 'How values are compared and stored in snapshots: text, numeric (1.50 equals 1.5) or date (UTC calendar date, whatever the format)';
COMMENT ON COLUMN hubsync.tracked_fields.quickbooks_field IS 'The QuickBooks Online field the property feeds (documentation)';
COMMENT ON COLUMN hubsync.tracked_fields.is_default IS 'Shipped with hubsync';

INSERT INTO hubsync.tracked_fields
    (entity_type, property_name, label, value_type, quickbooks_field, is_default)
VALUES
    ('companies',  'name',              'Name',           'text',    'Customer.DisplayName, CompanyName', true),
    ('companies',  'domain',            'Website',        'text',    'Customer.WebAddr', true),
    ('companies',  'phone',             'Phone',          'text',    'Customer.PrimaryPhone', true),
    ('companies',  'city',              'City',           'text',    'Customer.BillAddr.City', true),
    ('companies',  'country',           'Country',        'text',    'Customer.BillAddr.Country', true),
    ('contacts',   'email',             'Email',          'text',    'Customer.PrimaryEmailAddr', true),
    ('contacts',   'firstname',         'First name',     'text',    'Customer.GivenName', true),
    ('contacts',   'lastname',          'Last name',      'text',    'Customer.FamilyName', true),
    ('contacts',   'phone',             'Phone',          'text',    'Customer.PrimaryPhone', true),
    ('contacts',   'company',           'Company',        'text',    'Customer.CompanyName', true),
    ('invoices',   'hs_number',         'Invoice number', 'text',    'Invoice.DocNumber', true),
    ('invoices',   'hs_invoice_status', 'Status',         'text',    'transfer gate; voided means void', true),
    ('invoices',   'hs_currency',       'Currency',       'text',    'Invoice.CurrencyRef', true),
    ('invoices',   'hs_amount_billed',  'Amount billed',  'numeric', 'checked against Invoice.TotalAmt', true),
    ('invoices',   'hs_invoice_date',   'Invoice date',   'date',    'Invoice.TxnDate', true),
    ('invoices',   'hs_due_date',       'Due date',       'date',    'Invoice.DueDate', true),
    ('line_items', 'name',              'Name',           'text',    'Line.Description', true),
    ('line_items', 'hs_sku',            'SKU',            'text',    'SalesItemLineDetail.ItemRef', true),
    ('line_items', 'hs_product_id',     'Product',        'text',    'SalesItemLineDetail.ItemRef (fallback)', true),
    ('line_items', 'quantity',          'Quantity',       'numeric', 'SalesItemLineDetail.Qty', true),
    ('line_items', 'price',             'Unit price',     'numeric', 'SalesItemLineDetail.UnitPrice', true),
    ('line_items', 'amount',            'Amount',         'numeric', 'Line.Amount', true),
    ('line_items', 'discount',          'Discount',       'numeric', 'discount line', true);

-- The shipped rows are the gates of the review: without hs_invoice_status,
-- for instance, a draft could not be distinguished from an open invoice and a void
-- would not be detected.  They can be relabelled but not removed or
-- pointed at another property.
CREATE FUNCTION hubsync._keep_default_tracked_field() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.is_default AND (TG_OP = 'DELETE'
                           OR (NEW.entity_type, NEW.property_name, NEW.is_default)
                              IS DISTINCT FROM (OLD.entity_type, OLD.property_name, OLD.is_default)) THEN
        RAISE EXCEPTION 'tracked field "%" of % is required by hubsync', OLD.property_name, OLD.entity_type
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Only rows added by users (is_default = false) can be deleted; the label and quickbooks_field of a shipped row may be changed.';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$;

CREATE TRIGGER tracked_fields_keep_defaults
    BEFORE UPDATE OR DELETE ON hubsync.tracked_fields
    FOR EACH ROW EXECUTE FUNCTION hubsync._keep_default_tracked_field();

-- ---------------------------------------------------------------------
-- State and queue tables
-- ---------------------------------------------------------------------

CREATE TABLE hubsync.transfer_state (
    entity_type    text   NOT NULL CHECK (entity_type IN ('contacts', 'companies', 'invoices')),
    hubspot_id     bigint NOT NULL,
    seen_data      jsonb  NOT NULL,
    seen_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    books_data     jsonb,
    books_source   text CHECK (books_source IN ('baseline', 'transferred')),
    books_queue_id bigint,
    books_at       timestamptz,
    PRIMARY KEY (entity_type, hubspot_id),
    CHECK ((books_data IS NULL) = (books_source IS NULL))
);
CREATE INDEX transfer_state_invoice_refs_idx ON hubsync.transfer_state
    USING gin (seen_data jsonb_path_ops) WHERE entity_type = 'invoices';
COMMENT ON TABLE hubsync.transfer_state IS 'Per customer and invoice: the snapshot hubsync last saw and the one QuickBooks is taken to hold';
COMMENT ON COLUMN hubsync.transfer_state.seen_data IS 'Snapshot as of the last change that mattered; a write that leaves it equal makes no queue entry';
COMMENT ON COLUMN hubsync.transfer_state.books_data IS 'What QuickBooks holds: the first-load baseline or the last transferred snapshot; NULL when the books do not have the record';
COMMENT ON COLUMN hubsync.transfer_state.books_source IS 'baseline (first load with hubsync.first_load = baseline) or transferred';
COMMENT ON COLUMN hubsync.transfer_state.books_queue_id IS 'Queue entry whose transfer put books_data there';
COMMENT ON COLUMN hubsync.transfer_state.books_at IS 'When books_data was recorded';

CREATE TABLE hubsync.quickbooks_transfer_queue (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_type     text   NOT NULL CHECK (entity_type IN ('contacts', 'companies', 'invoices')),
    hubspot_id      bigint NOT NULL,
    action_type     text   NOT NULL CHECK (action_type IN ('create', 'update', 'delete')),
    status          text   NOT NULL DEFAULT 'pending_review'
        CHECK (status IN ('pending_review', 'approved', 'rejected', 'transferred', 'failed', 'withdrawn')),
    trigger_reason  text   NOT NULL CHECK (trigger_reason IN
        ('new', 'modified', 'status_changed', 'deleted', 'line_items_changed', 'associations_changed')),
    reasons         text[] NOT NULL,
    entity_data     jsonb  NOT NULL,
    changes         jsonb  NOT NULL,
    version         int    NOT NULL DEFAULT 1 CHECK (version >= 1),
    warnings        text[] NOT NULL DEFAULT '{}',
    possible_duplicate boolean NOT NULL DEFAULT false,
    duplicate_of    bigint[],
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    approved_at     timestamptz,
    approved_by     text,
    rejected_at     timestamptz,
    rejected_by     text,
    rejected_reason text,
    transferred_at  timestamptz,
    transfer_result jsonb,
    CHECK ((approved_at IS NOT NULL) = (status IN ('approved', 'transferred', 'failed'))),
    CHECK ((approved_at IS NULL) = (approved_by IS NULL)),
    CHECK ((status = 'rejected') = (rejected_reason IS NOT NULL)),
    CHECK ((rejected_at IS NULL) = (rejected_reason IS NULL) AND (rejected_by IS NULL) = (rejected_reason IS NULL)),
    CHECK ((transferred_at IS NOT NULL) = (status = 'transferred')),
    CHECK (possible_duplicate = (duplicate_of IS NOT NULL))
);
CREATE UNIQUE INDEX quickbooks_transfer_queue_open_idx
    ON hubsync.quickbooks_transfer_queue (entity_type, hubspot_id)
    WHERE status IN ('pending_review', 'approved');
CREATE INDEX quickbooks_transfer_queue_record_idx
    ON hubsync.quickbooks_transfer_queue (entity_type, hubspot_id, id);
CREATE INDEX quickbooks_transfer_queue_status_idx
    ON hubsync.quickbooks_transfer_queue (status, created_at);

COMMENT ON TABLE hubsync.quickbooks_transfer_queue IS 'One entry per change to transfer to QuickBooks Online; at most one open (pending_review or approved) entry per record';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.entity_type IS 'contacts or companies (QuickBooks customers) or invoices';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.hubspot_id IS 'HubSpot record id';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.action_type IS 'Effect in QuickBooks: create (the books do not have it), update, or delete (archived, deleted or merged away in HubSpot)';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.status IS 'pending_review, approved, rejected, transferred, failed, or withdrawn (the record went back to what the books hold before it was transferred)';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.trigger_reason IS 'Most significant HubSpot change in the entry: new, deleted, status_changed, associations_changed, modified, line_items_changed (in that order)';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.reasons IS 'Every kind of change the entry holds, most significant first';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.entity_data IS 'Snapshot to transfer: tracked properties; for an invoice also its line items, contact and company ids and its customer';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.changes IS 'Field-level before/after of tracked fields against what the books hold: {"fields":{name:{"before","after"}}, "line_items":{"added","removed","changed"}, "contacts"/"companies":{"before","after"}, "archived"/"deleted":{...}}';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.version IS 'Incremented whenever entity_data or changes change; approvals name the version they approve';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.warnings IS 'Problems a reviewer should see: draft status, no customer, amounts that do not add up, missing email';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.possible_duplicate IS 'Another live HubSpot record has the same invoice number, company name or contact email';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.duplicate_of IS 'HubSpot ids of those other records';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.created_at IS 'When the change was first detected';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.updated_at IS 'When the status or version last changed';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.approved_at IS 'When the current version was approved (NULL again if a later change sent the entry back to review; the audit keeps it)';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.approved_by IS 'Login role (session_user) that approved';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.rejected_at IS 'When the entry was rejected';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.rejected_by IS 'Login role (session_user) that rejected';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.rejected_reason IS 'Why it was rejected (required)';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.transferred_at IS 'When the transfer to QuickBooks succeeded';
COMMENT ON COLUMN hubsync.quickbooks_transfer_queue.transfer_result IS 'What the transfer recorded: QuickBooks response or error';

CREATE TABLE hubsync.queue_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id    bigint NOT NULL REFERENCES hubsync.quickbooks_transfer_queue,
    event_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor       text NOT NULL DEFAULT pg_catalog."session_user"(),
    application_name text,
    from_status text,
    to_status   text NOT NULL,
    version     int  NOT NULL,
    note        text NOT NULL,
    entity_data jsonb,
    changes     jsonb
);
CREATE INDEX queue_events_queue_idx ON hubsync.queue_events (queue_id, id);
COMMENT ON TABLE hubsync.queue_events IS 'Append-only audit of every queue entry transition, written by a trigger on the queue table';
COMMENT ON COLUMN hubsync.queue_events.queue_id IS 'Queue entry';
COMMENT ON COLUMN hubsync.queue_events.event_at IS 'When it happened';
COMMENT ON COLUMN hubsync.queue_events.actor IS 'Login role (session_user) of the session that made the transition: the reviewer, or the role running the sync';
COMMENT ON COLUMN hubsync.queue_events.application_name IS 'application_name of that session (psql, pg_cron, ...)';
COMMENT ON COLUMN hubsync.queue_events.from_status IS 'Status before (NULL when the entry was created)';
COMMENT ON COLUMN hubsync.queue_events.to_status IS 'Status after';
COMMENT ON COLUMN hubsync.queue_events.version IS 'Entry version after the transition';
COMMENT ON COLUMN hubsync.queue_events.note IS 'What happened, in words';
COMMENT ON COLUMN hubsync.queue_events.entity_data IS 'Snapshot of this version, when the transition made a new version';
COMMENT ON COLUMN hubsync.queue_events.changes IS 'Diff of this version, when the transition made a new version';

-- ---------------------------------------------------------------------
-- Invariants and the audit, enforced on the tables themselves
-- ---------------------------------------------------------------------

-- Legal transitions, immutable columns and the version rule, for every
-- writer (hubsync's functions, a future transfer worker, a superuser).
CREATE FUNCTION hubsync._queue_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_allowed text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- A row older than this transaction is being restored (pg_dump
        -- keeps the queue); hubsync itself always creates entries now.
        IF NEW.created_at < transaction_timestamp() THEN
            RETURN NEW;
        END IF;
        IF NEW.status <> 'pending_review' OR NEW.version <> 1 THEN
            RAISE EXCEPTION 'a new queue entry must be pending_review at version 1'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;

    IF (NEW.id, NEW.entity_type, NEW.hubspot_id, NEW.created_at)
       IS DISTINCT FROM (OLD.id, OLD.entity_type, OLD.hubspot_id, OLD.created_at) THEN
        RAISE EXCEPTION 'the id, record and creation time of queue entry % cannot change', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;

    v_allowed := CASE OLD.status
        WHEN 'pending_review' THEN ARRAY['pending_review', 'approved', 'rejected', 'withdrawn']
        WHEN 'approved' THEN ARRAY['approved', 'pending_review', 'rejected', 'withdrawn', 'transferred', 'failed']
        WHEN 'failed' THEN ARRAY['failed', 'pending_review']
        ELSE ARRAY[]::text[]
    END;
    IF NEW.status <> ALL (v_allowed) THEN
        RAISE EXCEPTION 'queue entry % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'integrity_constraint_violation',
                  DETAIL = CASE WHEN OLD.status IN ('rejected', 'transferred', 'withdrawn')
                                THEN format('%s is final; a later change in HubSpot opens a new entry.', OLD.status) END;
    END IF;

    IF (NEW.entity_data, NEW.changes) IS DISTINCT FROM (OLD.entity_data, OLD.changes) THEN
        IF NEW.version <> OLD.version + 1 THEN
            RAISE EXCEPTION 'queue entry % changed its snapshot without moving from version % to %',
                            OLD.id, OLD.version, OLD.version + 1
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        IF OLD.status = 'approved' AND NEW.status NOT IN ('pending_review', 'withdrawn') THEN
            RAISE EXCEPTION 'the snapshot of approved queue entry % cannot change while it stays approved', OLD.id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    ELSIF NEW.version <> OLD.version THEN
        RAISE EXCEPTION 'queue entry % changed its version without changing its snapshot', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;

    IF (NEW.status, NEW.version) IS DISTINCT FROM (OLD.status, OLD.version) THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER quickbooks_transfer_queue_guard
    BEFORE INSERT OR UPDATE ON hubsync.quickbooks_transfer_queue
    FOR EACH ROW EXECUTE FUNCTION hubsync._queue_guard();

-- One audit row per creation, status change or new version.
CREATE FUNCTION hubsync._queue_audit() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_note text;
    v_new_version boolean := TG_OP = 'INSERT' OR NEW.version <> OLD.version;
BEGIN
    IF TG_OP = 'UPDATE' AND NOT v_new_version AND NEW.status = OLD.status THEN
        RETURN NULL;
    END IF;
    -- A restored row brings its own audit rows.
    IF TG_OP = 'INSERT' AND NEW.created_at < transaction_timestamp() THEN
        RETURN NULL;
    END IF;

    v_note := CASE
        WHEN TG_OP = 'INSERT' THEN
            format('detected: %s in QuickBooks (%s)', NEW.action_type,
                   array_to_string(NEW.reasons, ', '))
        WHEN NEW.status = 'approved' THEN
            format('approved version %s', NEW.version)
        WHEN NEW.status = 'rejected' THEN
            'rejected: ' || NEW.rejected_reason
        WHEN NEW.status = 'withdrawn' THEN
            CASE WHEN hubsync._is_gone(NEW.entity_data)
                 THEN 'withdrawn: the record was deleted in HubSpot before it reached QuickBooks'
                 ELSE 'withdrawn: no net change for QuickBooks, the record is back to what the books hold' END
        WHEN NEW.status = 'transferred' THEN
            'transferred to QuickBooks'
            || coalesce(' (QuickBooks Id ' || (NEW.transfer_result->>'Id') || ')', '')
        WHEN NEW.status = 'failed' THEN
            'transfer failed: ' || coalesce(NEW.transfer_result->>'error', 'no error recorded')
        WHEN OLD.status = 'approved' AND NEW.status = 'pending_review' THEN
            format('back to review: the record changed after %s approved version %s at %s (%s)',
                   OLD.approved_by, OLD.version, OLD.approved_at, array_to_string(NEW.reasons, ', '))
        WHEN OLD.status = 'failed' AND NEW.status = 'pending_review' THEN
            'back to review after a failed transfer'
        ELSE
            format('refreshed: %s in QuickBooks (%s)', NEW.action_type,
                   array_to_string(NEW.reasons, ', '))
    END;

    INSERT INTO hubsync.queue_events
        (queue_id, actor, application_name, from_status, to_status, version, note, entity_data, changes)
    VALUES (NEW.id, session_user, current_setting('application_name', true),
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status, NEW.version, v_note,
            CASE WHEN v_new_version THEN NEW.entity_data END,
            CASE WHEN v_new_version THEN NEW.changes END);
    RETURN NULL;
END;
$$;

CREATE TRIGGER quickbooks_transfer_queue_audit
    AFTER INSERT OR UPDATE ON hubsync.quickbooks_transfer_queue
    FOR EACH ROW EXECUTE FUNCTION hubsync._queue_audit();

CREATE FUNCTION hubsync._queue_events_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'hubsync.queue_events is append-only'
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = format('%s of audit rows is not allowed, for any role.', TG_OP),
              HINT = 'Audit rows are only ever added, by the trigger on hubsync.quickbooks_transfer_queue.';
END;
$$;

CREATE TRIGGER queue_events_append_only
    BEFORE UPDATE OR DELETE ON hubsync.queue_events
    FOR EACH ROW EXECUTE FUNCTION hubsync._queue_events_append_only();

-- ---------------------------------------------------------------------
-- Snapshots and diffs
-- ---------------------------------------------------------------------

-- The tracked properties of one record, normalised: '' and absent are
-- null, numeric fields are JSON numbers, date fields are YYYY-MM-DD.  A
-- value that does not parse is kept as its string, so it still shows as
-- a change (and as a warning).
CREATE FUNCTION hubsync._tracked_properties(p_entity text, p_properties jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(f.property_name,
               CASE f.value_type
                   WHEN 'numeric' THEN coalesce(to_jsonb(hubsync.to_numeric(v.value)), to_jsonb(v.value))
                   WHEN 'date' THEN coalesce(to_jsonb(hubsync.to_date(v.value)::text), to_jsonb(v.value))
                   ELSE to_jsonb(v.value)
               END), '{}'::jsonb)
    FROM hubsync.tracked_fields f,
         LATERAL (SELECT hubsync.to_text(p_properties->>f.property_name) AS value) AS v
    WHERE f.entity_type = p_entity;
$$;

CREATE FUNCTION hubsync._is_gone(p_data jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce((p_data->>'deleted')::boolean, false) OR coalesce((p_data->>'archived')::boolean, false);

-- Whether QuickBooks holds a record: a live books snapshot that is not a
-- draft invoice (drafts never leave HubSpot).
CREATE FUNCTION hubsync._in_books(p_entity text, p_books jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN p_books IS NOT NULL AND NOT hubsync._is_gone(p_books)
       AND NOT (p_entity = 'invoices' AND p_books->'properties'->>'hs_invoice_status' IS NOT DISTINCT FROM 'draft');

CREATE FUNCTION hubsync._is_draft(p_entity text, p_data jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN p_entity = 'invoices' AND p_data->'properties'->>'hs_invoice_status' IS NOT DISTINCT FROM 'draft'
       AND NOT hubsync._is_gone(p_data);

-- Current snapshots of the given records that are still in the mirror
-- (archived ones included), from (type, id) pairs.
CREATE FUNCTION hubsync._snapshots(p_types text[], p_ids bigint[])
RETURNS TABLE (entity_type text, hubspot_id bigint, data jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_contacts bigint[];
    v_companies bigint[];
    v_invoices bigint[];
BEGIN
    SELECT array_agg(i) FILTER (WHERE t = 'contacts'),
           array_agg(i) FILTER (WHERE t = 'companies'),
           array_agg(i) FILTER (WHERE t = 'invoices')
    INTO v_contacts, v_companies, v_invoices
    FROM unnest(p_types, p_ids) AS u(t, i);

    RETURN QUERY
    SELECT 'contacts'::text, c.id,
           jsonb_build_object('entity_type', 'contacts', 'id', c.id, 'archived', c.archived,
                              'deleted', false,
                              'properties', hubsync._tracked_properties('contacts', c.properties))
    FROM hubsync.contacts c WHERE c.id = ANY (v_contacts);

    RETURN QUERY
    SELECT 'companies'::text, c.id,
           jsonb_build_object('entity_type', 'companies', 'id', c.id, 'archived', c.archived,
                              'deleted', false,
                              'properties', hubsync._tracked_properties('companies', c.properties))
    FROM hubsync.companies c WHERE c.id = ANY (v_companies);

    RETURN QUERY
    SELECT 'invoices'::text, i.id,
           jsonb_build_object('entity_type', 'invoices', 'id', i.id, 'archived', i.archived,
                              'deleted', false,
                              'properties', hubsync._tracked_properties('invoices', i.properties),
                              'line_items', li.items,
                              'contact_ids', ct.ids,
                              'company_ids', co.ids,
                              'customer', cu.customer)
    FROM hubsync.invoices i
    -- Live line items, in id order; one the mirror lacks has null properties.
    CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', a.to_id,
                   'properties', CASE WHEN l.id IS NOT NULL
                                      THEN hubsync._tracked_properties('line_items', l.properties) END)
                   ORDER BY a.to_id), '[]'::jsonb) AS items
        FROM (SELECT DISTINCT x.to_id FROM hubsync.associations x
              WHERE x.from_type = 'invoices' AND x.from_id = i.id AND x.to_type = 'line_items') AS a
        LEFT JOIN hubsync.line_items l ON l.id = a.to_id
        WHERE l.id IS NULL OR NOT l.archived
    ) AS li
    CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_agg(DISTINCT x.to_id), '[]'::jsonb) AS ids
        FROM hubsync.associations x
        WHERE x.from_type = 'invoices' AND x.from_id = i.id AND x.to_type = 'contacts'
    ) AS ct
    CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_agg(DISTINCT x.to_id), '[]'::jsonb) AS ids
        FROM hubsync.associations x
        WHERE x.from_type = 'invoices' AND x.from_id = i.id AND x.to_type = 'companies'
    ) AS co
    -- The QuickBooks customer: the linked company (lowest id, live ones
    -- first), else the linked contact; a company takes its billing email
    -- from the invoice's contact.
    LEFT JOIN LATERAL (
        SELECT jsonb_build_object('entity_type', c.entity_type, 'id', c.id, 'name', c.name,
                                  'email', c.email, 'properties', c.properties) AS customer
        FROM (
            SELECT 'companies' AS entity_type, cp.id, cp.name,
                   (SELECT k.email FROM hubsync.associations y JOIN hubsync.contacts k ON k.id = y.to_id
                     WHERE y.from_type = 'invoices' AND y.from_id = i.id AND y.to_type = 'contacts'
                       AND k.email IS NOT NULL
                     ORDER BY k.archived, k.id LIMIT 1) AS email,
                   hubsync._tracked_properties('companies', cp.properties) AS properties,
                   cp.archived, 1 AS preference
            FROM hubsync.associations x JOIN hubsync.companies cp ON cp.id = x.to_id
            WHERE x.from_type = 'invoices' AND x.from_id = i.id AND x.to_type = 'companies'
            UNION ALL
            SELECT 'contacts', k.id,
                   coalesce(nullif(concat_ws(' ', k.first_name, k.last_name), ''), k.email),
                   k.email, hubsync._tracked_properties('contacts', k.properties),
                   k.archived, 2
            FROM hubsync.associations x JOIN hubsync.contacts k ON k.id = x.to_id
            WHERE x.from_type = 'invoices' AND x.from_id = i.id AND x.to_type = 'contacts'
        ) AS c
        ORDER BY c.archived, c.preference, c.id
        LIMIT 1
    ) AS cu ON true
    WHERE i.id = ANY (v_invoices);
END;
$$;

-- Snapshot of a record that left the mirror (deleted for good, or merged
-- into another record): what was seen last, marked deleted.
CREATE FUNCTION hubsync._gone_snapshot(p_entity text, p_id bigint, p_seen jsonb, p_gone jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(p_seen,
                    jsonb_build_object('entity_type', p_entity, 'id', p_id, 'archived', false,
                                       'properties', hubsync._tracked_properties(p_entity, coalesce(p_gone->'properties', '{}'))))
           || jsonb_build_object('deleted', true)
           || CASE WHEN p_gone->'merged_into' IS NOT NULL AND p_gone->'merged_into' <> 'null'::jsonb
                   THEN jsonb_build_object('merged_into', p_gone->'merged_into')
                   ELSE '{}'::jsonb END;
$$;

-- Changed properties between two property objects: {name: {before, after}}.
-- With p_old NULL every non-null value is new.  A key that p_old lacks was
-- not tracked when p_old was taken and is not a change.  NULL when nothing
-- changed.
CREATE FUNCTION hubsync._diff_properties(p_old jsonb, p_new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT jsonb_object_agg(n.key, jsonb_build_object('before', coalesce(p_old->n.key, 'null'::jsonb),
                                                      'after', n.value))
    FROM jsonb_each(coalesce(p_new, '{}'::jsonb)) AS n
    WHERE CASE WHEN p_old IS NULL THEN n.value <> 'null'::jsonb
               ELSE p_old ? n.key AND p_old->n.key IS DISTINCT FROM n.value END;
$$;

-- The tracked difference between two snapshots (p_old NULL: the record is
-- new to the books).  '{}' when they are the same for QuickBooks.  Of an
-- invoice's frozen customer copy only the choice of customer is compared:
-- the invoice refers to the customer by id, and the customer's details
-- have entries of their own.
CREATE FUNCTION hubsync._diff(p_old jsonb, p_new jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb := '{}';
    v_part jsonb;
    v_added jsonb;
    v_removed jsonb;
    v_changed jsonb;
    v_flag text;
BEGIN
    v_part := hubsync._diff_properties(p_old->'properties', p_new->'properties');
    IF v_part IS NOT NULL THEN
        v_result := v_result || jsonb_build_object('fields', v_part);
    END IF;

    FOREACH v_flag IN ARRAY ARRAY['archived', 'deleted'] LOOP
        IF coalesce((p_old->>v_flag)::boolean, false) IS DISTINCT FROM coalesce((p_new->>v_flag)::boolean, false) THEN
            v_result := v_result || jsonb_build_object(v_flag, jsonb_build_object(
                'before', coalesce((p_old->>v_flag)::boolean, false),
                'after', coalesce((p_new->>v_flag)::boolean, false)));
        END IF;
    END LOOP;
    IF p_new ? 'merged_into' AND p_old->'merged_into' IS DISTINCT FROM p_new->'merged_into' THEN
        v_result := v_result || jsonb_build_object('merged_into', p_new->'merged_into');
    END IF;

    IF p_new ? 'line_items' THEN
        WITH o AS (
            SELECT (e->>'id')::bigint AS id, e->'properties' AS p
            FROM jsonb_array_elements(coalesce(p_old->'line_items', '[]')) AS e
        ), n AS (
            SELECT (e->>'id')::bigint AS id, e->'properties' AS p
            FROM jsonb_array_elements(p_new->'line_items') AS e
        )
        SELECT (SELECT jsonb_agg(jsonb_build_object('id', n.id, 'properties', n.p) ORDER BY n.id)
                  FROM n WHERE NOT EXISTS (SELECT 1 FROM o WHERE o.id = n.id)),
               (SELECT jsonb_agg(jsonb_build_object('id', o.id, 'properties', o.p) ORDER BY o.id)
                  FROM o WHERE NOT EXISTS (SELECT 1 FROM n WHERE n.id = o.id)),
               (SELECT jsonb_agg(jsonb_build_object('id', n.id, 'name', n.p->'name', 'fields', d.f) ORDER BY n.id)
                  FROM n JOIN o USING (id),
                       LATERAL (SELECT CASE WHEN o.p IS NULL THEN hubsync._diff_properties(NULL, n.p)
                                            ELSE hubsync._diff_properties(o.p, n.p) END AS f) AS d
                 WHERE d.f IS NOT NULL)
        INTO v_added, v_removed, v_changed;
        v_part := '{}';
        IF v_added IS NOT NULL THEN v_part := v_part || jsonb_build_object('added', v_added); END IF;
        IF v_removed IS NOT NULL THEN v_part := v_part || jsonb_build_object('removed', v_removed); END IF;
        IF v_changed IS NOT NULL THEN v_part := v_part || jsonb_build_object('changed', v_changed); END IF;
        IF v_part <> '{}' THEN
            v_result := v_result || jsonb_build_object('line_items', v_part);
        END IF;
    END IF;

    -- Which record is the QuickBooks customer (not its details: those are
    -- the customer's own entries).
    IF p_new ? 'customer'
       AND (p_old->'customer'->>'entity_type', p_old->'customer'->>'id')
           IS DISTINCT FROM (p_new->'customer'->>'entity_type', p_new->'customer'->>'id') THEN
        v_result := v_result || jsonb_build_object('customer', jsonb_build_object(
            'before', CASE WHEN jsonb_typeof(p_old->'customer') = 'object'
                           THEN jsonb_build_object('entity_type', p_old->'customer'->'entity_type',
                                                   'id', p_old->'customer'->'id',
                                                   'name', p_old->'customer'->'name')
                           ELSE 'null'::jsonb END,
            'after', CASE WHEN jsonb_typeof(p_new->'customer') = 'object'
                          THEN jsonb_build_object('entity_type', p_new->'customer'->'entity_type',
                                                  'id', p_new->'customer'->'id',
                                                  'name', p_new->'customer'->'name')
                          ELSE 'null'::jsonb END));
    END IF;

    -- A company customer takes its billing email from the invoice's
    -- contact, so that email belongs to the invoice's own diff.
    IF jsonb_typeof(p_new->'customer') = 'object' AND jsonb_typeof(p_old->'customer') = 'object'
       AND p_new->'customer'->>'entity_type' = 'companies'
       AND (p_old->'customer'->>'entity_type', p_old->'customer'->>'id')
           IS NOT DISTINCT FROM (p_new->'customer'->>'entity_type', p_new->'customer'->>'id')
       AND (p_old->'customer'->>'email') IS DISTINCT FROM (p_new->'customer'->>'email') THEN
        v_result := v_result || jsonb_build_object('billing_email', jsonb_build_object(
            'before', p_old->'customer'->'email', 'after', p_new->'customer'->'email'));
    END IF;

    FOREACH v_flag IN ARRAY ARRAY['contact', 'company'] LOOP
        IF p_new ? (v_flag || '_ids')
           AND coalesce(p_old->(v_flag || '_ids'), '[]') IS DISTINCT FROM p_new->(v_flag || '_ids') THEN
            v_result := v_result || jsonb_build_object(
                CASE v_flag WHEN 'contact' THEN 'contacts' ELSE 'companies' END,
                jsonb_build_object('before', coalesce(p_old->(v_flag || '_ids'), '[]'),
                                   'after', p_new->(v_flag || '_ids')));
        END IF;
    END LOOP;
    RETURN v_result;
END;
$$;

-- p_old with the tracked properties it lacks (its own and its line
-- items') taken from p_new: what a field that has just started to be
-- tracked is taken to have been.
CREATE FUNCTION hubsync._fill_untracked(p_old jsonb, p_new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_old IS NULL OR p_new IS NULL THEN p_old ELSE
        p_old
        || jsonb_build_object('properties',
               (SELECT coalesce(jsonb_object_agg(n.key, n.value), '{}'::jsonb)
                  FROM jsonb_each(coalesce(p_new->'properties', '{}'::jsonb)) AS n
                 WHERE NOT (coalesce(p_old->'properties', '{}'::jsonb) ? n.key))
               || coalesce(p_old->'properties', '{}'::jsonb))
        || CASE WHEN jsonb_typeof(p_old->'line_items') = 'array' THEN
               jsonb_build_object('line_items', (
                   SELECT coalesce(jsonb_agg(
                              CASE WHEN jsonb_typeof(o.item->'properties') = 'object'
                                        AND jsonb_typeof(n.item->'properties') = 'object'
                                   THEN o.item || jsonb_build_object('properties', n.item->'properties' || o.item->'properties')
                                   ELSE o.item END
                              ORDER BY o.ord), '[]'::jsonb)
                   FROM jsonb_array_elements(p_old->'line_items') WITH ORDINALITY AS o(item, ord)
                   LEFT JOIN LATERAL (
                       SELECT e AS item FROM jsonb_array_elements(coalesce(p_new->'line_items', '[]'::jsonb)) AS e
                       WHERE e->'id' = o.item->'id' LIMIT 1) AS n ON true))
           ELSE '{}'::jsonb END
    END;
$$;

-- A field that starts to be tracked is taken to hold, in what was seen
-- and in the books, the value the mirror holds now: adding it must not
-- make an entry for every record, nor hide its next change.  (So sync
-- the property, and read every record again, before tracking it.)
CREATE FUNCTION hubsync._tracked_fields_added() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_types text[];
    v_state_types text[];
    v_ids bigint[];
BEGIN
    SELECT array_agg(DISTINCT CASE WHEN n.entity_type = 'line_items' THEN 'invoices' ELSE n.entity_type END)
    INTO v_types FROM new_fields n;

    SELECT array_agg(s.entity_type), array_agg(s.hubspot_id) INTO v_state_types, v_ids
    FROM hubsync.transfer_state s WHERE s.entity_type = ANY (v_types);
    IF v_ids IS NULL THEN
        RETURN NULL;
    END IF;

    UPDATE hubsync.transfer_state s
       SET seen_data = hubsync._fill_untracked(s.seen_data, c.data),
           books_data = hubsync._fill_untracked(s.books_data, c.data)
      FROM hubsync._snapshots(v_state_types, v_ids) AS c
     WHERE s.entity_type = c.entity_type AND s.hubspot_id = c.hubspot_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tracked_fields_added
    AFTER INSERT ON hubsync.tracked_fields
    REFERENCING NEW TABLE AS new_fields
    FOR EACH STATEMENT EXECUTE FUNCTION hubsync._tracked_fields_added();

-- Kinds of change an entry holds, most significant first.  p_base is what
-- the books hold (NULL: the record is new to them).
CREATE FUNCTION hubsync._reasons(p_entity text, p_base jsonb, p_data jsonb, p_changes jsonb)
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN hubsync._is_gone(p_data) THEN ARRAY['deleted']
        WHEN p_base IS NULL THEN ARRAY['new']
        ELSE array_remove(ARRAY[
            CASE WHEN p_entity = 'invoices' AND p_changes->'fields' ? 'hs_invoice_status'
                 THEN 'status_changed' END,
            CASE WHEN p_changes ?| ARRAY['contacts', 'companies', 'customer'] THEN 'associations_changed' END,
            CASE WHEN coalesce(p_changes->'fields', '{}') - 'hs_invoice_status' <> '{}'
                      OR (p_entity <> 'invoices' AND p_changes->'fields' ? 'hs_invoice_status')
                      OR p_changes ?| ARRAY['archived', 'deleted', 'billing_email']
                 THEN 'modified' END,
            CASE WHEN p_changes ? 'line_items' THEN 'line_items_changed' END
        ], NULL)
    END;
$$;

-- Problems worth a reviewer's attention, from a snapshot.
CREATE FUNCTION hubsync._warnings(p_entity text, p_data jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_warnings text[] := '{}';
    p jsonb := p_data->'properties';
    v_line record;
    v_sum numeric;
BEGIN
    IF hubsync._is_gone(p_data) THEN
        RETURN v_warnings;
    END IF;
    IF p_entity = 'invoices' THEN
        IF p->>'hs_invoice_status' = 'draft' THEN
            v_warnings := v_warnings || 'draft: QuickBooks takes open and paid invoices only; it cannot be approved until it is open'::text;
        ELSIF p->>'hs_invoice_status' = 'voided' THEN
            v_warnings := v_warnings || 'voided in HubSpot'::text;
        END IF;
        IF p_data->'customer' IS NULL OR p_data->'customer' = 'null'::jsonb THEN
            v_warnings := v_warnings || 'no company or contact linked: QuickBooks needs a customer'::text;
        END IF;
        IF jsonb_array_length(coalesce(p_data->'company_ids', '[]')) > 1 THEN
            v_warnings := v_warnings || format('linked to %s companies; the customer is company %s',
                                               jsonb_array_length(p_data->'company_ids'),
                                               p_data->'customer'->>'id');
        END IF;
        IF p ? 'hs_currency' AND p->>'hs_currency' IS NULL THEN
            v_warnings := v_warnings || 'no currency'::text;
        END IF;
        IF jsonb_array_length(coalesce(p_data->'line_items', '[]')) = 0 THEN
            v_warnings := v_warnings || 'no line items'::text;
        END IF;
        v_sum := 0;
        FOR v_line IN
            SELECT (e->>'id')::bigint AS id, e->'properties' AS lp
            FROM jsonb_array_elements(coalesce(p_data->'line_items', '[]')) AS e
        LOOP
            IF v_line.lp IS NULL OR v_line.lp = 'null'::jsonb THEN
                v_warnings := v_warnings || format('line item %s is not in the mirror yet', v_line.id);
                v_sum := NULL;
                CONTINUE;
            END IF;
            IF jsonb_typeof(v_line.lp->'quantity') = 'number' AND jsonb_typeof(v_line.lp->'price') = 'number'
               AND jsonb_typeof(v_line.lp->'amount') = 'number'
               AND round((v_line.lp->>'quantity')::numeric * (v_line.lp->>'price')::numeric, 2)
                   <> (v_line.lp->>'amount')::numeric THEN
                v_warnings := v_warnings || format('line item %s: amount %s differs from %s × %s = %s',
                    v_line.id, v_line.lp->>'amount', v_line.lp->>'quantity', v_line.lp->>'price',
                    round((v_line.lp->>'quantity')::numeric * (v_line.lp->>'price')::numeric, 2));
            END IF;
            IF jsonb_typeof(v_line.lp->'amount') = 'number' THEN
                v_sum := v_sum + (v_line.lp->>'amount')::numeric;
            ELSIF v_line.lp ? 'amount' THEN
                v_warnings := v_warnings || format('line item %s has no numeric amount (%s)',
                                                   v_line.id, coalesce(v_line.lp->>'amount', 'empty'));
                v_sum := NULL;
            END IF;
        END LOOP;
        IF v_sum IS NOT NULL AND jsonb_typeof(p->'hs_amount_billed') = 'number'
           AND jsonb_array_length(coalesce(p_data->'line_items', '[]')) > 0
           AND v_sum <> (p->>'hs_amount_billed')::numeric THEN
            v_warnings := v_warnings || format('line amounts add up to %s but the amount billed is %s',
                                               v_sum, p->>'hs_amount_billed');
        END IF;
    ELSIF p_entity = 'contacts' THEN
        IF p ? 'email' AND p->>'email' IS NULL THEN
            v_warnings := v_warnings || 'no email address'::text;
        END IF;
        IF coalesce(p->>'firstname', p->>'lastname', p->>'company', p->>'email') IS NULL THEN
            v_warnings := v_warnings || 'no name: QuickBooks needs a display name'::text;
        END IF;
    ELSIF p_entity = 'companies' THEN
        IF p->>'name' IS NULL THEN
            v_warnings := v_warnings || 'no name: QuickBooks needs a display name'::text;
        END IF;
    END IF;
    RETURN v_warnings;
END;
$$;

-- Other live records that QuickBooks would see as the same one: invoices
-- with the same number, companies with the same name, contacts with the
-- same email (case-insensitive).  NULL when there are none.
CREATE FUNCTION hubsync._duplicates(p_entity text, p_id bigint, p_data jsonb) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key text;
    v_ids bigint[];
BEGIN
    IF hubsync._is_gone(p_data) THEN
        RETURN NULL;
    END IF;
    IF p_entity = 'invoices' THEN
        v_key := p_data->'properties'->>'hs_number';
        SELECT array_agg(i.id ORDER BY i.id) INTO v_ids
        FROM hubsync.invoices i WHERE i.number = v_key AND i.id <> p_id AND NOT i.archived;
    ELSIF p_entity = 'companies' THEN
        v_key := p_data->'properties'->>'name';
        SELECT array_agg(c.id ORDER BY c.id) INTO v_ids
        FROM hubsync.companies c WHERE lower(c.name) = lower(v_key) AND c.id <> p_id AND NOT c.archived;
    ELSIF p_entity = 'contacts' THEN
        v_key := p_data->'properties'->>'email';
        SELECT array_agg(c.id ORDER BY c.id) INTO v_ids
        FROM hubsync.contacts c WHERE lower(c.email) = lower(v_key) AND c.id <> p_id AND NOT c.archived;
    END IF;
    RETURN v_ids;
END;
$$;

-- ---------------------------------------------------------------------
-- Evaluating candidates: the one place that writes entries from snapshots
-- ---------------------------------------------------------------------

-- Compare the candidates' snapshots with what was seen and what the books
-- hold, and create, refresh or withdraw their entries.  p_baseline marks
-- candidates of a first load in baseline mode: their snapshot becomes the
-- books' state and no entry is made.  p_gone carries, for records that
-- left the mirror, their last properties and merge target.  With p_force
-- every candidate counts as changed (hubsync_enqueue_existing).  Returns
-- the number of entries created, refreshed or withdrawn.  The caller holds
-- the queue advisory lock.
CREATE FUNCTION hubsync._evaluate(p_types text[], p_ids bigint[], p_baseline boolean[],
    p_gone jsonb[], p_force boolean DEFAULT false) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count int;
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN 0;
    END IF;

    -- Lock the open entries first, in id order like every other writer.
    -- An approval in progress then finishes first, so the refresh below
    -- sees it and sends the entry back to review.  A rejection in
    -- progress finishes first too, so the change opens a new entry.
    PERFORM 1
    FROM hubsync.quickbooks_transfer_queue q
    JOIN unnest(p_types, p_ids) AS c(entity_type, hubspot_id)
      ON q.entity_type = c.entity_type AND q.hubspot_id = c.hubspot_id
    WHERE q.status IN ('pending_review', 'approved')
    ORDER BY q.id
    FOR UPDATE OF q;

    WITH candidates AS (
        SELECT * FROM unnest(p_types, p_ids, p_baseline, p_gone)
                      AS c(entity_type, hubspot_id, baseline, gone)
    ),
    current AS (
        SELECT * FROM hubsync._snapshots(p_types, p_ids)
    ),
    snapped AS (
        SELECT c.entity_type, c.hubspot_id, c.baseline,
               coalesce(cur.data, hubsync._gone_snapshot(c.entity_type, c.hubspot_id, st.seen_data, c.gone)) AS data,
               st.seen_data, st.books_data
        FROM candidates c
        LEFT JOIN current cur USING (entity_type, hubspot_id)
        LEFT JOIN hubsync.transfer_state st USING (entity_type, hubspot_id)
    ),
    decided AS (
        SELECT s.*,
               s.baseline OR p_force OR s.seen_data IS NULL OR hubsync._diff(s.seen_data, s.data) <> '{}' AS changed,
               CASE WHEN hubsync._is_gone(s.data) THEN 'delete'
                    WHEN NOT hubsync._in_books(s.entity_type, s.books_data) THEN 'create'
                    ELSE 'update' END AS action,
               hubsync._diff(s.books_data, s.data) AS changes
        FROM snapped s
    ),
    judged AS (
        SELECT d.*,
               CASE WHEN d.action = 'delete' THEN NOT hubsync._in_books(d.entity_type, d.books_data)
                    ELSE d.books_data IS NOT NULL AND d.changes = '{}' END AS no_op,
               hubsync._reasons(d.entity_type, d.books_data, d.data, d.changes) AS reasons
        FROM decided d
        WHERE d.changed AND NOT d.baseline
    ),
    state AS (
        INSERT INTO hubsync.transfer_state AS t
            (entity_type, hubspot_id, seen_data, seen_at, books_data, books_source, books_at)
        SELECT d.entity_type, d.hubspot_id, d.data, now(),
               CASE WHEN d.baseline THEN d.data END,
               CASE WHEN d.baseline THEN 'baseline' END,
               CASE WHEN d.baseline THEN now() END
        FROM decided d
        WHERE d.changed
        ON CONFLICT (entity_type, hubspot_id) DO UPDATE
            SET seen_data = excluded.seen_data,
                seen_at = excluded.seen_at,
                books_data = coalesce(t.books_data, excluded.books_data),
                books_source = coalesce(t.books_source, excluded.books_source),
                books_at = coalesce(t.books_at, excluded.books_at)
    ),
    withdrawn AS (
        UPDATE hubsync.quickbooks_transfer_queue q
           SET status = 'withdrawn',
               entity_data = j.data,
               changes = j.changes,
               version = q.version + CASE WHEN (q.entity_data, q.changes) IS DISTINCT FROM (j.data, j.changes)
                                          THEN 1 ELSE 0 END,
               approved_at = NULL,
               approved_by = NULL
          FROM judged j
         WHERE j.no_op
           AND q.entity_type = j.entity_type AND q.hubspot_id = j.hubspot_id
           AND q.status IN ('pending_review', 'approved')
        RETURNING q.id
    ),
    refreshed AS (
        UPDATE hubsync.quickbooks_transfer_queue q
           SET action_type = j.action,
               trigger_reason = coalesce(j.reasons[1], 'modified'),
               reasons = coalesce(nullif(j.reasons, '{}'), ARRAY['modified']),
               entity_data = j.data,
               changes = j.changes,
               warnings = hubsync._warnings(j.entity_type, j.data),
               version = q.version + 1,
               status = 'pending_review',
               approved_at = NULL,
               approved_by = NULL
          FROM judged j
         WHERE NOT j.no_op
           AND q.entity_type = j.entity_type AND q.hubspot_id = j.hubspot_id
           AND q.status IN ('pending_review', 'approved')
           AND (q.entity_data, q.changes) IS DISTINCT FROM (j.data, j.changes)
        RETURNING q.id
    ),
    -- No other transaction can open an entry meanwhile: only holders of
    -- the queue advisory lock create entries.
    created AS (
        INSERT INTO hubsync.quickbooks_transfer_queue
            (entity_type, hubspot_id, action_type, trigger_reason, reasons, entity_data, changes, warnings)
        SELECT j.entity_type, j.hubspot_id, j.action, coalesce(j.reasons[1], 'modified'),
               coalesce(nullif(j.reasons, '{}'), ARRAY['modified']), j.data, j.changes,
               hubsync._warnings(j.entity_type, j.data)
        FROM judged j
        WHERE NOT j.no_op
          AND NOT EXISTS (SELECT 1 FROM hubsync.quickbooks_transfer_queue q
                          WHERE q.entity_type = j.entity_type AND q.hubspot_id = j.hubspot_id
                            AND q.status IN ('pending_review', 'approved'))
        ORDER BY j.entity_type, j.hubspot_id
        RETURNING id
    )
    SELECT (SELECT count(*) FROM withdrawn) + (SELECT count(*) FROM refreshed)
           + (SELECT count(*) FROM created) INTO v_count;

    -- Duplicate flags of the open entries of these types, which a new,
    -- renamed or removed record can change.  Entries locked by a reviewer
    -- right now are left for the next flush rather than waited for.
    WITH open_entries AS (
        SELECT q.id, hubsync._duplicates(q.entity_type, q.hubspot_id, q.entity_data) AS dups
        FROM hubsync.quickbooks_transfer_queue q
        WHERE q.status IN ('pending_review', 'approved')
          AND q.entity_type = ANY (p_types)
        ORDER BY q.id
        FOR UPDATE SKIP LOCKED
    )
    UPDATE hubsync.quickbooks_transfer_queue q
       SET duplicate_of = o.dups, possible_duplicate = o.dups IS NOT NULL
      FROM open_entries o
     WHERE q.id = o.id AND q.duplicate_of IS DISTINCT FROM o.dups;

    RETURN v_count;
END;
$$;

-- ---------------------------------------------------------------------
-- The flush the sync calls at the end of every step
-- ---------------------------------------------------------------------

-- Turn the change_log rows visible to this transaction into queue
-- entries, and delete the rows used.  Each row names its candidates:
--   * a contact, company or invoice itself;
--   * for a line item, the invoices linked to it now.  A line item deleted
--     for good lost its links, so it names the invoices whose last
--     snapshot listed it;
--   * for a merged or deleted contact or company, the invoices whose last
--     snapshot linked it (HubSpot moves those links without a change).
-- A line-item row with no invoice yet stays in change_log for a later
-- flush (line items sync before the invoices whose links name them),
-- unless the line item is gone from the mirror and no invoice ever listed
-- it.  Contact-to-company links matter to no entry and are dropped.
-- A candidate belongs to a first load when its type's
-- sync_watermarks.last_sync_at is NULL, or when every row naming it comes
-- from a type in its first load; with hubsync.first_load = 'baseline'
-- (the default) that records the books' state instead of an entry.
-- Returns the number of queue entries created, refreshed or withdrawn.
CREATE FUNCTION hubsync._flush_changes() RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_baseline_mode boolean :=
        coalesce(current_setting('hubsync.first_load', true), 'baseline') IS DISTINCT FROM 'enqueue';
    v_first text[];
    v_types text[];
    v_ids bigint[];
    v_baseline boolean[];
    v_gone jsonb[];
BEGIN
    PERFORM hubsync._queue_lock();

    SELECT coalesce(array_agg(w.entity_type), '{}') INTO v_first
    FROM hubsync.sync_watermarks w WHERE w.last_sync_at IS NULL;

    WITH claimed AS (
        SELECT c.id, c.entity_type, c.hubspot_id, c.change_kind, c.before, c.detail,
               c.entity_type = ANY (v_first) AS first_load
        FROM hubsync.change_log c
        ORDER BY c.id
        FOR UPDATE SKIP LOCKED
    ),
    targets AS (
        SELECT c.id AS change_id, c.entity_type, c.hubspot_id, c.first_load,
               CASE WHEN c.change_kind IN ('deleted', 'merged')
                    THEN jsonb_build_object('properties', c.before, 'merged_into', c.detail->'merged_into')
               END AS gone
        FROM claimed c
        WHERE c.entity_type IN ('contacts', 'companies', 'invoices')
          AND NOT (c.entity_type = 'contacts' AND c.change_kind = 'associations_changed')
        UNION ALL
        SELECT c.id, 'invoices', s.hubspot_id, c.first_load, NULL
        FROM claimed c
        CROSS JOIN LATERAL (
            SELECT s.hubspot_id FROM hubsync.transfer_state s
            WHERE s.entity_type = 'invoices'
              AND s.seen_data @> jsonb_build_object(CASE c.entity_type WHEN 'contacts' THEN 'contact_ids'
                                                                        ELSE 'company_ids' END,
                                                    jsonb_build_array(c.hubspot_id))
            OFFSET 0
        ) AS s
        WHERE c.entity_type IN ('contacts', 'companies') AND c.change_kind IN ('deleted', 'merged')
        UNION
        -- (LATERAL ... OFFSET 0: one index lookup per row, whatever the
        -- planner guesses about the number of claimed rows.)
        SELECT c.id, 'invoices', a.from_id, c.first_load, NULL
        FROM claimed c
        CROSS JOIN LATERAL (
            SELECT a.from_id FROM hubsync.associations a
            WHERE a.to_type = 'line_items' AND a.to_id = c.hubspot_id AND a.from_type = 'invoices'
            OFFSET 0
        ) AS a
        WHERE c.entity_type = 'line_items'
        UNION
        SELECT c.id, 'invoices', s.hubspot_id, c.first_load, NULL
        FROM claimed c
        CROSS JOIN LATERAL (
            SELECT s.hubspot_id FROM hubsync.transfer_state s
            WHERE s.entity_type = 'invoices'
              AND s.seen_data @> jsonb_build_object('line_items',
                                                    jsonb_build_array(jsonb_build_object('id', c.hubspot_id)))
            OFFSET 0
        ) AS s
        WHERE c.entity_type = 'line_items' AND c.change_kind = 'deleted'
    ),
    consumed AS (
        DELETE FROM hubsync.change_log l
        USING claimed c
        WHERE l.id = c.id
          AND (EXISTS (SELECT 1 FROM targets t WHERE t.change_id = c.id)
               OR (c.entity_type = 'contacts' AND c.change_kind = 'associations_changed')
               OR (c.entity_type = 'line_items'
                   AND NOT EXISTS (SELECT 1 FROM hubsync.line_items li WHERE li.id = c.hubspot_id)))
        RETURNING l.id
    ),
    grouped AS (
        SELECT t.entity_type, t.hubspot_id,
               (t.entity_type = ANY (v_first) OR bool_and(t.first_load)) AND v_baseline_mode AS baseline,
               (array_agg(t.gone ORDER BY t.change_id DESC) FILTER (WHERE t.gone IS NOT NULL))[1] AS gone
        FROM targets t
        GROUP BY t.entity_type, t.hubspot_id
    )
    SELECT array_agg(g.entity_type ORDER BY g.entity_type, g.hubspot_id),
           array_agg(g.hubspot_id ORDER BY g.entity_type, g.hubspot_id),
           array_agg(g.baseline ORDER BY g.entity_type, g.hubspot_id),
           array_agg(g.gone ORDER BY g.entity_type, g.hubspot_id)
    INTO v_types, v_ids, v_baseline, v_gone
    FROM grouped g;

    RETURN hubsync._evaluate(v_types, v_ids, v_baseline, v_gone);
END;
$$;
COMMENT ON FUNCTION hubsync._flush_changes() IS 'Turn the change_log rows of this transaction into transfer-queue entries (called by the sync at the end of every step)';

-- ---------------------------------------------------------------------
-- Administration: enqueueing existing records and recording transfers
-- ---------------------------------------------------------------------

-- Declare that the books hold none of the existing records of a type (or
-- of all three), and enqueue every live one as a create.  Records that
-- hubsync already transferred are left alone; open entries become
-- creates (a refreshed version, back to review if approved).
CREATE FUNCTION @extschema@.hubsync_enqueue_existing(entity_type text DEFAULT NULL)
RETURNS TABLE (object_type text, enqueued bigint, already_queued bigint, already_transferred bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_types text[];
    v_ids bigint[];
    v_open bigint[];
BEGIN
    IF $1 IS NOT NULL AND $1 NOT IN ('contacts', 'companies', 'invoices') THEN
        RAISE EXCEPTION 'cannot enqueue records of type "%"', $1
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use contacts, companies or invoices, or NULL for all three.';
    END IF;
    PERFORM hubsync._queue_lock();

    CREATE TEMP TABLE hubsync_enqueue_candidates ON COMMIT DROP AS
    SELECT r.entity_type, r.hubspot_id, (s.books_source = 'transferred') IS TRUE AS transferred
    FROM (
        SELECT 'contacts'::text AS entity_type, c.id AS hubspot_id FROM hubsync.contacts c WHERE NOT c.archived
        UNION ALL
        SELECT 'companies', c.id FROM hubsync.companies c WHERE NOT c.archived
        UNION ALL
        SELECT 'invoices', i.id FROM hubsync.invoices i WHERE NOT i.archived
    ) AS r
    LEFT JOIN hubsync.transfer_state s USING (entity_type, hubspot_id)
    WHERE $1 IS NULL OR r.entity_type = $1;

    SELECT array_agg(c.entity_type ORDER BY c.entity_type, c.hubspot_id),
           array_agg(c.hubspot_id ORDER BY c.entity_type, c.hubspot_id)
    INTO v_types, v_ids
    FROM pg_temp.hubsync_enqueue_candidates c WHERE NOT c.transferred;

    SELECT array_agg(q.id) INTO v_open
    FROM hubsync.quickbooks_transfer_queue q
    JOIN pg_temp.hubsync_enqueue_candidates c USING (entity_type, hubspot_id)
    WHERE NOT c.transferred AND q.status IN ('pending_review', 'approved');

    UPDATE hubsync.transfer_state s
       SET books_data = NULL, books_source = NULL, books_queue_id = NULL, books_at = NULL
      FROM pg_temp.hubsync_enqueue_candidates c
     WHERE s.entity_type = c.entity_type AND s.hubspot_id = c.hubspot_id AND NOT c.transferred;

    IF v_ids IS NOT NULL THEN
        PERFORM hubsync._evaluate(v_types, v_ids, array_fill(false, ARRAY[cardinality(v_ids)]),
                                  array_fill(NULL::jsonb, ARRAY[cardinality(v_ids)]), true);
    END IF;

    RETURN QUERY
    SELECT t.entity_type,
           count(*) FILTER (WHERE NOT c.transferred AND q.id IS NOT NULL AND q.id <> ALL (coalesce(v_open, '{}'))),
           count(*) FILTER (WHERE NOT c.transferred AND q.id = ANY (coalesce(v_open, '{}'))),
           count(*) FILTER (WHERE c.transferred)
    FROM unnest(ARRAY['companies', 'contacts', 'invoices']) AS t(entity_type)
    LEFT JOIN pg_temp.hubsync_enqueue_candidates c USING (entity_type)
    LEFT JOIN hubsync.quickbooks_transfer_queue q
      ON q.entity_type = c.entity_type AND q.hubspot_id = c.hubspot_id
     AND q.status IN ('pending_review', 'approved')
    WHERE $1 IS NULL OR t.entity_type = $1
    GROUP BY t.entity_type
    ORDER BY t.entity_type;

    DROP TABLE pg_temp.hubsync_enqueue_candidates;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_enqueue_existing(text) IS 'For books that are empty: enqueue every live record of one type (or all) as a create for review, except records hubsync already transferred';

-- Lock an entry for the transfer side and check it is the approved
-- version the caller is sending.
CREATE FUNCTION hubsync._lock_for_transfer(p_id bigint, p_version int)
RETURNS hubsync.quickbooks_transfer_queue
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e hubsync.quickbooks_transfer_queue;
BEGIN
    SELECT q.* INTO e FROM hubsync.quickbooks_transfer_queue q WHERE q.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue entry % does not exist', p_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF e.status <> 'approved' THEN
        RAISE EXCEPTION 'queue entry % is not approved', p_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its status is %s.', e.status),
                  HINT = 'Only approved entries are transferred; a change after approval sends an entry back to review.';
    END IF;
    IF p_version IS NULL OR e.version <> p_version THEN
        RAISE EXCEPTION 'queue entry % is at version %, not version %', p_id, e.version, coalesce(p_version::text, 'NULL')
            USING ERRCODE = 'serialization_failure',
                  HINT = 'Transfer exactly the version that was approved; read the entry again.';
    END IF;
    RETURN e;
END;
$$;

-- Record that the approved version of an entry is now in QuickBooks; its
-- snapshot becomes what the books hold.  For the transfer worker, which
-- should hold the entry's row lock (SELECT ... FOR UPDATE) from before it
-- sends until this call, so that no sync can refresh the entry meanwhile.
CREATE FUNCTION @extschema@.hubsync_mark_transferred(queue_id bigint, expected_version int,
    result jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e hubsync.quickbooks_transfer_queue;
BEGIN
    e := hubsync._lock_for_transfer($1, $2);
    UPDATE hubsync.quickbooks_transfer_queue q
       SET status = 'transferred', transferred_at = now(), transfer_result = $3
     WHERE q.id = e.id;
    INSERT INTO hubsync.transfer_state AS t
        (entity_type, hubspot_id, seen_data, books_data, books_source, books_queue_id, books_at)
    VALUES (e.entity_type, e.hubspot_id, e.entity_data, e.entity_data, 'transferred', e.id, now())
    ON CONFLICT (entity_type, hubspot_id) DO UPDATE
        SET books_data = excluded.books_data, books_source = 'transferred',
            books_queue_id = excluded.books_queue_id, books_at = excluded.books_at;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_mark_transferred(bigint, int, jsonb) IS 'Transfer side: the approved version of a queue entry reached QuickBooks (result: its response)';

CREATE FUNCTION @extschema@.hubsync_mark_failed(queue_id bigint, expected_version int,
    error text, result jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e hubsync.quickbooks_transfer_queue;
BEGIN
    IF $3 IS NULL OR btrim($3) = '' THEN
        RAISE EXCEPTION 'an error text is required to mark queue entry % failed', $1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    e := hubsync._lock_for_transfer($1, $2);
    UPDATE hubsync.quickbooks_transfer_queue q
       SET status = 'failed', transfer_result = coalesce($4, '{}'::jsonb) || jsonb_build_object('error', $3)
     WHERE q.id = e.id;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_mark_failed(bigint, int, text, jsonb) IS 'Transfer side: QuickBooks refused or the transfer gave up; the entry needs a person';
