-- hubsync--1.0.sql, part 20: set-based writes the C sync engine calls.
--
-- Each function takes one HubSpot response page (or the union of the pages
-- of one batch) as jsonb and writes it with one statement per table, so a
-- page costs the same few statements whether it contains 1 record or 200.
-- The C code calls them through SPI inside the transaction that also moves
-- the watermark.  None of them is meant to be called by users.

-- Property names to request for one type: the configured ones plus those
-- the sync itself depends on.
CREATE FUNCTION hubsync._request_properties(p_entity text) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(DISTINCT p ORDER BY p)
    FROM (
        SELECT property_name FROM hubsync.sync_properties WHERE entity_type = p_entity
        UNION ALL
        SELECT unnest(ARRAY['hs_object_id', 'createdate', o.modified_property]
                      || CASE WHEN o.mergeable THEN ARRAY['hs_merged_object_ids'] ELSE '{}' END
                      || CASE WHEN o.entity_type = 'invoices' THEN ARRAY['hs_createdate'] ELSE '{}' END)
        FROM hubsync.object_types o WHERE o.entity_type = p_entity
    ) AS s(p);
$$;

-- The records of one response page as rows, one per id (the newest
-- version when a page repeats an id).  The C code has checked that every
-- record has an id, a properties object and valid times.
CREATE FUNCTION hubsync._page_records(p_records jsonb)
RETURNS TABLE (id bigint, properties jsonb, created_at timestamptz, updated_at timestamptz,
               archived boolean, archived_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT ON (id) *
    FROM (
        SELECT (r->>'id')::bigint AS id,
               coalesce(r->'properties', '{}'::jsonb) AS properties,
               (r->>'createdAt')::timestamptz AS created_at,
               (r->>'updatedAt')::timestamptz AS updated_at,
               coalesce((r->>'archived')::boolean, false) AS archived,
               (r->>'archivedAt')::timestamptz AS archived_at
        FROM jsonb_array_elements(p_records) AS r
    ) AS s
    ORDER BY id, updated_at DESC NULLS LAST
$$;

-- Upsert one page of live records (from search or batch read).
--
-- A record whose properties, timestamps and archived flag are all the same
-- as stored is left untouched and counted as unchanged: re-reading a record
-- in the overlap window is not an update.  For mergeable types, rows whose
-- ids the incoming record lists in hs_merged_object_ids are removed, and
-- links pointing at them are moved to the surviving record, as HubSpot
-- itself does.  Typed columns whose source string does not parse are
-- counted in warnings.
CREATE FUNCTION hubsync._apply_records(p_entity text, p_records jsonb,
    OUT inserted int, OUT updated int, OUT unchanged int, OUT merged_away int,
    OUT warnings int)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_mergeable boolean;
BEGIN
    SELECT mergeable INTO STRICT v_mergeable
    FROM hubsync.object_types WHERE entity_type = p_entity;

    EXECUTE format($q$
        WITH incoming AS (
            SELECT * FROM hubsync._page_records($1)
        ),
        before AS (
            SELECT t.id, t.properties, t.archived
            FROM hubsync.%1$I AS t JOIN incoming USING (id)
        ),
        upserted AS (
            INSERT INTO hubsync.%1$I AS t
                (id, properties, created_at, updated_at, archived, archived_at, synced_at)
            SELECT id, properties, created_at, updated_at, archived, archived_at, now()
            FROM incoming
            ON CONFLICT (id) DO UPDATE
                SET properties = excluded.properties,
                    created_at = excluded.created_at,
                    updated_at = excluded.updated_at,
                    archived = excluded.archived,
                    archived_at = excluded.archived_at,
                    synced_at = excluded.synced_at
                WHERE (t.properties, t.created_at, t.updated_at, t.archived)
                      IS DISTINCT FROM
                      (excluded.properties, excluded.created_at, excluded.updated_at, excluded.archived)
            RETURNING t.id, t.properties, t.archived
        ),
        noted AS (
            INSERT INTO hubsync.change_log (entity_type, hubspot_id, change_kind, before, after)
            SELECT %2$L, u.id,
                   CASE WHEN b.id IS NULL THEN 'new'
                        WHEN b.archived AND NOT u.archived THEN 'restored'
                        ELSE 'modified' END,
                   b.properties, u.properties
            FROM upserted AS u LEFT JOIN before AS b USING (id)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM upserted u WHERE NOT EXISTS (SELECT 1 FROM before b WHERE b.id = u.id))::int,
               (SELECT count(*) FROM upserted u WHERE EXISTS (SELECT 1 FROM before b WHERE b.id = u.id))::int,
               (SELECT count(*) FROM incoming)::int - (SELECT count(*) FROM upserted)::int
        $q$, p_entity, p_entity)
    INTO inserted, updated, unchanged
    USING p_records;

    merged_away := 0;
    IF v_mergeable THEN
        merged_away := hubsync._remove_merged(p_entity, p_records);
    END IF;

    warnings := hubsync._count_unparsed(p_entity, p_records);
END;
$$;

-- Remove rows that HubSpot merged into a record of this page, noting each
-- as 'merged'.  Links that pointed at an absorbed record now point at the
-- survivor, as they do in HubSpot; a link the survivor already has is
-- dropped instead of duplicated.  Returns how many rows were removed.
CREATE FUNCTION hubsync._remove_merged(p_entity text, p_records jsonb) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_old bigint[];
    v_new bigint[];
    v_count int;
BEGIN
    SELECT array_agg(old_id ORDER BY old_id), array_agg(new_id ORDER BY old_id)
    INTO v_old, v_new
    FROM (
        SELECT DISTINCT ON (old_id) old_id, new_id
        FROM (
            SELECT (r->>'id')::bigint AS new_id, btrim(m)::bigint AS old_id
            FROM jsonb_array_elements(p_records) AS r,
                 regexp_split_to_table(coalesce(r->'properties'->>'hs_merged_object_ids', ''), '[;,]') AS m
            WHERE m ~ '^\s*[0-9]{1,18}\s*$'
        ) AS pairs
        WHERE old_id <> new_id
        ORDER BY old_id, new_id DESC
    ) AS merges;

    IF v_old IS NULL THEN
        RETURN 0;
    END IF;

    WITH map AS (
        SELECT * FROM unnest(v_old, v_new) AS m(old_id, new_id)
    )
    DELETE FROM hubsync.associations a
    USING map m
    WHERE a.to_type = p_entity AND a.to_id = m.old_id
      AND EXISTS (SELECT 1 FROM hubsync.associations s
                  WHERE s.from_type = a.from_type AND s.from_id = a.from_id
                    AND s.to_type = a.to_type AND s.to_id = m.new_id
                    AND s.category = a.category AND s.type_id = a.type_id);

    WITH map AS (
        SELECT * FROM unnest(v_old, v_new) AS m(old_id, new_id)
    )
    UPDATE hubsync.associations a SET to_id = m.new_id, synced_at = now()
    FROM map m
    WHERE a.to_type = p_entity AND a.to_id = m.old_id;

    DELETE FROM hubsync.associations
    WHERE from_type = p_entity AND from_id = ANY (v_old);

    EXECUTE format($q$
        WITH map AS (
            SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS m(old_id, new_id)
        ),
        removed AS (
            DELETE FROM hubsync.%1$I t USING map m
            WHERE t.id = m.old_id
            RETURNING t.id, t.properties, m.new_id
        ),
        noted AS (
            INSERT INTO hubsync.change_log (entity_type, hubspot_id, change_kind, before, detail)
            SELECT %2$L, id, 'merged', properties, jsonb_build_object('merged_into', new_id)
            FROM removed
        )
        SELECT count(*)::int FROM removed
        $q$, p_entity, p_entity)
    INTO v_count
    USING v_old, v_new;

    RETURN v_count;
END;
$$;

-- Count the typed-column values of one page that could not be parsed: a
-- non-empty source string whose generated numeric or date column would come
-- out NULL.  The list mirrors the generated columns of part 10.
CREATE FUNCTION hubsync._count_unparsed(p_entity text, p_records jsonb) RETURNS int
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*)::int
    FROM jsonb_array_elements(p_records) AS r,
         (VALUES ('invoices', 'hs_amount_billed', 'numeric'),
                 ('invoices', 'hs_balance_due', 'numeric'),
                 ('invoices', 'hs_invoice_date', 'date'),
                 ('invoices', 'hs_due_date', 'date'),
                 ('line_items', 'quantity', 'numeric'),
                 ('line_items', 'price', 'numeric'),
                 ('line_items', 'amount', 'numeric')) AS typed(entity_type, property, kind),
         LATERAL (SELECT hubsync.to_text(r->'properties'->>typed.property) AS value) AS v
    WHERE typed.entity_type = p_entity
      AND v.value IS NOT NULL
      AND CASE typed.kind
              WHEN 'numeric' THEN hubsync.to_numeric(v.value) IS NULL
              ELSE hubsync.to_date(v.value) IS NULL
          END;
