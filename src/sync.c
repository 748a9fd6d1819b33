/*-------------------------------------------------------------------------
 *
 * sync.c
 *	  The incremental sync engine and its watermark cursor.
 *
 * One run of one object type has four phases:
 *
 *	1. search: every record modified since the watermark, read through the
 *	   CRM search API sorted by last-modified time ascending, 200 a page;
 *	2. archive scan: the recycle bin (list endpoint, archived=true), which
 *	   search never returns and archiving does not make "modified";
 *	3. association refresh: links of invoices that can still change, since
 *	   HubSpot does not bump last-modified when only a link changes;
 *	4. reconcile, when due: a full list of ids, to find records deleted for
 *	   good, and a re-read of every parent's associations.
 *
 * Each page is one step: its rows, its associations, the queue entries
 * derived from them and the watermark are written together.  A run called
 * with SELECT keeps all steps in the caller's transaction; a run called by
 * the procedure hubsync_run() commits after every step, so a large initial
 * load is resumable and a killed run continues from its last step.
 *
 * The cursor.  Search pages are requested by keyset, never by offset:
 * every request starts at the last-modified time reached so far
 * (GTE), so offset paging can neither skip records that move while the
 * run pages nor run into the 10,000-result cap of one query.  Records at
 * the boundary time that the previous page already wrote are skipped.
 * When a whole page shares one millisecond, which happens when more than
 * a page of records were stamped together, the run drains that
 * millisecond by record id (EQ time, GT id, sorted by hs_object_id) and
 * then continues after it.  The stored watermark (last_modified_at,
 * last_modified_id) therefore always means: every record ordered at or
 * before it by (time, id) has been written.
 *
 * Index lag.  Search may show a write up to about a minute late.  Every
 * run pins its upper bound to its start time, and records in
 * sync_watermarks.indexed_before that everything modified more than
 * hubsync.search_overlap before that bound was visible.  The next run
 * re-reads from indexed_before when that is earlier than the watermark; a
 * re-read record that has not changed is not an update.
 *
 * NOTE: the upper bound and indexed_before come from this server's clock,
 * while HubSpot stamps records with its own, so clock skew beyond
 * hubsync.search_overlap can delay (never lose) a record until a later run
 * re-reads its time range only if the skew makes the bound run ahead.
 *
 * src/sync.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "hubspot.h"
#include "progress.h"
#include "sync.h"

/*
 * Advisory lock key for "a run of this type is in progress": the first
 * key half spells "HSNC", the second is the type's sync_order.  Operators
 * see these locks in pg_locks as advisory locks with classid 1213418051.
 */
#define HS_LOCK_CLASSID 0x48534E43

/* HubSpot's limit on the length of a search request body. */
#define HS_MAX_SEARCH_BODY 3000

/* Ids of records at the boundary time that the previous page wrote. */
typedef struct BoundarySet
{
	int64		time_ms;
	int			count;
	int			capacity;
	int64	   *ids;
} BoundarySet;

typedef struct SyncRun
{
	char	   *entity_type;
	int			index;			/* sync_order - 1: progress slot, lock key */
	char	   *modified_property;
	bool		mergeable;
	List	   *child_types;	/* association targets read from this type */
	char	   *properties_json;	/* all requested properties */
	char	   *search_properties_json; /* what search requests */
	bool		search_needs_batch_read;	/* full list would exceed 3,000 chars */
	char	   *properties_csv;

	bool		nonatomic;
	HsSyncMode	mode;
	int64		run_id;
	HsRunStats	stats;
	TimestampTz started_at;
	int64		upper_ms;		/* search upper bound: the run's start */
	int64		overlap_ms;

	/* Stored sync state, kept up to date as steps are written. */
	bool		have_cursor;
	int64		cursor_ms;
	int64		cursor_id;
	bool		have_indexed_before;
	int64		indexed_before_ms;
	TimestampTz last_reconcile_at;	/* 0 when never */

	/* The search position: every record modified before it is written. */
	int64		position_ms;

	BoundarySet boundary;
	List	   *refreshed_ids;	/* parents whose associations were read */
	List	   *archived_seen;	/* ids listed in the recycle bin this run */

	bool		in_step;
	ResourceOwner step_owner;
	MemoryContext run_context;
	MemoryContext page_context;
} SyncRun;

/* Counters of the run in progress; the API layer adds its requests. */
HsRunStats *hs_current_stats = NULL;

static void load_entity(SyncRun *run, const char *entity_type);
static void load_watermark(SyncRun *run);
static void run_search_phase(SyncRun *run);
static void run_archive_phase(SyncRun *run);
static void run_association_refresh(SyncRun *run);
static void run_reconcile(SyncRun *run);

/* ---------------------------------------------------------------------
 * SPI helpers
 * ---------------------------------------------------------------------
 */

/* Run a statement with parameters; raise if SPI reports failure. */
static void
execute(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
		int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "hubsync: SPI_execute_with_args failed (%d) for: %s", rc, sql);
}

/* Column of the first result row as int64 (0 when NULL). */
static int64
result_int64(int column)
{
	bool		isnull;
	Datum		value;

	if (SPI_processed < 1)
		return 0;
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, column, &isnull);
	if (isnull)
		return 0;
	switch (SPI_gettypeid(SPI_tuptable->tupdesc, column))
	{
		case INT4OID:
			return DatumGetInt32(value);
		case INT8OID:
			return DatumGetInt64(value);
		default:
			elog(ERROR, "hubsync: unexpected result type in column %d", column);
	}
	return 0;
}

