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
 * The engine is split over sync.c (runs), sync_search.c (phase 1) and
 * sync_records.c (writes and phases 2 to 4); sync_internal.h has the
 * run state they share.
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
#include "sync_internal.h"

/* Counters of the run in progress; the API layer adds its requests. */
HsRunStats *hs_current_stats = NULL;

static void load_entity(SyncRun *run, const char *entity_type);
static void load_watermark(SyncRun *run);
static void finish_run_record(SyncRun *run, const char *status, const char *error);

/* ---------------------------------------------------------------------
 * SPI helpers
 * ---------------------------------------------------------------------
 */

/* Run a statement with parameters; raise if SPI reports failure. */
void
hs_spi_execute(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
		int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "hubsync: SPI_execute_with_args failed (%d) for: %s", rc, sql);
}

/* Column of the first result row as int64 (0 when NULL). */
int64
hs_spi_int64(int column)
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
		case BOOLOID:
			return DatumGetBool(value) ? 1 : 0;
		default:
			elog(ERROR, "hubsync: unexpected result type in column %d", column);
	}
	return 0;
}

Datum
hs_int64_array_datum(List *ids)
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
List *
hs_call_ids_function(const char *sql, const char *entity_type, List *ids)
{
	Oid			types[2] = {TEXTOID, INT8ARRAYOID};
	Datum		values[2];
	bool		isnull;
	Datum		result;
	List	   *list;
	MemoryContext caller = CurrentMemoryContext;

	values[0] = CStringGetTextDatum(entity_type);
	values[1] = hs_int64_array_datum(ids);
	hs_spi_execute(sql, 2, types, values, NULL, SPI_OK_SELECT);
	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	MemoryContextSwitchTo(caller);
	list = isnull ? NIL : int64_array_to_list(result);
	SPI_freetuptable(SPI_tuptable);
	return list;
}

