-- hubsync--1.0.sql, part 35: reviewing the transfer queue with SQL.
--
-- Reviewers approve or reject pending entries with the functions below
-- (in the extension's schema, so they are called unqualified) and read
-- the views hubsync.review_queue, hubsync.queue_summary and
-- hubsync.queue_history.  The functions are SECURITY DEFINER: a reviewer
-- has no privilege on the queue tables themselves.  Who approved is always
-- session_user, the role that logged in (inside a SECURITY DEFINER
-- function current_user is the extension owner, and a free-text argument
-- could name anyone); SET ROLE does not change it, and only a superuser
-- can.
--
-- Concurrency.  Each function first reads the entry's version without a
-- lock, then locks the row (FOR UPDATE, in id order for several rows).
-- If a sync refreshed the entry while the call waited for the lock, the
-- version differs and the call refuses: what is approved is always the
-- version the reviewer could see.  Two reviewers approving one entry: the
-- second waits for the first, then finds it no longer pending.

-- The QuickBooks effect of an entry, in words.
CREATE FUNCTION hubsync.quickbooks_action(p_entity text, p_action text, p_changes jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN p_entity = 'invoices' THEN
        CASE p_action
            WHEN 'create' THEN 'create invoice'
            WHEN 'delete' THEN 'void or delete invoice'
            ELSE CASE WHEN p_changes->'fields'->'hs_invoice_status'->>'after' = 'voided'
                      THEN 'void invoice' ELSE 'update invoice' END
        END
    ELSE
        CASE p_action
            WHEN 'create' THEN 'create customer'
            WHEN 'delete' THEN 'make customer inactive'
            ELSE 'update customer'
        END
END;
COMMENT ON FUNCTION hubsync.quickbooks_action(text, text, jsonb) IS 'What approving a queue entry does in QuickBooks, in words';

-- A jsonb value as reviewers read it.
CREATE FUNCTION hubsync._value_text(p_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN p_value IS NULL OR p_value = 'null'::jsonb THEN '(empty)'
            WHEN jsonb_typeof(p_value) = 'string' THEN p_value #>> '{}'
            ELSE p_value::text END;

-- "Label: before → after, ..." for a {name: {before, after}} object.
CREATE FUNCTION hubsync._fields_text(p_fields jsonb, p_labels jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT string_agg(format('%s: %s → %s', coalesce(p_labels->>f.key, f.key),
                             hubsync._value_text(f.value->'before'),
                             hubsync._value_text(f.value->'after')), ', ' ORDER BY f.key)
    FROM jsonb_each(coalesce(p_fields, '{}'::jsonb)) AS f;
$$;

-- What an entry changes, as one line of text.  p_labels is
-- {entity_type: {property: label}} from hubsync.tracked_fields.
CREATE FUNCTION hubsync.describe_changes(p_entity text, p_trigger text, p_changes jsonb,
    p_data jsonb, p_labels jsonb DEFAULT '{}') RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_parts text[] := '{}';
    v_labels jsonb := coalesce(p_labels->p_entity, '{}');
    v_line_labels jsonb := coalesce(p_labels->'line_items', '{}');
    v_item jsonb;
    v_kind text;
BEGIN
    IF p_trigger = 'deleted' THEN
        RETURN CASE
            WHEN p_data ? 'merged_into' THEN format('merged into %s %s in HubSpot',
                                                             CASE p_entity WHEN 'companies' THEN 'company' ELSE rtrim(p_entity, 's') END,
                                                             p_data->>'merged_into')
            WHEN coalesce((p_data->>'deleted')::boolean, false) THEN 'deleted in HubSpot'
            ELSE 'archived in HubSpot' END;
    END IF;
    IF p_trigger = 'new' THEN
        RETURN CASE p_entity
            WHEN 'invoices' THEN format('new invoice with %s line item%s',
                                        jsonb_array_length(coalesce(p_data->'line_items', '[]')),
                                        CASE WHEN jsonb_array_length(coalesce(p_data->'line_items', '[]')) = 1 THEN '' ELSE 's' END)
            ELSE 'new customer' END;
    END IF;

    IF p_changes ? 'fields' THEN
        v_parts := v_parts || hubsync._fields_text(p_changes->'fields', v_labels);
    END IF;
    IF p_changes ? 'archived' OR p_changes ? 'deleted' THEN
        v_parts := v_parts || 'restored in HubSpot'::text;
    END IF;
    IF p_changes ? 'customer' AND p_trigger <> 'new' THEN
        v_parts := v_parts || format('customer: %s → %s',
            CASE WHEN jsonb_typeof(p_changes->'customer'->'before') = 'object'
                 THEN format('%s (%s %s)', p_changes->'customer'->'before'->>'name',
                             rtrim(replace(p_changes->'customer'->'before'->>'entity_type', 'companies', 'company'), 's'),
                             p_changes->'customer'->'before'->>'id')
                 ELSE 'none' END,
            CASE WHEN jsonb_typeof(p_changes->'customer'->'after') = 'object'
                 THEN format('%s (%s %s)', p_changes->'customer'->'after'->>'name',
                             rtrim(replace(p_changes->'customer'->'after'->>'entity_type', 'companies', 'company'), 's'),
                             p_changes->'customer'->'after'->>'id')
                 ELSE 'none' END);
    END IF;
    IF p_changes ? 'billing_email' THEN
        v_parts := v_parts || format('billing email: %s → %s',
            coalesce(p_changes->'billing_email'->>'before', 'none'),
            coalesce(p_changes->'billing_email'->>'after', 'none'));
    END IF;
    FOREACH v_kind IN ARRAY ARRAY['contacts', 'companies'] LOOP
        IF p_changes ? v_kind THEN
            v_parts := v_parts || format('%s: %s → %s', v_kind,
                coalesce((SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(p_changes->v_kind->'before') AS x), 'none'),
                coalesce((SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(p_changes->v_kind->'after') AS x), 'none'));
        END IF;
    END LOOP;
    FOR v_item IN SELECT e FROM jsonb_array_elements(coalesce(p_changes->'line_items'->'added', '[]')) AS e LOOP
        v_parts := v_parts || format('line item %s added: %s, %s × %s = %s', v_item->>'id',
            hubsync._value_text(v_item->'properties'->'name'),
            hubsync._value_text(v_item->'properties'->'quantity'),
            hubsync._value_text(v_item->'properties'->'price'),
            hubsync._value_text(v_item->'properties'->'amount'));
    END LOOP;
    FOR v_item IN SELECT e FROM jsonb_array_elements(coalesce(p_changes->'line_items'->'removed', '[]')) AS e LOOP
        v_parts := v_parts || format('line item %s removed: %s, %s', v_item->>'id',
            hubsync._value_text(v_item->'properties'->'name'),
            hubsync._value_text(v_item->'properties'->'amount'));
    END LOOP;
    FOR v_item IN SELECT e FROM jsonb_array_elements(coalesce(p_changes->'line_items'->'changed', '[]')) AS e LOOP
        v_parts := v_parts || format('line item %s (%s): %s', v_item->>'id',
            hubsync._value_text(v_item->'name'),
            hubsync._fields_text(v_item->'fields', v_line_labels));
    END LOOP;
    IF cardinality(v_parts) = 0 THEN
        RETURN 'no change for QuickBooks';
    END IF;
    RETURN array_to_string(v_parts, '; ');
END;
$$;
COMMENT ON FUNCTION hubsync.describe_changes(text, text, jsonb, jsonb, jsonb) IS 'A queue entry''s changes as readable text (used by hubsync.review_queue)';

-- Labels of the tracked fields, {entity_type: {property: label}}.
CREATE FUNCTION hubsync._field_labels() RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(t.entity_type, t.labels), '{}')
    FROM (SELECT f.entity_type, jsonb_object_agg(f.property_name, f.label) AS labels
          FROM hubsync.tracked_fields f GROUP BY f.entity_type) AS t;
$$;

-- ---------------------------------------------------------------------
-- Checks shared by the review functions
-- ---------------------------------------------------------------------

-- Refuse unless entry e may be decided now: it must be in one of
-- p_statuses and, if the caller named a version, at that version; if it
-- did not, at the version the call saw before it waited for the lock.
CREATE FUNCTION hubsync._check_decidable(e hubsync.quickbooks_transfer_queue, p_verb text,
    p_statuses text[], p_expected int, p_seen int) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF e.status <> ALL (p_statuses) THEN
        RAISE EXCEPTION 'queue entry % is not pending review', e.id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Its status is %s%s.', e.status,
                                  CASE WHEN e.status IN ('approved', 'transferred', 'failed')
                                       THEN format(' (version %s approved by %s at %s)', e.version, e.approved_by, e.approved_at)
                                       WHEN e.status = 'rejected'
                                       THEN format(' (rejected by %s at %s: %s)', e.rejected_by, e.rejected_at, e.rejected_reason)
                                       ELSE '' END),
                  HINT = CASE e.status
                      WHEN 'approved' THEN 'Nothing to do: it is already approved.'
                      WHEN 'pending_review' THEN NULL
                      ELSE 'Only pending entries can be ' || p_verb || 'd; a later change in HubSpot opens a new entry.' END;
    END IF;
    IF p_expected IS NOT NULL AND e.version <> p_expected THEN
        RAISE EXCEPTION 'queue entry % is at version %, not version %', e.id, e.version, p_expected
            USING ERRCODE = 'serialization_failure',
                  DETAIL = 'The record changed in HubSpot after that version was shown; the entry now says: '
                           || hubsync.describe_changes(e.entity_type, e.trigger_reason, e.changes, e.entity_data,
                                                       hubsync._field_labels()) || '.',
                  HINT = format('Look at it again (SELECT * FROM hubsync.review_queue WHERE queue_id = %s) and %s version %s if it is right.',
                                e.id, p_verb, e.version);
    END IF;
    IF p_expected IS NULL AND e.version <> p_seen THEN
        RAISE EXCEPTION 'queue entry % changed while it was being %', e.id, p_verb || 'd'
            USING ERRCODE = 'serialization_failure',
                  DETAIL = format('A sync moved it from version %s to version %s meanwhile.', p_seen, e.version),
                  HINT = format('Look at it again (SELECT * FROM hubsync.review_queue WHERE queue_id = %s) and %s version %s if it is right.',
                                e.id, p_verb, e.version);
    END IF;
END;
$$;

-- Read an entry's version, then lock it.  Raises when it does not exist.
CREATE FUNCTION hubsync._lock_entry(p_id bigint, OUT e hubsync.quickbooks_transfer_queue, OUT seen_version int)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_id IS NULL THEN
        RAISE EXCEPTION 'queue_id must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT q.version INTO seen_version FROM hubsync.quickbooks_transfer_queue q WHERE q.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue entry % does not exist', p_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'SELECT queue_id FROM hubsync.review_queue lists the entries waiting for review.';
    END IF;
    SELECT q.* INTO e FROM hubsync.quickbooks_transfer_queue q WHERE q.id = p_id FOR UPDATE;
END;
$$;

CREATE FUNCTION hubsync._check_filters(p_entity text, p_reason text, p_ids bigint[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_entity IS NULL AND p_reason IS NULL AND p_ids IS NULL THEN
        RAISE EXCEPTION 'a filter is required'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Without entity_type, trigger_reason or queue_ids the call would decide every pending entry at once.',
                  HINT = 'Name what you mean, e.g. entity_type => ''companies'' or queue_ids => ARRAY[12, 13].';
    END IF;
    IF p_entity IS NOT NULL AND p_entity NOT IN ('contacts', 'companies', 'invoices') THEN
        RAISE EXCEPTION 'unknown queue entity type "%"', p_entity
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use contacts, companies or invoices.';
    END IF;
    IF p_reason IS NOT NULL AND p_reason NOT IN
       ('new', 'modified', 'status_changed', 'deleted', 'line_items_changed', 'associations_changed') THEN
        RAISE EXCEPTION 'unknown trigger reason "%"', p_reason
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use new, modified, status_changed, deleted, line_items_changed or associations_changed.';
    END IF;
END;
$$;

CREATE FUNCTION hubsync._check_reason(p_reason text, p_what text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_reason IS NULL OR p_reason ~ '^[[:space:]]*$' THEN
        RAISE EXCEPTION 'a reason is required to reject %', p_what
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Say why, for the audit: e.g. SELECT hubsync_reject(42, ''duplicate of INV-001234'');';
    END IF;
    RETURN btrim(p_reason, E' \t\r\n');
END;
$$;

-- ---------------------------------------------------------------------
-- Review functions
-- ---------------------------------------------------------------------

CREATE FUNCTION @extschema@.hubsync_approve(queue_id bigint, expected_version int DEFAULT NULL)
RETURNS TABLE (id bigint, status text, version int, approved_by text, approved_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    l record;
BEGIN
    l := hubsync._lock_entry($1);
    PERFORM hubsync._check_decidable(l.e, 'approve', ARRAY['pending_review'], $2, l.seen_version);
    IF hubsync._is_draft((l.e).entity_type, (l.e).entity_data) THEN
        RAISE EXCEPTION 'queue entry % is a draft invoice', $1
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('HubSpot invoice %s (%s) is a draft; QuickBooks takes open and paid invoices only.',
                                  (l.e).hubspot_id, coalesce((l.e).entity_data->'properties'->>'hs_number', 'no number')),
                  HINT = 'Wait until it is open in HubSpot (the next sync refreshes the entry), or reject it.';
    END IF;
    RETURN QUERY
    UPDATE hubsync.quickbooks_transfer_queue q
       SET status = 'approved', approved_at = now(), approved_by = session_user
     WHERE q.id = $1
    RETURNING q.id, q.status, q.version, q.approved_by, q.approved_at;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_approve(bigint, int) IS 'Approve a pending queue entry for transfer to QuickBooks; with expected_version, only if it is still that version';

CREATE FUNCTION @extschema@.hubsync_reject(queue_id bigint, reason text, expected_version int DEFAULT NULL)
RETURNS TABLE (id bigint, status text, version int, rejected_by text, rejected_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    l record;
    v_reason text := hubsync._check_reason($2, 'queue entry ' || coalesce($1::text, 'NULL'));
BEGIN
    l := hubsync._lock_entry($1);
    PERFORM hubsync._check_decidable(l.e, 'reject', ARRAY['pending_review', 'approved'], $3, l.seen_version);
    RETURN QUERY
    UPDATE hubsync.quickbooks_transfer_queue q
       SET status = 'rejected', rejected_at = now(), rejected_by = session_user,
           rejected_reason = v_reason, approved_at = NULL, approved_by = NULL
     WHERE q.id = $1
    RETURNING q.id, q.status, q.version, q.rejected_by, q.rejected_at;
END;
$$;
COMMENT ON FUNCTION @extschema@.hubsync_reject(bigint, text, int) IS 'Reject a pending (or approved, not yet transferred) queue entry; the reason is required and kept in the audit';

-- Shared body of the bulk forms.  p_reject NULL approves.
CREATE FUNCTION hubsync._decide_bulk(p_entity text, p_reason text, p_ids bigint[], p_reject text)
RETURNS TABLE (id bigint, entity text, version int, outcome text, detail text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
    v_versions int[];
BEGIN
    PERFORM hubsync._check_filters(p_entity, p_reason, p_ids);

    SELECT array_agg(q.id ORDER BY q.id), array_agg(q.version ORDER BY q.id)
    INTO v_ids, v_versions
    FROM hubsync.quickbooks_transfer_queue q
    WHERE q.status = 'pending_review'
      AND (p_entity IS NULL OR q.entity_type = p_entity)
      AND (p_reason IS NULL OR q.trigger_reason = p_reason)
      AND (p_ids IS NULL OR q.id = ANY (p_ids));

    PERFORM 1 FROM hubsync.quickbooks_transfer_queue q
    WHERE q.id = ANY (v_ids) ORDER BY q.id FOR UPDATE;

    RETURN QUERY
    WITH seen AS (
        SELECT * FROM unnest(v_ids, v_versions) AS s(id, version)
    ),
    current AS (
        SELECT q.*, s.version AS seen_version,
               CASE WHEN q.status <> 'pending_review' THEN 'status is now ' || q.status
                    WHEN q.version <> s.version
                    THEN format('changed while deciding: now version %s', q.version)
                    WHEN p_reject IS NULL AND hubsync._is_draft(q.entity_type, q.entity_data)
                    THEN 'draft invoice: QuickBooks takes open and paid invoices only'
                    WHEN p_reject IS NULL AND q.possible_duplicate
                    THEN format('possible duplicate of %s; approve it on its own', array_to_string(q.duplicate_of, ', '))
               END AS skip
        FROM hubsync.quickbooks_transfer_queue q JOIN seen s USING (id)
    ),
    decided AS (
        UPDATE hubsync.quickbooks_transfer_queue q
           SET status = CASE WHEN p_reject IS NULL THEN 'approved' ELSE 'rejected' END,
               approved_at = CASE WHEN p_reject IS NULL THEN now() END,
               approved_by = CASE WHEN p_reject IS NULL THEN session_user END,
               rejected_at = CASE WHEN p_reject IS NOT NULL THEN now() END,
               rejected_by = CASE WHEN p_reject IS NOT NULL THEN session_user END,
               rejected_reason = p_reject
          FROM current c
         WHERE q.id = c.id AND c.skip IS NULL
        RETURNING q.id
    )
    SELECT c.id, c.entity_type || ' ' || c.hubspot_id, c.version,
           CASE WHEN d.id IS NOT NULL THEN CASE WHEN p_reject IS NULL THEN 'approved' ELSE 'rejected' END
                ELSE 'skipped' END,
           c.skip
    FROM current c LEFT JOIN decided d USING (id)
    UNION ALL
    SELECT r.id, q.entity_type || ' ' || q.hubspot_id, q.version, 'skipped',
           CASE WHEN q.id IS NULL THEN 'no such entry' ELSE 'status is ' || q.status END
    FROM (SELECT DISTINCT r.id FROM unnest(p_ids) AS r(id)) AS r
    LEFT JOIN hubsync.quickbooks_transfer_queue q ON q.id = r.id
    WHERE r.id <> ALL (coalesce(v_ids, '{}'))
    ORDER BY 1;
END;
$$;

CREATE FUNCTION @extschema@.hubsync_approve_bulk(entity_type text DEFAULT NULL,
    trigger_reason text DEFAULT NULL, queue_ids bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, entity text, version int, outcome text, detail text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM hubsync._decide_bulk($1, $2, $3, NULL) $$;
COMMENT ON FUNCTION @extschema@.hubsync_approve_bulk(text, text, bigint[]) IS 'Approve the pending entries matching every given filter; drafts, possible duplicates and entries that change meanwhile are skipped and reported';

CREATE FUNCTION @extschema@.hubsync_reject_bulk(reason text, entity_type text DEFAULT NULL,
    trigger_reason text DEFAULT NULL, queue_ids bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, entity text, version int, outcome text, detail text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM hubsync._decide_bulk($2, $3, $4, hubsync._check_reason($1, 'queue entries')) $$;
COMMENT ON FUNCTION @extschema@.hubsync_reject_bulk(text, text, text, bigint[]) IS 'Reject, with one reason, the pending entries matching every given filter';

-- ---------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------

CREATE VIEW hubsync.review_queue AS
SELECT q.id AS queue_id,
       q.entity_type,
       q.hubspot_id,
       q.action_type,
       hubsync.quickbooks_action(q.entity_type, q.action_type, q.changes) AS quickbooks_action,
       q.trigger_reason,
       array_to_string(q.reasons, ', ') AS reasons,
       q.version,
       CASE q.entity_type
           WHEN 'invoices' THEN q.entity_data->'customer'->>'name'
           WHEN 'companies' THEN q.entity_data->'properties'->>'name'
           ELSE coalesce(nullif(concat_ws(' ', q.entity_data->'properties'->>'firstname',
                                          q.entity_data->'properties'->>'lastname'), ''),
                         q.entity_data->'properties'->>'email')
       END AS customer_name,
       CASE WHEN q.entity_type = 'invoices' THEN q.entity_data->'properties'->>'hs_number' END AS invoice_number,
       CASE WHEN q.entity_type = 'invoices'
            THEN hubsync.to_numeric(q.entity_data->'properties'->>'hs_amount_billed') END AS amount,
       CASE WHEN q.entity_type = 'invoices' THEN q.entity_data->'properties'->>'hs_currency' END AS currency,
       hubsync.describe_changes(q.entity_type, q.trigger_reason, q.changes, q.entity_data, l.labels) AS what_changed,
       q.possible_duplicate,
       CASE WHEN q.possible_duplicate THEN
           format('same %s as HubSpot %s %s',
                  CASE q.entity_type WHEN 'invoices' THEN 'invoice number'
                                     WHEN 'companies' THEN 'name' ELSE 'email' END,
                  CASE q.entity_type WHEN 'companies' THEN 'company' ELSE rtrim(q.entity_type, 's') END,
                  array_to_string(q.duplicate_of, ', '))
       END AS duplicate_note,
       nullif(array_to_string(q.warnings, '; '), '') AS warnings,
       date_trunc('second', now() - q.created_at) AS age,
       q.created_at,
       q.updated_at,
       format('SELECT hubsync_approve(%s, %s);', q.id, q.version) AS approve_with,
       q.changes,
       q.entity_data
FROM hubsync.quickbooks_transfer_queue q
CROSS JOIN (SELECT coalesce(jsonb_object_agg(t.entity_type, t.labels), '{}'::jsonb) AS labels
            FROM (SELECT f.entity_type, jsonb_object_agg(f.property_name, f.label) AS labels
                  FROM hubsync.tracked_fields f GROUP BY f.entity_type) AS t) AS l
WHERE q.status = 'pending_review'
ORDER BY q.id;

COMMENT ON VIEW hubsync.review_queue IS 'Queue entries waiting for review, one row each, oldest first, with a readable summary';
COMMENT ON COLUMN hubsync.review_queue.queue_id IS 'Queue entry id, for hubsync_approve and hubsync_reject';
COMMENT ON COLUMN hubsync.review_queue.entity_type IS 'contacts, companies or invoices';
COMMENT ON COLUMN hubsync.review_queue.hubspot_id IS 'HubSpot record id';
COMMENT ON COLUMN hubsync.review_queue.action_type IS 'create, update or delete';
COMMENT ON COLUMN hubsync.review_queue.quickbooks_action IS 'What approving does in QuickBooks: create, update or void invoice; create, update customer, make customer inactive';
COMMENT ON COLUMN hubsync.review_queue.trigger_reason IS 'Most significant kind of change: new, deleted, status_changed, associations_changed, modified, line_items_changed';
COMMENT ON COLUMN hubsync.review_queue.reasons IS 'Every kind of change the entry holds';
COMMENT ON COLUMN hubsync.review_queue.version IS 'Snapshot version; pass it to hubsync_approve so that only what you saw is approved';
COMMENT ON COLUMN hubsync.review_queue.customer_name IS 'The QuickBooks customer: the company name, the contact''s name, or for an invoice its customer''s';
COMMENT ON COLUMN hubsync.review_queue.invoice_number IS 'HubSpot invoice number (hs_number), for invoices';
COMMENT ON COLUMN hubsync.review_queue.amount IS 'Amount billed, for invoices';
COMMENT ON COLUMN hubsync.review_queue.currency IS 'Invoice currency (ISO code)';
COMMENT ON COLUMN hubsync.review_queue.what_changed IS 'The changes against what QuickBooks holds, in words';
COMMENT ON COLUMN hubsync.review_queue.possible_duplicate IS 'Another HubSpot record has the same invoice number, company name or email';
COMMENT ON COLUMN hubsync.review_queue.duplicate_note IS 'Which records those are';
COMMENT ON COLUMN hubsync.review_queue.warnings IS 'Problems to look at: draft, no customer, amounts that do not add up, missing email';
COMMENT ON COLUMN hubsync.review_queue.age IS 'Time since the change was first detected';
COMMENT ON COLUMN hubsync.review_queue.created_at IS 'When the change was first detected';
COMMENT ON COLUMN hubsync.review_queue.updated_at IS 'When the entry last got a new version';
COMMENT ON COLUMN hubsync.review_queue.approve_with IS 'The call that approves exactly this version';
COMMENT ON COLUMN hubsync.review_queue.changes IS 'The changes as jsonb (fields, line_items, contacts, companies)';
COMMENT ON COLUMN hubsync.review_queue.entity_data IS 'The snapshot that approval sends to QuickBooks';

CREATE VIEW hubsync.queue_summary AS
SELECT coalesce(t.entity_type, 'all') AS entity_type,
       count(q.id) FILTER (WHERE q.status = 'pending_review') AS pending_review,
       count(q.id) FILTER (WHERE q.status = 'approved') AS approved,
       count(q.id) FILTER (WHERE q.status = 'rejected') AS rejected,
       count(q.id) FILTER (WHERE q.status = 'transferred') AS transferred,
       count(q.id) FILTER (WHERE q.status = 'failed') AS failed,
       count(q.id) FILTER (WHERE q.status = 'withdrawn') AS withdrawn,
       count(q.id) FILTER (WHERE q.status = 'pending_review' AND q.possible_duplicate) AS possible_duplicates,
       date_trunc('second', now() - min(q.created_at) FILTER (WHERE q.status = 'pending_review')) AS oldest_pending_age,
       min(q.created_at) FILTER (WHERE q.status = 'pending_review') AS oldest_pending_since
FROM (VALUES (1, 'companies'), (2, 'contacts'), (3, 'invoices')) AS t(n, entity_type)
LEFT JOIN hubsync.quickbooks_transfer_queue q USING (entity_type)
GROUP BY ROLLUP ((t.n, t.entity_type))
ORDER BY t.n NULLS LAST;

COMMENT ON VIEW hubsync.queue_summary IS 'Queue entries counted by status, one row per type and a row "all", with the age of the oldest pending entry';
COMMENT ON COLUMN hubsync.queue_summary.entity_type IS 'companies, contacts, invoices, or all';
COMMENT ON COLUMN hubsync.queue_summary.pending_review IS 'Entries waiting for review';
COMMENT ON COLUMN hubsync.queue_summary.approved IS 'Entries approved and not yet transferred';
COMMENT ON COLUMN hubsync.queue_summary.rejected IS 'Entries rejected';
COMMENT ON COLUMN hubsync.queue_summary.transferred IS 'Entries transferred to QuickBooks';
COMMENT ON COLUMN hubsync.queue_summary.failed IS 'Entries whose transfer failed';
COMMENT ON COLUMN hubsync.queue_summary.withdrawn IS 'Entries withdrawn because the record went back to what the books hold';
COMMENT ON COLUMN hubsync.queue_summary.possible_duplicates IS 'Pending entries flagged as possible duplicates';
COMMENT ON COLUMN hubsync.queue_summary.oldest_pending_age IS 'Age of the oldest pending entry';
COMMENT ON COLUMN hubsync.queue_summary.oldest_pending_since IS 'When the oldest pending entry was detected';

CREATE VIEW hubsync.queue_history AS
SELECT e.id AS event_id,
       e.queue_id,
       q.entity_type,
       q.hubspot_id,
       e.event_at,
       e.actor,
       e.from_status,
       e.to_status,
       e.version,
       e.note
FROM hubsync.queue_events e
JOIN hubsync.quickbooks_transfer_queue q ON q.id = e.queue_id
ORDER BY e.id;

COMMENT ON VIEW hubsync.queue_history IS 'The audit trail of every queue entry, oldest event first';
COMMENT ON COLUMN hubsync.queue_history.event_id IS 'Audit row id (ascending in time)';
COMMENT ON COLUMN hubsync.queue_history.queue_id IS 'Queue entry';
COMMENT ON COLUMN hubsync.queue_history.entity_type IS 'contacts, companies or invoices';
COMMENT ON COLUMN hubsync.queue_history.hubspot_id IS 'HubSpot record id';
COMMENT ON COLUMN hubsync.queue_history.event_at IS 'When it happened';
COMMENT ON COLUMN hubsync.queue_history.actor IS 'Login role that made the transition (a reviewer, or the role running the sync)';
COMMENT ON COLUMN hubsync.queue_history.from_status IS 'Status before (NULL when created)';
COMMENT ON COLUMN hubsync.queue_history.to_status IS 'Status after';
COMMENT ON COLUMN hubsync.queue_history.version IS 'Entry version after the transition';
COMMENT ON COLUMN hubsync.queue_history.note IS 'What happened, in words';