static Datum
int64_array_datum(List *ids)
{
	Datum	   *elements = palloc(sizeof(Datum) * Max(list_length(ids), 1));
	int			n = 0;
	ListCell   *cell;

	foreach(cell, ids)
		elements[n++] = Int64GetDatum(*(int64 *) lfirst(cell));
	return PointerGetDatum(construct_array(elements, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static List *
int64_array_to_list(Datum array_datum)
{
	ArrayType  *array = DatumGetArrayTypeP(array_datum);
	Datum	   *elements;
	bool	   *nulls;
	int			count;
	List	   *result = NIL;

	deconstruct_array(array, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elements, &nulls, &count);
	for (int i = 0; i < count; i++)
	{
		int64	   *id = palloc(sizeof(int64));

		*id = DatumGetInt64(elements[i]);
		result = lappend(result, id);
	}
	return result;
}

/* Call a hubsync function (entity, int8[]) returning int8[] as a list. */
static List *
call_ids_function(const char *sql, const char *entity_type, List *ids)
{
	Oid			types[2] = {TEXTOID, INT8ARRAYOID};
	Datum		values[2];
	bool		isnull;
	Datum		result;
	List	   *list;
	MemoryContext caller = CurrentMemoryContext;

	values[0] = CStringGetTextDatum(entity_type);
	values[1] = int64_array_datum(ids);
	execute(sql, 2, types, values, NULL, SPI_OK_SELECT);
	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	MemoryContextSwitchTo(caller);
	list = isnull ? NIL : int64_array_to_list(result);
	SPI_freetuptable(SPI_tuptable);
	return list;
}

static List *
append_id(List *list, int64 id)
{
	int64	   *copy = palloc(sizeof(int64));

	*copy = id;
	return lappend(list, copy);
}

/* ---------------------------------------------------------------------
 * Steps: the unit that commits together
 * ---------------------------------------------------------------------
 */

/*
 * Start a step.  In a committing run each step is a subtransaction of
 * the transaction it commits with, so that a failure can be rolled back
 * to the last committed step and still be recorded in sync_runs.
 */
static void
begin_step(SyncRun *run)
{
	if (run->nonatomic && !run->in_step)
	{
		run->step_owner = CurrentResourceOwner;
		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(run->page_context);
		run->in_step = true;
	}
	MemoryContextSwitchTo(run->page_context);
}

/* Write the step's queue entries and, in a committing run, commit it. */
static void
end_step(SyncRun *run)
{
	execute("SELECT hubsync._flush_changes()", 0, NULL, NULL, NULL, SPI_OK_SELECT);
	run->stats.queue_entries += result_int64(1);
	SPI_freetuptable(SPI_tuptable);

	if (run->nonatomic)
	{
		ReleaseCurrentSubTransaction();
		CurrentResourceOwner = run->step_owner;
		run->in_step = false;
		SPI_commit();
		SPI_start_transaction();
	}
	MemoryContextSwitchTo(run->run_context);
	MemoryContextReset(run->page_context);
}

/* Store the cursor, moving it only forward, in the current step. */
static void
save_watermark(SyncRun *run, int64 time_ms, int64 id)
{
	Oid			types[4] = {TEXTOID, TIMESTAMPTZOID, INT8OID, TIMESTAMPTZOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	int64		indexed_before;

	if (!run->have_cursor || time_ms > run->cursor_ms ||
		(time_ms == run->cursor_ms && id > run->cursor_id))
	{
		run->have_cursor = true;
		run->cursor_ms = time_ms;
		run->cursor_id = id;
	}

	indexed_before = Min(run->position_ms, run->upper_ms - run->overlap_ms);
	if (!run->have_indexed_before || indexed_before > run->indexed_before_ms)
	{
		run->have_indexed_before = true;
		run->indexed_before_ms = indexed_before;
	}

	values[0] = CStringGetTextDatum(run->entity_type);
	values[1] = TimestampTzGetDatum(hs_ms_to_timestamp(run->cursor_ms));
	values[2] = Int64GetDatum(run->cursor_id);
	values[3] = TimestampTzGetDatum(hs_ms_to_timestamp(run->indexed_before_ms));
	execute("UPDATE hubsync.sync_watermarks"
			"   SET last_modified_at = $2, last_modified_id = $3,"
			"       indexed_before = $4, updated_at = now()"
			" WHERE entity_type = $1",
			4, types, values, nulls, SPI_OK_UPDATE);
}

static void
report_progress(SyncRun *run, const char *phase)
{
	TimestampTz watermark = run->have_cursor ? hs_ms_to_timestamp(run->cursor_ms) : 0;

	hs_progress_update(run->index, phase, &run->stats, watermark);
	if (hs_progress_notices)
		ereport(NOTICE,
				(errmsg("hubsync: %s: %s, page %lld: %lld fetched, %lld new, %lld updated, watermark %s",
						run->entity_type, phase, (long long) run->stats.pages,
						(long long) run->stats.fetched, (long long) run->stats.inserted,
						(long long) run->stats.updated,
						watermark ? timestamptz_to_str(watermark) : "none"),
				 errhidestmt(true)));
}

/* ---------------------------------------------------------------------
 * Records and pages
 * ---------------------------------------------------------------------
 */

/* Parse a HubSpot record id; raise for anything but a positive integer. */
static int64
parse_record_id(const char *text, const char *entity_type)
{
	char	   *end;
	int64		id;

	if (text == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("HubSpot returned a %s record without an id", entity_type),
				 errhint("Nothing from this response was written; the next run retries it.")));
	errno = 0;
	id = strtoi64(text, &end, 10);
	if (errno != 0 || *end != '\0' || end == text || id <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("HubSpot returned an invalid %s record id \"%s\"", entity_type, text),
				 errhint("Nothing from this response was written; the next run retries it.")));
	return id;
}

/*
 * Parse a HubSpot time: ISO-8601 with an explicit zone, as HubSpot sends
 * in responses, or epoch milliseconds.
 */
static int64
parse_hubspot_time(const char *text, const char *entity_type, int64 id)
{
	bool		digits = (text != NULL && text[0] != '\0');
	Datum		value;

	if (text == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("HubSpot returned %s record %lld without a last-modified time",
						entity_type, (long long) id),
				 errhint("Nothing from this response was written; the next run retries it.")));
	for (const char *p = text; *p; p++)
		if (*p < '0' || *p > '9')
			digits = false;
	if (digits)
		return strtoi64(text, NULL, 10);

	value = DirectFunctionCall3(timestamptz_in, CStringGetDatum(text),
								ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	return hs_timestamp_to_ms(DatumGetTimestampTz(value));
}

/* Id and last-modified time of one record of a response. */
static void
record_key(SyncRun *run, JsonbContainer *record, int64 *id, int64 *time_ms)
{
	JsonbContainer *properties = hs_json_container(hs_json_key(record, "properties"));
	char	   *modified;

	*id = parse_record_id(hs_json_string(hs_json_key(record, "id")), run->entity_type);
	modified = hs_json_string(hs_json_key(properties, run->modified_property));
	if (modified == NULL || modified[0] == '\0')
		modified = hs_json_string(hs_json_key(record, "updatedAt"));
	*time_ms = parse_hubspot_time(modified, run->entity_type, *id);
}

static bool
boundary_contains(BoundarySet *set, int64 time_ms, int64 id)
{
	if (set->count == 0 || set->time_ms != time_ms)
		return false;
	for (int i = 0; i < set->count; i++)
		if (set->ids[i] == id)
			return true;
	return false;
}

static void
boundary_reset(BoundarySet *set, int64 time_ms)
{
	set->time_ms = time_ms;
	set->count = 0;
}

static void
boundary_add(SyncRun *run, int64 id)
{
	BoundarySet *set = &run->boundary;

	if (set->count == set->capacity)
	{
		set->capacity = Max(set->capacity * 2, 16);
		set->ids = set->ids ?
			repalloc(set->ids, sizeof(int64) * set->capacity) :
			MemoryContextAlloc(run->run_context, sizeof(int64) * set->capacity);
	}
	set->ids[set->count++] = id;
}

/* Serialize array elements as the text of a JSON array. */
static void
append_container(StringInfo buf, JsonbContainer *container)
{
	if (buf->len > 1)
		appendStringInfoChar(buf, ',');
	(void) JsonbToCString(buf, container, 256);
}

static Jsonb *
finish_json_array(StringInfo buf)
{
	appendStringInfoChar(buf, ']');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf->data)));
}