$$;

-- Write one page of the recycle bin (GET ...?archived=true).  Known rows
-- are flagged archived and noted as 'archived' once; records never seen
-- live are stored as archived so the mirror stays complete.  Returns how
-- many rows became archived, new archived rows included.
CREATE FUNCTION hubsync._apply_archived(p_entity text, p_records jsonb) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count int;
BEGIN
    EXECUTE format($q$
        WITH incoming AS (
            SELECT id, properties, created_at, updated_at,
                   coalesce(archived_at, now()) AS archived_at
            FROM hubsync._page_records($1)
        ),
        before AS (
            SELECT t.id, t.properties, t.archived
            FROM hubsync.%1$I AS t JOIN incoming USING (id)
        ),
        upserted AS (
            INSERT INTO hubsync.%1$I AS t
                (id, properties, created_at, updated_at, archived, archived_at, synced_at)
            SELECT id, properties, created_at, updated_at, true, archived_at, now()
            FROM incoming
            ON CONFLICT (id) DO UPDATE
                SET archived = true,
                    archived_at = excluded.archived_at,
                    synced_at = excluded.synced_at
                WHERE NOT t.archived OR t.archived_at IS DISTINCT FROM excluded.archived_at
            RETURNING t.id, t.properties
        ),
        newly AS (
            SELECT u.id, b.properties
            FROM upserted u JOIN before b USING (id)
            WHERE NOT b.archived
        ),
        noted AS (
            INSERT INTO hubsync.change_log (entity_type, hubspot_id, change_kind, before, after)
            SELECT %2$L, id, 'archived', properties, properties FROM newly
        )
        SELECT (SELECT count(*) FROM newly)::int
             + (SELECT count(*) FROM upserted u WHERE NOT EXISTS (SELECT 1 FROM before b WHERE b.id = u.id))::int
        $q$, p_entity, p_entity)
    INTO v_count
    USING p_records;
    RETURN v_count;
