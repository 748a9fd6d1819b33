/*-------------------------------------------------------------------------
 *
 * sync_records.c
 *	  Writing records and associations, and phases 2 to 4 of a sync run:
 *	  the recycle bin, the association refresh and the reconcile.
 *
 * src/sync_records.c
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

/* Serialize array elements as the text of a JSON array. */
void
hs_append_container(StringInfo buf, JsonbContainer *container)
{
	if (buf->len > 1)
		appendStringInfoChar(buf, ',');
	(void) JsonbToCString(buf, container, 256);
}

Jsonb *
hs_finish_json_array(StringInfo buf)
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
			pending_ids = hs_append_id(pending_ids, ids[start + i]);
			pending_after = lappend(pending_after, NULL);
			batch_ids = hs_append_id(batch_ids, ids[start + i]);
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
				hs_append_container(&results, result);

				paging = hs_json_container(hs_json_key(result, "paging"));
				next = hs_json_container(hs_json_key(paging, "next"));
				after = hs_json_string(hs_json_key(next, "after"));
				if (after != NULL)
				{
					JsonbContainer *from = hs_json_container(hs_json_key(result, "from"));

					next_ids = hs_append_id(next_ids,
										 hs_parse_record_id(hs_json_string(hs_json_key(from, "id")),
														 run->entity_type));
					next_after = lappend(next_after, after);
				}
			}
			pending_ids = next_ids;
			pending_after = next_after;
		}

		values[0] = CStringGetTextDatum(run->entity_type);
		values[1] = CStringGetTextDatum(to_type);
		values[2] = hs_int64_array_datum(batch_ids);
		values[3] = JsonbPGetDatum(hs_finish_json_array(&results));
		hs_spi_execute("SELECT hubsync._replace_associations($1, $2, $3, $4)",
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
Jsonb *
hs_batch_read(SyncRun *run, List *ids, bool archived)
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
					hs_append_container(&results, record);
			}
			n = 0;
		}
	}
	return hs_finish_json_array(&results);
}

/*
 * Write one page of live records with _apply_records() and read their
 * associations.  Returns the ids written.
 */
List *
hs_apply_records(SyncRun *run, Jsonb *records)
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
			ids = hs_append_id(ids, hs_parse_record_id(hs_json_string(hs_json_key(record, "id")),
												 run->entity_type));
	}
	if (ids == NIL)
		return NIL;

	values[0] = CStringGetTextDatum(run->entity_type);
	values[1] = JsonbPGetDatum(records);
	hs_spi_execute("SELECT inserted, updated, unchanged, merged_away, warnings"
			"  FROM hubsync._apply_records($1, $2)",
			2, types, values, NULL, SPI_OK_SELECT);
	run->stats.inserted += hs_spi_int64(1);
	run->stats.updated += hs_spi_int64(2);
	run->stats.unchanged += hs_spi_int64(3);
	run->stats.deleted += hs_spi_int64(4);
	run->stats.warnings += hs_spi_int64(5);
	if (hs_spi_int64(5) > 0)
		ereport(WARNING,
				(errmsg("hubsync: %s: %lld property values could not be converted for their typed columns",
						run->entity_type, (long long) hs_spi_int64(5)),
				 errdetail("The typed columns are NULL for them; the original strings are kept in properties.")));
	SPI_freetuptable(SPI_tuptable);
	MemoryContextSwitchTo(caller);

	refresh_all_associations(run, ids);
	if (run->child_types != NIL)
	{
		ListCell   *cell;
		MemoryContext old = MemoryContextSwitchTo(run->run_context);

		foreach(cell, ids)
			run->refreshed_ids = hs_append_id(run->refreshed_ids, *(int64 *) lfirst(cell));
		MemoryContextSwitchTo(old);
	}
	return ids;
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
	Jsonb	   *found = hs_batch_read(run, ids, false);
	List	   *found_ids = hs_apply_records(run, found);
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
			gone = hs_append_id(gone, id);
	}

	if (gone != NIL)
	{
		Oid			types[2] = {TEXTOID, INT8ARRAYOID};
		Datum		values[2];

		values[0] = CStringGetTextDatum(run->entity_type);
		values[1] = hs_int64_array_datum(gone);
		hs_spi_execute("SELECT hubsync._delete_records($1, $2)", 2, types, values, NULL, SPI_OK_SELECT);
		run->stats.deleted += hs_spi_int64(1);
		SPI_freetuptable(SPI_tuptable);
	}
}