/*
 * Read the associations from a set of parents to one target type with the
 * v4 batch endpoint, following each parent's own paging, and replace the
 * stored set for exactly those parents.
 */
static void
refresh_associations(SyncRun *run, const char *to_type, int64 *ids, int count)
{
	for (int start = 0; start < count; start += HS_ASSOCIATION_BATCH_SIZE)
	{
		int			n = Min(HS_ASSOCIATION_BATCH_SIZE, count - start);
		StringInfoData results;
		List	   *pending_ids = NIL;
		List	   *pending_after = NIL;
		List	   *batch_ids = NIL;
		char	   *path;
		Oid			types[4] = {TEXTOID, TEXTOID, INT8ARRAYOID, JSONBOID};
		Datum		values[4];

		for (int i = 0; i < n; i++)
		{
			pending_ids = append_id(pending_ids, ids[start + i]);
			pending_after = lappend(pending_after, NULL);
			batch_ids = append_id(batch_ids, ids[start + i]);
		}

		path = psprintf("/crm/v4/associations/%s/%s/batch/read", run->entity_type, to_type);
		initStringInfo(&results);
		appendStringInfoChar(&results, '[');

		while (pending_ids != NIL)
		{
			StringInfoData body;
			HsResponse	response;
			JsonbContainer *array;
			ListCell   *id_cell;
			ListCell   *after_cell;
			List	   *next_ids = NIL;
			List	   *next_after = NIL;

			initStringInfo(&body);
			appendStringInfoString(&body, "{\"inputs\":[");
			forboth(id_cell, pending_ids, after_cell, pending_after)
			{
				if (id_cell != list_head(pending_ids))
					appendStringInfoChar(&body, ',');
				appendStringInfo(&body, "{\"id\":\"%lld\"", (long long) *(int64 *) lfirst(id_cell));
				if (lfirst(after_cell) != NULL)
				{
					appendStringInfoString(&body, ",\"after\":");
					escape_json(&body, (char *) lfirst(after_cell));
				}
				appendStringInfoChar(&body, '}');
			}
			appendStringInfoString(&body, "]}");

			response = hs_api_call("POST", path, body.data, HS_CALL_OTHER, 0);
			array = response.body ? hs_json_container(hs_json_key(&response.body->root, "results")) : NULL;
			for (int i = 0; i < hs_json_array_size(array); i++)
			{
				JsonbContainer *result = hs_json_object_at(array, i);
				JsonbContainer *paging;
				JsonbContainer *next;
				char	   *after;

				if (result == NULL)
					continue;
				append_container(&results, result);

				paging = hs_json_container(hs_json_key(result, "paging"));
				next = hs_json_container(hs_json_key(paging, "next"));
				after = hs_json_string(hs_json_key(next, "after"));
				if (after != NULL)
				{
					JsonbContainer *from = hs_json_container(hs_json_key(result, "from"));

					next_ids = append_id(next_ids,
										 parse_record_id(hs_json_string(hs_json_key(from, "id")),
														 run->entity_type));
					next_after = lappend(next_after, after);
				}
			}
			pending_ids = next_ids;
			pending_after = next_after;
		}

		values[0] = CStringGetTextDatum(run->entity_type);
		values[1] = CStringGetTextDatum(to_type);
		values[2] = int64_array_datum(batch_ids);
		values[3] = JsonbPGetDatum(finish_json_array(&results));
		execute("SELECT hubsync._replace_associations($1, $2, $3, $4)",
				4, types, values, NULL, SPI_OK_SELECT);
		SPI_freetuptable(SPI_tuptable);
	}
}

/* Refresh every association type of this parent type for a set of ids. */
static void
refresh_all_associations(SyncRun *run, List *ids)
{
	int64	   *array;
	int			n = 0;
	ListCell   *cell;

	if (run->child_types == NIL || ids == NIL)
		return;
	array = palloc(sizeof(int64) * list_length(ids));
	foreach(cell, ids)
		array[n++] = *(int64 *) lfirst(cell);

	foreach(cell, run->child_types)
		refresh_associations(run, (char *) lfirst(cell), array, n);
}

/*
 * Read full records by id with batch read, 100 at a time.  Returns the
 * union of the results as a jsonb array; ids HubSpot no longer has are
 * simply absent.  An id that HubSpot merged into another record comes
 * back as that record, under its new id.
 */
static Jsonb *
batch_read(SyncRun *run, List *ids, bool archived)
{
	StringInfoData results;
	char	   *path = psprintf("/crm/v3/objects/%s/batch/read?archived=%s",
								run->entity_type, archived ? "true" : "false");
	ListCell   *cell;
	int			n = 0;
	StringInfoData body;

	initStringInfo(&results);
	appendStringInfoChar(&results, '[');
	initStringInfo(&body);

	foreach(cell, ids)
	{
		if (n == 0)
		{
			resetStringInfo(&body);
			appendStringInfo(&body, "{\"properties\":%s,\"inputs\":[", run->properties_json);
		}
		else
			appendStringInfoChar(&body, ',');
		appendStringInfo(&body, "{\"id\":\"%lld\"}", (long long) *(int64 *) lfirst(cell));
		n++;

		if (n == HS_BATCH_READ_SIZE || lnext(ids, cell) == NULL)
		{
			HsResponse	response;
			JsonbContainer *array;

			appendStringInfoString(&body, "]}");
			/* A 404 means that none of the ids exists. */
			response = hs_api_call("POST", path, body.data, HS_CALL_OTHER, 404);
			array = (response.status != 404 && response.body) ?
				hs_json_container(hs_json_key(&response.body->root, "results")) : NULL;
			for (int i = 0; i < hs_json_array_size(array); i++)
			{
				JsonbContainer *record = hs_json_object_at(array, i);

				if (record != NULL)
					append_container(&results, record);
			}
			n = 0;
		}
	}
	return finish_json_array(&results);
}

/*
 * Write one page of live records with _apply_records() and read their
 * associations.  Returns the ids written.
 */