END;
$$;

-- Ids of rows stored as archived that the latest full pass over the
-- recycle bin did not list: each was restored, purged after 90 days, or
-- deleted for good.  The caller reads them back to tell which.
CREATE FUNCTION hubsync._archived_missing(p_entity text, p_seen bigint[]) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    EXECUTE format($q$
        SELECT coalesce(array_agg(id ORDER BY id), '{}')
        FROM hubsync.%I
        WHERE archived AND id <> ALL ($1)
        $q$, p_entity)
    INTO v_ids
    USING coalesce(p_seen, '{}');
    RETURN v_ids;
END;
$$;

-- Ids of live rows that are absent from a complete list of HubSpot's live
-- and archived ids, the candidates for a permanent deletion.
CREATE FUNCTION hubsync._live_missing(p_entity text, p_seen bigint[]) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    EXECUTE format($q$
        SELECT coalesce(array_agg(t.id ORDER BY t.id), '{}')
        FROM hubsync.%I AS t
        WHERE NOT EXISTS (SELECT 1 FROM unnest($1::bigint[]) AS s(id) WHERE s.id = t.id)
        $q$, p_entity)
    INTO v_ids
    USING coalesce(p_seen, '{}');
    RETURN v_ids;
END;
$$;

-- Delete rows that HubSpot no longer has at all, with every association
-- from or to them, noting each as 'deleted'.  Returns how many rows went.
CREATE FUNCTION hubsync._delete_records(p_entity text, p_ids bigint[]) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count int;
BEGIN
    DELETE FROM hubsync.associations
    WHERE (from_type = p_entity AND from_id = ANY (p_ids))
       OR (to_type = p_entity AND to_id = ANY (p_ids));

    EXECUTE format($q$
        WITH removed AS (
            DELETE FROM hubsync.%1$I WHERE id = ANY ($1) RETURNING id, properties
        ),
        noted AS (
            INSERT INTO hubsync.change_log (entity_type, hubspot_id, change_kind, before)
            SELECT %2$L, id, 'deleted', properties FROM removed
        )
        SELECT count(*)::int FROM removed
        $q$, p_entity, p_entity)
    INTO v_count
    USING p_ids;
    RETURN v_count;
END;
$$;

-- Replace the stored associations from a set of parent records to one
-- target type with what HubSpot returned for them.  p_results is the union
-- of the "results" arrays of every page of a v4 batch read for exactly
-- p_from_ids; a parent missing from it has no associations left.  Each
-- parent whose set of target ids changed is noted as associations_changed,
-- with the added and removed ids.  Returns the number of parents noted.
CREATE FUNCTION hubsync._replace_associations(p_from_type text, p_to_type text,
    p_from_ids bigint[], p_results jsonb) RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_changed int;