List *
hs_append_id(List *list, int64 id)
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
void
hs_begin_step(SyncRun *run)
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
void
hs_end_step(SyncRun *run)
{
	hs_spi_execute("SELECT hubsync._flush_changes()", 0, NULL, NULL, NULL, SPI_OK_SELECT);
	run->stats.queue_entries += hs_spi_int64(1);
	SPI_freetuptable(SPI_tuptable);

	if (run->nonatomic)
	{
		/*
		 * The run's row shows the counters of every committed step, so a
		 * run killed later still shows how far it got.
		 */
		if (!run->outcome_recorded)
			finish_run_record(run, "running", NULL);
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
void
hs_save_watermark(SyncRun *run, int64 time_ms, int64 id)
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

	/* A full load that has not written a page yet has no position. */
	indexed_before = Min(run->position_ms, run->upper_ms - run->overlap_ms);
	if (run->position_ms != PG_INT64_MIN &&
		(!run->have_indexed_before || indexed_before > run->indexed_before_ms))
	{
		run->have_indexed_before = true;
		run->indexed_before_ms = indexed_before;
	}

	values[0] = CStringGetTextDatum(run->entity_type);
	values[1] = TimestampTzGetDatum(hs_ms_to_timestamp(run->cursor_ms));
	values[2] = Int64GetDatum(run->cursor_id);
	values[3] = TimestampTzGetDatum(hs_ms_to_timestamp(run->indexed_before_ms));
	hs_spi_execute("UPDATE hubsync.sync_watermarks"
			"   SET last_modified_at = $2, last_modified_id = $3,"
			"       indexed_before = $4, updated_at = clock_timestamp()"
			" WHERE entity_type = $1",
			4, types, values, nulls, SPI_OK_UPDATE);
}

void
hs_report_progress(SyncRun *run, const char *phase)
{
	TimestampTz watermark = run->have_cursor ? hs_ms_to_timestamp(run->cursor_ms) : 0;

	hs_progress_update(run->index, phase, &run->stats, watermark);

	/* A NOTICE for every search page that wrote records, and nothing else. */
	if (hs_progress_notices && strcmp(phase, "search") == 0 &&
		run->stats.pages > run->pages_reported)
		ereport(NOTICE,
				(errmsg("hubsync: %s: %s, page %lld: %lld fetched, %lld new, %lld updated, watermark %s",
						run->entity_type, phase, (long long) run->stats.pages,
						(long long) run->stats.fetched, (long long) run->stats.inserted,
						(long long) run->stats.updated,
						watermark ? timestamptz_to_str(watermark) : "none"),
				 errhidestmt(true)));
	run->pages_reported = run->stats.pages;
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

	hs_spi_execute("SELECT entity_type FROM hubsync.object_types ORDER BY sync_order",
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
	hs_spi_execute("SELECT o.modified_property, o.mergeable, o.sync_order,"
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
	 * property list would not fit, search requests only the keys and the
	 * records are read in full with batch read, which has no such limit.
	 */
	run->search_properties_json = run->properties_json;
	run->upper_ms = PG_INT64_MAX;
	if (strlen(hs_search_body(run, SEARCH_BY_TIME, PG_INT64_MAX, true, true, 0)) > HS_MAX_SEARCH_BODY)
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
	hs_spi_execute("SELECT last_modified_at, last_modified_id, indexed_before, last_reconcile_at"
			"  FROM hubsync.sync_watermarks WHERE entity_type = $1 FOR UPDATE",
			1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		elog(ERROR, "hubsync: no sync_watermarks row for \"%s\"", run->entity_type);

	ts = result_timestamp(1, &isnull);
	run->have_cursor = !isnull;
	run->cursor_ms = isnull ? 0 : hs_timestamp_to_ms(ts);
	run->cursor_id = hs_spi_int64(2);
	ts = result_timestamp(3, &isnull);
	run->have_indexed_before = !isnull;
	run->indexed_before_ms = isnull ? 0 : hs_timestamp_to_ms(ts);
	ts = result_timestamp(4, &isnull);
	run->last_reconcile_at = isnull ? 0 : ts;
	SPI_freetuptable(SPI_tuptable);
}

static bool
mirror_is_empty(SyncRun *run)
{
	bool		empty;

	hs_spi_execute(psprintf("SELECT NOT EXISTS (SELECT 1 FROM hubsync.%s)",
							quote_identifier(run->entity_type)),
				   0, NULL, NULL, NULL, SPI_OK_SELECT);
	empty = hs_spi_int64(1) != 0;
	SPI_freetuptable(SPI_tuptable);
	return empty;
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
	hs_spi_execute("INSERT INTO hubsync.sync_runs (entity_type, status, started_at, finished_at,"
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
	hs_spi_execute("UPDATE hubsync.sync_runs SET status = 'failed', finished_at = clock_timestamp(),"
			"       error = 'the run ended without recording a result (its backend was"
			" terminated, the server restarted, or the failure could not be written);"
			" committed steps were kept'"
			" WHERE entity_type = $1 AND status = 'running'",
			1, types, values, NULL, SPI_OK_UPDATE);

	values[1] = TimestampTzGetDatum(run->started_at);
	values[2] = CStringGetTextDatum(run->mode == HS_SYNC_RECONCILE ? "reconcile" : "incremental");
	hs_spi_execute("INSERT INTO hubsync.sync_runs (entity_type, status, started_at, mode, pid,"
			"  watermark_before)"
			" SELECT $1, 'running', $2, $3, pg_backend_pid(), w.last_modified_at"
			"   FROM hubsync.sync_watermarks w WHERE w.entity_type = $1"
			" RETURNING id",
			3, types, values, NULL, SPI_OK_INSERT_RETURNING);
	run->run_id = hs_spi_int64(1);
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

	hs_spi_execute("UPDATE hubsync.sync_runs SET status = $2, error = $3,"
			"  finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE clock_timestamp() END,"
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
						 "   SET last_sync_at = $2, updated_at = clock_timestamp(),"
						 "       entity_count = (SELECT count(*) FROM hubsync.%s),"
						 "       last_reconcile_at = CASE WHEN $3 THEN $2 ELSE last_reconcile_at END"
						 " WHERE entity_type = $1",
						 quote_identifier(run->entity_type));
	hs_spi_execute(count_sql, 3, types, values, NULL, SPI_OK_UPDATE);

	finish_run_record(run, "ok", NULL);
	run->outcome_recorded = true;

	if (hs_run_history_retention_s > 0)
	{
		Oid			retention_type[1] = {FLOAT8OID};
		Datum		retention[1] = {Float8GetDatum((double) hs_run_history_retention_s)};

		hs_spi_execute("DELETE FROM hubsync.sync_runs"
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
		hs_begin_step(run);
		start_run_record(run);
		load_watermark(run);
		hs_end_step(run);

		/*
		 * A first load into an empty mirror reads every record, which is
		 * as good as a reconcile.  A load after hubsync_reset_watermark()
		 * is not: rows deleted in HubSpot meanwhile are simply not read.
		 */
		full_load = !run->have_cursor && mirror_is_empty(run);
		hs_run_search_phase(run);
		hs_run_archive_phase(run);
		hs_run_association_refresh(run);
		if (!full_load && reconcile_due(run))
			hs_run_reconcile(run);

		hs_begin_step(run);
		complete_run(run, full_load);
		hs_report_progress(run, "done");
		hs_end_step(run);
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
			hs_progress_end(run->index, &run->stats, error->message, false);
			hs_current_stats = previous_stats;
			MemoryContextSwitchTo(caller);
			ReThrowError(error);
		}

		/*
		 * In the caller's transaction nothing can be written now; the error
		 * waits in shared memory for the next run to record.
		 */
		release_run_lock(run);
		hs_progress_end(run->index, &run->stats, error->message, true);
		hs_current_stats = previous_stats;
		MemoryContextSwitchTo(caller);
		PG_RE_THROW();
	}
	PG_END_TRY();

	release_run_lock(run);
	hs_progress_end(run->index, &run->stats, NULL, false);
	hs_current_stats = previous_stats;

	MemoryContextSwitchTo(caller);
	result->status = "ok";
	result->stats = run->stats;
	result->finished_at = GetCurrentTimestamp();
	result->have_watermark = run->have_cursor;
	result->watermark = run->have_cursor ? hs_ms_to_timestamp(run->cursor_ms) : 0;
	MemoryContextDelete(run->run_context);
}