static List *
apply_records(SyncRun *run, Jsonb *records)
{
	Oid			types[2] = {TEXTOID, JSONBOID};
	Datum		values[2];
	JsonbContainer *array = &records->root;
	List	   *ids = NIL;
	MemoryContext caller = CurrentMemoryContext;

	for (int i = 0; i < hs_json_array_size(array); i++)
	{
		JsonbContainer *record = hs_json_object_at(array, i);

		if (record != NULL)
			ids = append_id(ids, parse_record_id(hs_json_string(hs_json_key(record, "id")),
												 run->entity_type));
	}
	if (ids == NIL)
		return NIL;

	values[0] = CStringGetTextDatum(run->entity_type);
	values[1] = JsonbPGetDatum(records);
	execute("SELECT inserted, updated, unchanged, merged_away, warnings"
			"  FROM hubsync._apply_records($1, $2)",
			2, types, values, NULL, SPI_OK_SELECT);
	run->stats.inserted += result_int64(1);
	run->stats.updated += result_int64(2);
	run->stats.unchanged += result_int64(3);
	run->stats.deleted += result_int64(4);
	run->stats.warnings += result_int64(5);
	if (result_int64(5) > 0)
		ereport(WARNING,
				(errmsg("hubsync: %s: %lld property values could not be converted for their typed columns",
						run->entity_type, (long long) result_int64(5)),
				 errdetail("The typed columns are NULL for them; the original strings are kept in properties.")));
	SPI_freetuptable(SPI_tuptable);
	MemoryContextSwitchTo(caller);

	refresh_all_associations(run, ids);
	if (run->child_types != NIL)
	{
		ListCell   *cell;
		MemoryContext old = MemoryContextSwitchTo(run->run_context);

		foreach(cell, ids)
			run->refreshed_ids = append_id(run->refreshed_ids, *(int64 *) lfirst(cell));
		MemoryContextSwitchTo(old);
	}
	return ids;
}

/* ---------------------------------------------------------------------
 * Phase 1: search
 * ---------------------------------------------------------------------
 */

typedef enum SearchKind
{
	SEARCH_BY_TIME,				/* modified >= / > lower, <= upper, by time */
	SEARCH_DRAIN				/* modified == time, id > after_id, by id */
} SearchKind;

static char *
search_body(SyncRun *run, SearchKind kind, int64 time_ms, bool have_lower,
			bool inclusive, int64 after_id)
{
	StringInfoData body;

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"filterGroups\":[{\"filters\":[");
	if (kind == SEARCH_DRAIN)
	{
		appendStringInfo(&body,
						 "{\"propertyName\":\"%s\",\"operator\":\"EQ\",\"value\":\"" INT64_FORMAT "\"},"
						 "{\"propertyName\":\"hs_object_id\",\"operator\":\"GT\",\"value\":\"" INT64_FORMAT "\"}",
						 run->modified_property, time_ms, after_id);
		appendStringInfoString(&body, "]}],\"sorts\":[{\"propertyName\":\"hs_object_id\",\"direction\":\"ASCENDING\"}]");
	}
	else
	{
		if (have_lower)
			appendStringInfo(&body,
							 "{\"propertyName\":\"%s\",\"operator\":\"%s\",\"value\":\"" INT64_FORMAT "\"},",
							 run->modified_property, inclusive ? "GTE" : "GT", time_ms);
		appendStringInfo(&body,
						 "{\"propertyName\":\"%s\",\"operator\":\"LTE\",\"value\":\"" INT64_FORMAT "\"}",
						 run->modified_property, run->upper_ms);
		appendStringInfo(&body,
						 "]}],\"sorts\":[{\"propertyName\":\"%s\",\"direction\":\"ASCENDING\"}]",
						 run->modified_property);
	}
	appendStringInfo(&body, ",\"properties\":%s,\"limit\":%d}",
					 run->search_properties_json, HS_SEARCH_PAGE_SIZE);
	return body.data;
}

/* One search response and the keys of its first and last record. */
typedef struct SearchPage
{
	JsonbContainer *results;
	int			count;
	int64		first_ms;
	int64		last_ms;
	int64		last_id;
} SearchPage;

static SearchPage
fetch_search_page(SyncRun *run, const char *body)
{
	char	   *path = psprintf("/crm/v3/objects/%s/search", run->entity_type);
	HsResponse	response = hs_api_call("POST", path, body, HS_CALL_SEARCH, 0);
	SearchPage	page = {0};
	int64		id;

	page.results = response.body ?
		hs_json_container(hs_json_key(&response.body->root, "results")) : NULL;
	page.count = hs_json_array_size(page.results);
	for (int i = 0; i < page.count; i++)
	{
		if (hs_json_object_at(page.results, i) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_JSON_TEXT),
					 errmsg("HubSpot search of %s returned a result that is not an object",
							run->entity_type),
					 errhint("Nothing from this response was written; the next run retries it.")));
	}
	if (page.count > 0)
	{
		record_key(run, hs_json_object_at(page.results, 0), &id, &page.first_ms);
		record_key(run, hs_json_object_at(page.results, page.count - 1),
				   &page.last_id, &page.last_ms);
	}
	return page;
}

/*
 * Write the records of a search page that the previous page did not
 * already write at the boundary time, and make the boundary set the ids
 * of this page's last time.  Returns the greatest id at that time.
 */
static int64
write_search_page(SyncRun *run, SearchPage *page, bool track_boundary)
{
	StringInfoData fresh;
	List	   *fresh_ids = NIL;
	int64		max_id_at_last = 0;
	BoundarySet *boundary = &run->boundary;
	int64		previous_time = boundary->time_ms;

	initStringInfo(&fresh);
	appendStringInfoChar(&fresh, '[');
	for (int i = 0; i < page->count; i++)
	{
		JsonbContainer *record = hs_json_object_at(page->results, i);
		int64		id;
		int64		time_ms;

		record_key(run, record, &id, &time_ms);
		if (time_ms == page->last_ms)
			max_id_at_last = Max(max_id_at_last, id);

		if (time_ms == previous_time && boundary_contains(boundary, time_ms, id))
			continue;
		append_container(&fresh, record);
		fresh_ids = append_id(fresh_ids, id);
	}

	/*
	 * The boundary set becomes the ids written at the page's last time.  A
	 * drain by id never returns an id twice, so it only reads the set.
	 */
	if (track_boundary && page->last_ms != previous_time)
		boundary_reset(boundary, page->last_ms);
	for (int i = 0; track_boundary && i < page->count; i++)
	{
		int64		id;
		int64		time_ms;

		record_key(run, hs_json_object_at(page->results, i), &id, &time_ms);
		if (time_ms == page->last_ms && !boundary_contains(boundary, time_ms, id))
			boundary_add(run, id);
	}

	run->stats.pages++;
	run->stats.fetched += list_length(fresh_ids);
	if (fresh_ids != NIL)
	{
		Jsonb	   *records = finish_json_array(&fresh);

		if (run->search_needs_batch_read)
			records = batch_read(run, fresh_ids, false);
		apply_records(run, records);
	}
	return max_id_at_last;
}