BEGIN
    WITH incoming AS (
        SELECT DISTINCT
               (res->'from'->>'id')::bigint AS from_id,
               (t->>'toObjectId')::bigint AS to_id,
               (a->>'typeId')::int AS type_id,
               coalesce(a->>'category', 'HUBSPOT_DEFINED') AS category,
               a->>'label' AS label
        FROM jsonb_array_elements(p_results) AS res,
             jsonb_array_elements(res->'to') AS t,
             jsonb_array_elements(t->'associationTypes') AS a
        WHERE (res->'from'->>'id')::bigint = ANY (p_from_ids)
    ),
    -- HubSpot hides the links of a record in its recycle bin and shows them
    -- again when the record is restored, so links to a target stored as
    -- archived are kept rather than replaced.
    archived_targets AS (
        SELECT id FROM hubsync.companies WHERE p_to_type = 'companies' AND archived
        UNION ALL SELECT id FROM hubsync.contacts WHERE p_to_type = 'contacts' AND archived
        UNION ALL SELECT id FROM hubsync.line_items WHERE p_to_type = 'line_items' AND archived
        UNION ALL SELECT id FROM hubsync.invoices WHERE p_to_type = 'invoices' AND archived
    ),
    old_sets AS (
        SELECT from_id, array_agg(DISTINCT to_id ORDER BY to_id) AS ids
        FROM hubsync.associations
        WHERE from_type = p_from_type AND to_type = p_to_type AND from_id = ANY (p_from_ids)
          AND to_id NOT IN (SELECT id FROM archived_targets)
        GROUP BY from_id
    ),
    new_sets AS (
        SELECT from_id, array_agg(DISTINCT to_id ORDER BY to_id) AS ids
        FROM incoming GROUP BY from_id
    ),
    removed AS (
        DELETE FROM hubsync.associations x
        WHERE x.from_type = p_from_type AND x.to_type = p_to_type
          AND x.from_id = ANY (p_from_ids)
          AND NOT EXISTS (SELECT 1 FROM incoming i
                          WHERE i.from_id = x.from_id AND i.to_id = x.to_id
                            AND i.type_id = x.type_id AND i.category = x.category)
          AND NOT EXISTS (SELECT 1 FROM archived_targets a WHERE a.id = x.to_id)
        RETURNING 1
    ),
    upserted AS (
        INSERT INTO hubsync.associations AS x
            (from_type, from_id, to_type, to_id, type_id, category, label, synced_at)
        SELECT p_from_type, from_id, p_to_type, to_id, type_id, category, label, now()
        FROM incoming
        ON CONFLICT (from_type, from_id, to_type, to_id, category, type_id) DO UPDATE
            SET label = excluded.label, synced_at = excluded.synced_at
            WHERE x.label IS DISTINCT FROM excluded.label
        RETURNING 1
    ),
    diffs AS (
        SELECT f.from_id,
               coalesce(n.ids, '{}') AS new_ids,
               coalesce(o.ids, '{}') AS old_ids
        FROM unnest(p_from_ids) AS f(from_id)
        LEFT JOIN old_sets o USING (from_id)
        LEFT JOIN new_sets n USING (from_id)
        WHERE coalesce(n.ids, '{}') IS DISTINCT FROM coalesce(o.ids, '{}')
    ),
    noted AS (
        INSERT INTO hubsync.change_log (entity_type, hubspot_id, change_kind, detail)
        SELECT p_from_type, d.from_id, 'associations_changed',
               jsonb_build_object(
                   'to_type', p_to_type,
                   'added', (SELECT coalesce(jsonb_agg(i ORDER BY i), '[]') FROM unnest(d.new_ids) i
                             WHERE i <> ALL (d.old_ids)),
                   'removed', (SELECT coalesce(jsonb_agg(i ORDER BY i), '[]') FROM unnest(d.old_ids) i
                               WHERE i <> ALL (d.new_ids)))
        FROM diffs d
        RETURNING 1
    )
    SELECT count(*)::int INTO v_changed FROM noted;
    RETURN v_changed;
END;
$$;

-- Parents whose associations a run reads again although the parents did
-- not change, because HubSpot does not bump the last-modified time when
-- only a link changes.  Every run does so for invoices that can still
-- change hands (draft and open ones), minus those it already read; a
-- reconcile (p_all) does so for every live parent of the type.
CREATE FUNCTION hubsync._association_refresh_ids(p_entity text, p_exclude bigint[],
    p_all boolean DEFAULT false) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF p_all THEN
        EXECUTE format('SELECT coalesce(array_agg(id ORDER BY id), ''{}'') FROM hubsync.%I WHERE NOT archived',
                       p_entity)
        INTO v_ids;
    ELSIF p_entity = 'invoices' THEN
        SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO v_ids
        FROM hubsync.invoices
        WHERE NOT archived
          AND (status IS NULL OR status IN ('draft', 'open'))
          AND id <> ALL (coalesce(p_exclude, '{}'));
    ELSE
        v_ids := '{}';
    END IF;
    RETURN v_ids;
END;
$$;