void
hs_run_archive_phase(SyncRun *run)
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
		hs_begin_step(run);
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
			hs_spi_execute("SELECT hubsync._apply_archived($1, $2)", 2, types, values, NULL, SPI_OK_SELECT);
			run->stats.archived += hs_spi_int64(1);
			SPI_freetuptable(SPI_tuptable);

			old = MemoryContextSwitchTo(run->run_context);
			for (int i = 0; i < count; i++)
			{
				JsonbContainer *record = hs_json_object_at(results, i);

				if (record != NULL)
					run->archived_seen =
						hs_append_id(run->archived_seen,
								  hs_parse_record_id(hs_json_string(hs_json_key(record, "id")),
												  run->entity_type));
			}
			MemoryContextSwitchTo(old);
		}
		after = next_after(run, response.body);
		hs_report_progress(run, "archive scan");
		hs_end_step(run);
	} while (after != NULL);

	hs_begin_step(run);
	missing = hs_call_ids_function("SELECT hubsync._archived_missing($1, $2)",
								run->entity_type, run->archived_seen);
	if (missing != NIL)
		resolve_missing(run, missing);
	values[0] = CStringGetTextDatum(run->entity_type);
	hs_spi_execute("UPDATE hubsync.sync_watermarks SET last_archive_scan_at = now()"
			" WHERE entity_type = $1", 1, types, values, NULL, SPI_OK_UPDATE);
	hs_end_step(run);
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
		hs_begin_step(run);
		chunk = list_copy_head(list_copy_tail(ids, start), HS_ASSOCIATION_BATCH_SIZE);
		refresh_all_associations(run, chunk);
		hs_report_progress(run, phase);
		hs_end_step(run);
	}
}

void
hs_run_association_refresh(SyncRun *run)
{
	List	   *ids;
	MemoryContext old;

	if (run->child_types == NIL)
		return;

	old = MemoryContextSwitchTo(run->run_context);
	ids = hs_call_ids_function("SELECT hubsync._association_refresh_ids($1, $2)",
							run->entity_type, run->refreshed_ids);
	MemoryContextSwitchTo(old);
	refresh_in_steps(run, ids, "association refresh");
}

/* ---------------------------------------------------------------------
 * Phase 4: reconcile
 * ---------------------------------------------------------------------
 */

void
hs_run_reconcile(SyncRun *run)
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
				known = hs_append_id(known,
								  hs_parse_record_id(hs_json_string(hs_json_key(record, "id")),
												  run->entity_type));
		}
		after = next_after(run, response.body);
		MemoryContextSwitchTo(old);
		hs_report_progress(run, "reconcile");
		MemoryContextSwitchTo(run->run_context);
		MemoryContextReset(run->page_context);
	} while (after != NULL);

	hs_begin_step(run);
	missing = hs_call_ids_function("SELECT hubsync._live_missing($1, $2)", run->entity_type, known);
	if (missing != NIL)
		resolve_missing(run, missing);
	hs_end_step(run);

	if (run->child_types != NIL)
	{
		old = MemoryContextSwitchTo(run->run_context);
		parents = hs_call_ids_function("SELECT hubsync._association_refresh_ids($1, $2, true)",
									run->entity_type, NIL);
		MemoryContextSwitchTo(old);
		refresh_in_steps(run, parents, "association sweep");
	}

	hs_begin_step(run);
	values[0] = CStringGetTextDatum(run->entity_type);
	hs_spi_execute("UPDATE hubsync.sync_watermarks SET last_reconcile_at = now()"
			" WHERE entity_type = $1", 1, types, values, NULL, SPI_OK_UPDATE);
	hs_end_step(run);
}