/*
 * Drain one millisecond by record id, starting after after_id, writing a
 * step per page.
 */
static void
drain_time(SyncRun *run, int64 time_ms, int64 after_id)
{
	for (;;)
	{
		SearchPage	page;

		CHECK_FOR_INTERRUPTS();
		begin_step(run);
		page = fetch_search_page(run, search_body(run, SEARCH_DRAIN, time_ms, true, true, after_id));
		if (page.count > 0)
		{
			write_search_page(run, &page, false);
			after_id = page.last_id;
			run->position_ms = time_ms;
			save_watermark(run, time_ms, page.last_id);
		}
		report_progress(run, "search");
		end_step(run);

		if (page.count < HS_SEARCH_PAGE_SIZE)
			break;
	}
	/* Everything at time_ms is written now. */
	boundary_reset(&run->boundary, 0);
	run->position_ms = time_ms + 1;
}

static void
run_search_phase(SyncRun *run)
{
	bool		have_lower;
	bool		inclusive;
	int64		lower_ms = 0;

	/*
	 * Exact resume from the cursor unless index lag means the range from
	 * indexed_before on must be read again.
	 */
	if (run->have_cursor &&
		(!run->have_indexed_before || run->indexed_before_ms >= run->cursor_ms))
	{
		drain_time(run, run->cursor_ms, run->cursor_id);
		have_lower = true;
		inclusive = false;
		lower_ms = run->cursor_ms;
	}
	else if (run->have_indexed_before)
	{
		have_lower = true;
		inclusive = true;
		lower_ms = run->indexed_before_ms;
	}
	else
	{
		have_lower = false;
		inclusive = true;
	}
	run->position_ms = have_lower ? lower_ms : PG_INT64_MIN;

	for (;;)
	{
		SearchPage	page;
		int64		max_id;

		CHECK_FOR_INTERRUPTS();
		begin_step(run);
		page = fetch_search_page(run, search_body(run, SEARCH_BY_TIME, lower_ms,
												  have_lower, inclusive, 0));

		if (page.count == HS_SEARCH_PAGE_SIZE && page.first_ms == page.last_ms)
		{
			/* A whole page in one millisecond: drain it by id. */
			end_step(run);
			drain_time(run, page.first_ms, 0);
			have_lower = true;
			inclusive = false;
			lower_ms = page.first_ms;
			continue;
		}

		if (page.count == 0)
		{
			run->position_ms = run->upper_ms + 1;
			if (run->have_cursor)
				save_watermark(run, run->cursor_ms, run->cursor_id);
			end_step(run);
			break;
		}

		max_id = write_search_page(run, &page, true);
		if (page.count < HS_SEARCH_PAGE_SIZE)
		{
			/* The last page: everything up to the upper bound is written. */
			run->position_ms = run->upper_ms + 1;
			save_watermark(run, page.last_ms, max_id);
			report_progress(run, "search");
			end_step(run);
			break;
		}

		/* Records before last_ms are complete; last_ms may continue. */
		run->position_ms = page.last_ms;
		save_watermark(run, page.last_ms, 0);
		report_progress(run, "search");
		end_step(run);
		have_lower = true;
		inclusive = true;
		lower_ms = page.last_ms;
	}
}

/* ---------------------------------------------------------------------
 * Phase 2: the recycle bin
 * ---------------------------------------------------------------------
 */

/* "after" cursor of a list response, copied into the run's context. */
static char *
next_after(SyncRun *run, Jsonb *body)
{
	JsonbContainer *paging;
	JsonbContainer *next;
	char	   *after;

	if (body == NULL)
		return NULL;
	paging = hs_json_container(hs_json_key(&body->root, "paging"));
	next = hs_json_container(hs_json_key(paging, "next"));
	after = hs_json_string(hs_json_key(next, "after"));
	return after ? MemoryContextStrdup(run->run_context, after) : NULL;
}

static char *
list_path(SyncRun *run, bool archived, const char *properties_csv, const char *after)
{
	return psprintf("/crm/v3/objects/%s?limit=%d&archived=%s&properties=%s%s%s",
					run->entity_type, HS_LIST_PAGE_SIZE,
					archived ? "true" : "false", properties_csv,
					after ? "&after=" : "", after ? hs_url_encode(after) : "");
}

/*
 * Settle rows that HubSpot no longer lists where the mirror expects them:
 * read them back by id, write those that still exist (restored records,
 * or the survivor of a merge), and delete the rest.
 */
static void
resolve_missing(SyncRun *run, List *ids)
{
	Jsonb	   *found = batch_read(run, ids, false);
	List	   *found_ids = apply_records(run, found);
	List	   *gone = NIL;
	ListCell   *cell;

	foreach(cell, ids)
	{
		int64		id = *(int64 *) lfirst(cell);
		bool		present = false;
		ListCell   *other;

		foreach(other, found_ids)
		{
			if (*(int64 *) lfirst(other) == id)
			{
				present = true;
				break;
			}
		}
		if (!present)
			gone = append_id(gone, id);
	}

	if (gone != NIL)
	{
		Oid			types[2] = {TEXTOID, INT8ARRAYOID};
		Datum		values[2];

		values[0] = CStringGetTextDatum(run->entity_type);
		values[1] = int64_array_datum(gone);
		execute("SELECT hubsync._delete_records($1, $2)", 2, types, values, NULL, SPI_OK_SELECT);
		run->stats.deleted += result_int64(1);
		SPI_freetuptable(SPI_tuptable);
	}
}

static void
run_archive_phase(SyncRun *run)
{
	char	   *after = NULL;
	List	   *missing;
	Oid			types[2] = {TEXTOID, JSONBOID};
	Datum		values[2];

	do
	{
		HsResponse	response;
		JsonbContainer *results;
		int			count;

		CHECK_FOR_INTERRUPTS();
		begin_step(run);
		response = hs_api_call("GET", list_path(run, true, run->properties_csv, after),
							   NULL, HS_CALL_OTHER, 0);
		results = response.body ?
			hs_json_container(hs_json_key(&response.body->root, "results")) : NULL;
		count = hs_json_array_size(results);
		if (count > 0)
		{
			MemoryContext old;

			values[0] = CStringGetTextDatum(run->entity_type);
			values[1] = JsonbPGetDatum(JsonbValueToJsonb(hs_json_key(&response.body->root, "results")));
			execute("SELECT hubsync._apply_archived($1, $2)", 2, types, values, NULL, SPI_OK_SELECT);
			run->stats.archived += result_int64(1);
			SPI_freetuptable(SPI_tuptable);

			old = MemoryContextSwitchTo(run->run_context);
			for (int i = 0; i < count; i++)
			{
				JsonbContainer *record = hs_json_object_at(results, i);

				if (record != NULL)
					run->archived_seen =
						append_id(run->archived_seen,
								  parse_record_id(hs_json_string(hs_json_key(record, "id")),
												  run->entity_type));
			}
			MemoryContextSwitchTo(old);
		}
		after = next_after(run, response.body);
		report_progress(run, "archive scan");
		end_step(run);
	} while (after != NULL);

	begin_step(run);
	missing = call_ids_function("SELECT hubsync._archived_missing($1, $2)",
								run->entity_type, run->archived_seen);
	if (missing != NIL)
		resolve_missing(run, missing);
	values[0] = CStringGetTextDatum(run->entity_type);
	execute("UPDATE hubsync.sync_watermarks SET last_archive_scan_at = now()"
			" WHERE entity_type = $1", 1, types, values, NULL, SPI_OK_UPDATE);
	end_step(run);
}

/* ---------------------------------------------------------------------
 * Phase 3: associations that change without a modified record
 * ---------------------------------------------------------------------
 */

static void
refresh_in_steps(SyncRun *run, List *ids, const char *phase)
{
	int			total = list_length(ids);

	for (int start = 0; start < total; start += HS_ASSOCIATION_BATCH_SIZE)
	{
		List	   *chunk;

		CHECK_FOR_INTERRUPTS();
		begin_step(run);
		chunk = list_copy_head(list_copy_tail(ids, start), HS_ASSOCIATION_BATCH_SIZE);
		refresh_all_associations(run, chunk);
		report_progress(run, phase);
		end_step(run);
	}
}

static void
run_association_refresh(SyncRun *run)
{
	List	   *ids;
	MemoryContext old;

	if (run->child_types == NIL)
		return;

	old = MemoryContextSwitchTo(run->run_context);
	ids = call_ids_function("SELECT hubsync._association_refresh_ids($1, $2)",
							run->entity_type, run->refreshed_ids);
	MemoryContextSwitchTo(old);
	refresh_in_steps(run, ids, "association refresh");
}

/* ---------------------------------------------------------------------
 * Phase 4: reconcile
 * ---------------------------------------------------------------------
 */

static void
run_reconcile(SyncRun *run)
{
	char	   *after = NULL;
	List	   *known = list_copy(run->archived_seen);
	List	   *missing;
	List	   *parents;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	MemoryContext old;

	/* Every live id, a list page at a time; nothing is written meanwhile. */
	do
	{
		HsResponse	response;
		JsonbContainer *results;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(run->page_context);
		response = hs_api_call("GET", list_path(run, false, "hs_object_id", after),
							   NULL, HS_CALL_OTHER, 0);
		results = response.body ?
			hs_json_container(hs_json_key(&response.body->root, "results")) : NULL;
		old = MemoryContextSwitchTo(run->run_context);
		for (int i = 0; i < hs_json_array_size(results); i++)
		{
			JsonbContainer *record = hs_json_object_at(results, i);

			if (record != NULL)
				known = append_id(known,
								  parse_record_id(hs_json_string(hs_json_key(record, "id")),
												  run->entity_type));
		}
		after = next_after(run, response.body);
		MemoryContextSwitchTo(old);
		report_progress(run, "reconcile");
		MemoryContextSwitchTo(run->run_context);
		MemoryContextReset(run->page_context);
	} while (after != NULL);

	begin_step(run);
	missing = call_ids_function("SELECT hubsync._live_missing($1, $2)", run->entity_type, known);
	if (missing != NIL)
		resolve_missing(run, missing);
	end_step(run);

	if (run->child_types != NIL)
	{
		old = MemoryContextSwitchTo(run->run_context);
		parents = call_ids_function("SELECT hubsync._association_refresh_ids($1, $2, true)",
									run->entity_type, NIL);
		MemoryContextSwitchTo(old);
		refresh_in_steps(run, parents, "association sweep");
	}

	begin_step(run);
	values[0] = CStringGetTextDatum(run->entity_type);
	execute("UPDATE hubsync.sync_watermarks SET last_reconcile_at = now()"
			" WHERE entity_type = $1", 1, types, values, NULL, SPI_OK_UPDATE);
	end_step(run);
}

/* ---------------------------------------------------------------------
 * Runs
 * ---------------------------------------------------------------------
 */

static List *
text_array_to_list(Datum array_datum)
{
	Datum	   *elements;
	bool	   *nulls;
	int			count;
	List	   *result = NIL;

	deconstruct_array(DatumGetArrayTypeP(array_datum), TEXTOID, -1, false, TYPALIGN_INT,
					  &elements, &nulls, &count);
	for (int i = 0; i < count; i++)
		if (!nulls[i])
			result = lappend(result, TextDatumGetCString(elements[i]));
	return result;
}

/*
 * List of every object type, in sync order: children and customers before
 * the invoices that refer to them.
 */
List *
hs_entity_types(void)
{
	List	   *types = NIL;
	MemoryContext caller = CurrentMemoryContext;

	execute("SELECT entity_type FROM hubsync.object_types ORDER BY sync_order",
			0, NULL, NULL, NULL, SPI_OK_SELECT);
	MemoryContextSwitchTo(caller);
	for (uint64 i = 0; i < SPI_processed; i++)
		types = lappend(types, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	SPI_freetuptable(SPI_tuptable);
	return types;
}

static void
load_entity(SyncRun *run, const char *entity_type)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	List	   *properties;
	ListCell   *cell;
	StringInfoData csv;
	char	  **names;
	int			n = 0;
	char	   *minimal[2];
	MemoryContext caller = CurrentMemoryContext;

	values[0] = CStringGetTextDatum(entity_type);
	execute("SELECT o.modified_property, o.mergeable, o.sync_order,"
			"       ARRAY(SELECT a.to_type FROM hubsync.association_types a"
			"              WHERE a.from_type = o.entity_type ORDER BY a.to_type),"
			"       hubsync._request_properties(o.entity_type)"
			"  FROM hubsync.object_types o WHERE o.entity_type = $1",
			1, types, values, NULL, SPI_OK_SELECT);
	MemoryContextSwitchTo(caller);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown HubSpot object type \"%s\"", entity_type),
				 errhint("Use one of: companies, contacts, line_items, invoices.")));

	run->entity_type = pstrdup(entity_type);
	run->modified_property = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	run->mergeable = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	run->index = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)) - 1;
	run->child_types = text_array_to_list(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
	properties = text_array_to_list(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull));
	SPI_freetuptable(SPI_tuptable);

	if (run->index < 0 || run->index >= HS_NUM_ENTITIES)
		elog(ERROR, "hubsync: object type \"%s\" has sync_order %d", entity_type, run->index + 1);

	names = palloc(sizeof(char *) * list_length(properties));
	initStringInfo(&csv);
	foreach(cell, properties)
	{
		names[n++] = (char *) lfirst(cell);
		if (csv.len > 0)
			appendStringInfoChar(&csv, ',');
		appendStringInfoString(&csv, hs_url_encode((char *) lfirst(cell)));
	}
	run->properties_csv = csv.data;

	{
		StringInfoData json;

		initStringInfo(&json);
		hs_append_json_string_array(&json, names, n);
		run->properties_json = json.data;
	}

	/*
	 * HubSpot rejects search bodies over 3,000 characters.  When the
	 * property list would not fit, search asks only for the keys and the
	 * records are read in full with batch read, which has no such limit.
	 */
	run->search_properties_json = run->properties_json;
	run->upper_ms = PG_INT64_MAX;
	if (strlen(search_body(run, SEARCH_BY_TIME, PG_INT64_MAX, true, true, 0)) > HS_MAX_SEARCH_BODY)
	{
		StringInfoData json;

		minimal[0] = "hs_object_id";
		minimal[1] = run->modified_property;
		initStringInfo(&json);
		hs_append_json_string_array(&json, minimal, 2);
		run->search_properties_json = json.data;
		run->search_needs_batch_read = true;
	}
}

static TimestampTz
result_timestamp(int column, bool *isnull)
{
	Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, column, isnull);

	return *isnull ? 0 : DatumGetTimestampTz(value);
}

static void
load_watermark(SyncRun *run)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	TimestampTz ts;

	values[0] = CStringGetTextDatum(run->entity_type);
	execute("SELECT last_modified_at, last_modified_id, indexed_before, last_reconcile_at"
			"  FROM hubsync.sync_watermarks WHERE entity_type = $1 FOR UPDATE",
			1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		elog(ERROR, "hubsync: no sync_watermarks row for \"%s\"", run->entity_type);

	ts = result_timestamp(1, &isnull);
	run->have_cursor = !isnull;
	run->cursor_ms = isnull ? 0 : hs_timestamp_to_ms(ts);
	run->cursor_id = result_int64(2);
	ts = result_timestamp(3, &isnull);
	run->have_indexed_before = !isnull;
	run->indexed_before_ms = isnull ? 0 : hs_timestamp_to_ms(ts);
	ts = result_timestamp(4, &isnull);
	run->last_reconcile_at = isnull ? 0 : ts;
	SPI_freetuptable(SPI_tuptable);
}

static bool
reconcile_due(SyncRun *run)
{
	if (run->mode == HS_SYNC_RECONCILE)
		return true;
	if (hs_reconcile_interval_s <= 0)
		return false;
	if (run->last_reconcile_at == 0)
		return true;
	return TimestampDifferenceExceeds(run->last_reconcile_at, GetCurrentTimestamp(),
									  hs_reconcile_interval_s * 1000);
}

static bool
acquire_run_lock(SyncRun *run)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, HS_LOCK_CLASSID, run->index + 1, 2);
	return LockAcquire(&tag, ExclusiveLock, run->nonatomic, true) != LOCKACQUIRE_NOT_AVAIL;
}

static void
release_run_lock(SyncRun *run)
{
	LOCKTAG		tag;

	if (!run->nonatomic)
		return;					/* a transaction lock ends with the transaction */
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, HS_LOCK_CLASSID, run->index + 1, 2);
	LockRelease(&tag, ExclusiveLock, true);
}

/* Insert a finished sync_runs row (skipped runs and recovered failures). */
static void
insert_finished_run(const char *entity_type, const char *status, TimestampTz started_at,
					TimestampTz finished_at, const HsRunStats *stats, const char *error)
{
	Oid			types[10] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID,
	INT8OID, INT8OID, INT8OID, INT8OID, INT8OID};
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(entity_type);
	values[1] = CStringGetTextDatum(status);
	values[2] = TimestampTzGetDatum(started_at);
	values[3] = TimestampTzGetDatum(finished_at);
	values[4] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[4] = error ? ' ' : 'n';
	values[5] = Int64GetDatum(stats->fetched);
	values[6] = Int64GetDatum(stats->inserted);
	values[7] = Int64GetDatum(stats->updated);
	values[8] = Int64GetDatum(stats->http_requests);
	values[9] = Int64GetDatum(stats->rate_limited);
	execute("INSERT INTO hubsync.sync_runs (entity_type, status, started_at, finished_at,"
			"  error, fetched, inserted, updated, http_requests, rate_limited, pid)"
			" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, pg_backend_pid())",
			10, types, values, nulls, SPI_OK_INSERT);
}

static void
start_run_record(SyncRun *run)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, TEXTOID};
	Datum		values[3];
	HsPendingFailure failure;

	/* A failed SELECT-started run left its error in shared memory. */
	if (hs_progress_take_failure(run->index, &failure))
		insert_finished_run(run->entity_type, "failed", failure.started_at,
							failure.failed_at, &failure.stats, failure.error);

	/*
	 * This backend holds the type's run lock, so a row still marked
	 * running belongs to a run whose backend died before recording how it
	 * ended.  Its committed steps stay; this run continues after them.
	 */
	values[0] = CStringGetTextDatum(run->entity_type);
	execute("UPDATE hubsync.sync_runs SET status = 'failed', finished_at = now(),"
			"       error = 'the run ended without recording a result: its backend was"
			" terminated or the server restarted; committed steps were kept'"
			" WHERE entity_type = $1 AND status = 'running'",
			1, types, values, NULL, SPI_OK_UPDATE);

	values[1] = TimestampTzGetDatum(run->started_at);
	values[2] = CStringGetTextDatum(run->mode == HS_SYNC_RECONCILE ? "reconcile" : "incremental");
	execute("INSERT INTO hubsync.sync_runs (entity_type, status, started_at, mode, pid,"
			"  watermark_before)"
			" SELECT $1, 'running', $2, $3, pg_backend_pid(), w.last_modified_at"
			"   FROM hubsync.sync_watermarks w WHERE w.entity_type = $1"
			" RETURNING id",
			3, types, values, NULL, SPI_OK_INSERT_RETURNING);
	run->run_id = result_int64(1);
	SPI_freetuptable(SPI_tuptable);
}

/* Update the run's sync_runs row with its outcome and counters. */
static void
finish_run_record(SyncRun *run, const char *status, const char *error)
{
	Oid			types[17];
	Datum		values[17];
	char		nulls[17];
	HsRunStats *s = &run->stats;
	int64		counters[13] = {s->fetched, s->inserted, s->updated, s->unchanged,
		s->archived, s->deleted, s->warnings, s->queue_entries, s->pages,
	s->http_requests, s->retries, s->rate_limited, 0};

	memset(nulls, ' ', sizeof(nulls));
	types[0] = INT8OID;
	values[0] = Int64GetDatum(run->run_id);
	types[1] = TEXTOID;
	values[1] = CStringGetTextDatum(status);
	types[2] = TEXTOID;
	values[2] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[2] = error ? ' ' : 'n';
	for (int i = 0; i < 12; i++)
	{
		types[3 + i] = INT8OID;
		values[3 + i] = Int64GetDatum(counters[i]);
	}
	types[15] = TIMESTAMPTZOID;
	values[15] = TimestampTzGetDatum(run->have_cursor ? hs_ms_to_timestamp(run->cursor_ms) : 0);
	nulls[15] = run->have_cursor ? ' ' : 'n';

	execute("UPDATE hubsync.sync_runs SET status = $2, error = $3, finished_at = now(),"
			"  fetched = $4, inserted = $5, updated = $6, unchanged = $7, archived = $8,"
			"  deleted = $9, warnings = $10, queue_entries = $11, pages = $12,"
			"  http_requests = $13, retries = $14, rate_limited = $15,"
			"  watermark_after = $16"
			" WHERE id = $1",
			16, types, values, nulls, SPI_OK_UPDATE);
}

/* Record a completed run and prune run history older than the retention. */
static void
complete_run(SyncRun *run, bool full_load)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, BOOLOID};
	Datum		values[3];
	char	   *count_sql;

	values[0] = CStringGetTextDatum(run->entity_type);
	values[1] = TimestampTzGetDatum(run->started_at);
	values[2] = BoolGetDatum(full_load);
	count_sql = psprintf("UPDATE hubsync.sync_watermarks"
						 "   SET last_sync_at = $2, updated_at = now(),"
						 "       entity_count = (SELECT count(*) FROM hubsync.%s),"
						 "       last_reconcile_at = CASE WHEN $3 THEN $2 ELSE last_reconcile_at END"
						 " WHERE entity_type = $1",
						 quote_identifier(run->entity_type));
	execute(count_sql, 3, types, values, NULL, SPI_OK_UPDATE);

	finish_run_record(run, "ok", NULL);

	if (hs_run_history_retention_s > 0)
	{
		Oid			retention_type[1] = {FLOAT8OID};
		Datum		retention[1] = {Float8GetDatum((double) hs_run_history_retention_s)};

		execute("DELETE FROM hubsync.sync_runs"
				" WHERE finished_at < now() - make_interval(secs => $1)",
				1, retention_type, retention, NULL, SPI_OK_DELETE);
	}
}

/*
 * Run one sync of one object type.  With nonatomic, each step commits as
 * it is written (the caller must have connected SPI with
 * SPI_OPT_NONATOMIC); otherwise everything stays in the caller's
 * transaction.  A run that finds another run of the same type in progress
 * records a skipped run and returns at once.  Failures are recorded and
 * raised.
 */
void
hs_sync_entity(const char *entity_type, bool nonatomic, HsSyncMode mode,
			   HsSyncResult *result)
{
	MemoryContext caller = CurrentMemoryContext;
	HsRunStats *previous_stats = hs_current_stats;
	SyncRun    *volatile run;
	bool		full_load = false;

	run = palloc0(sizeof(SyncRun));
	run->run_context = AllocSetContextCreate(caller, "hubsync run", ALLOCSET_DEFAULT_SIZES);
	run->page_context = AllocSetContextCreate(run->run_context, "hubsync page",
											  ALLOCSET_DEFAULT_SIZES);
	run->nonatomic = nonatomic;
	run->mode = mode;

	MemoryContextSwitchTo(run->run_context);
	load_entity(run, entity_type);
	run->started_at = GetCurrentTimestamp();
	run->upper_ms = hs_timestamp_to_ms(run->started_at);
	run->overlap_ms = hs_search_overlap_ms;

	memset(result, 0, sizeof(HsSyncResult));
	result->entity_type = MemoryContextStrdup(caller, entity_type);
	result->started_at = run->started_at;

	if (!acquire_run_lock(run))
	{
		ereport(NOTICE,
				(errmsg("hubsync: %s: another sync of this type is in progress; skipped",
						entity_type)));
		insert_finished_run(entity_type, "skipped", run->started_at, GetCurrentTimestamp(),
							&run->stats, "another sync of this type was in progress");
		SPI_freetuptable(SPI_tuptable);
		if (nonatomic)
		{
			SPI_commit();
			SPI_start_transaction();
		}
		result->status = "skipped";
		result->finished_at = GetCurrentTimestamp();
		MemoryContextSwitchTo(caller);
		MemoryContextDelete(run->run_context);
		return;
	}

	hs_current_stats = &run->stats;
	hs_progress_begin(run->index, entity_type);

	PG_TRY();
	{
		begin_step(run);
		start_run_record(run);
		load_watermark(run);
		end_step(run);

		full_load = !run->have_cursor;
		run_search_phase(run);
		run_archive_phase(run);
		run_association_refresh(run);
		if (!full_load && reconcile_due(run))
			run_reconcile(run);

		begin_step(run);
		complete_run(run, full_load);
		report_progress(run, "done");
		end_step(run);
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(run->run_context);
		error = CopyErrorData();

		if (run->nonatomic && run->in_step)
		{
			/*
			 * Undo the failed step, keep the committed ones, and record the
			 * failure durably before raising the error again.
			 */
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			CurrentResourceOwner = run->step_owner;
			run->in_step = false;
			MemoryContextSwitchTo(run->page_context);
			finish_run_record(run, run->have_cursor && run->stats.pages > 0 ? "partial" : "failed",
							  error->message);
			SPI_commit();
			SPI_start_transaction();
			release_run_lock(run);
			hs_progress_end(run->index, error->message);
			hs_current_stats = previous_stats;
			MemoryContextSwitchTo(caller);
			ReThrowError(error);
		}

		/*
		 * In the caller's transaction nothing can be written now; the error
		 * waits in shared memory for the next run to record.
		 */
		release_run_lock(run);
		hs_progress_end(run->index, error->message);
		hs_current_stats = previous_stats;
		MemoryContextSwitchTo(caller);
		PG_RE_THROW();
	}
	PG_END_TRY();

	release_run_lock(run);
	hs_progress_end(run->index, NULL);
	hs_current_stats = previous_stats;

	MemoryContextSwitchTo(caller);
	result->status = "ok";
	result->stats = run->stats;
	result->finished_at = GetCurrentTimestamp();
	result->have_watermark = run->have_cursor;
	result->watermark = run->have_cursor ? hs_ms_to_timestamp(run->cursor_ms) : 0;
	MemoryContextDelete(run->run_context);
}
