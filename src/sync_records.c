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

/* "METHOD path" without the query string, as errors name endpoints. */
static char *
endpoint_name(const char *method, const char *path)
{
	const char *query = strchr(path, '?');

	return psprintf("%s %.*s", method,
					(int) (query ? query - path : (ptrdiff_t) strlen(path)), path);
}

/*
 * The "results" array of a list, search or batch response.  A body
 * without one is not a HubSpot response, and taking it as an empty page
 * could make the sync believe that records were deleted, so it raises.
 */
JsonbContainer *
hs_response_results(HsResponse *response, const char *method, const char *path)
{
	JsonbContainer *results = response->body ?
		hs_json_container(hs_json_key(&response->body->root, "results")) : NULL;

	if (results == NULL || !JsonContainerIsArray(results))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("HubSpot returned a response without a \"results\" array for %s",
						endpoint_name(method, path)),
				 errdetail("HTTP status %ld.", response->status),
				 errhint("Nothing from this response was written. Check that hubsync.hubspot_url points at the HubSpot API.")));
	return results;
}

/*
 * Raise an error naming the endpoint unless a result is a HubSpot object
 * record: an object with a numeric id, a properties object and valid
 * createdAt, updatedAt and archivedAt times where present.
 */
void
hs_check_record(SyncRun *run, JsonbContainer *record, const char *method, const char *path)
{
	JsonbContainer *properties;
	int64		id;
	const char *times[] = {"createdAt", "updatedAt", "archivedAt"};

	if (record == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("HubSpot returned a %s result that is not an object for %s",
						run->entity_type, endpoint_name(method, path)),
				 errhint("Nothing from this response was written; the next run retries it.")));

	id = hs_parse_record_id(hs_json_string(hs_json_key(record, "id")), run->entity_type);
	properties = hs_json_container(hs_json_key(record, "properties"));
	if (properties == NULL || !JsonContainerIsObject(properties))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("HubSpot returned %s record %lld without a properties object for %s",
						run->entity_type, (long long) id, endpoint_name(method, path)),
				 errhint("Nothing from this response was written; the next run retries it.")));

	for (int i = 0; i < lengthof(times); i++)
	{
		JsonbValue *value = hs_json_key(record, times[i]);

		if (value != NULL && value->type != jbvNull)
			(void) hs_parse_hubspot_time(hs_json_string(value), run->entity_type, id);
	}
}

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
			array = hs_response_results(&response, "POST", path);
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
			response = hs_api_call("POST", path, body.data, HS_CALL_OTHER, 404);
			if (response.status == 404)
			{
				/*
				 * HubSpot returns 404 when none of the ids exists.  Only its
				 * own OBJECT_NOT_FOUND body counts as that: a 404 from a wrong
				 * URL must not make records look deleted.
				 */
				char	   *category = response.body ?
					hs_json_string(hs_json_key(&response.body->root, "category")) : NULL;

				if (category == NULL || strcmp(category, "OBJECT_NOT_FOUND") != 0)
					ereport(ERROR,
							(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
							 errmsg("HubSpot request %s failed with HTTP 404",
									endpoint_name("POST", path)),
							 errdetail("The body is not HubSpot's OBJECT_NOT_FOUND error."),
							 errhint("Check that hubsync.hubspot_url points at the HubSpot API.")));
				array = NULL;
			}
			else
				array = hs_response_results(&response, "POST", path);
			for (int i = 0; i < hs_json_array_size(array); i++)
			{
				JsonbContainer *record = hs_json_object_at(array, i);

				hs_check_record(run, record, "POST", path);
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

/* Ids of a list that are not in another list. */
static List *
ids_not_in(List *ids, List *present)
{
	List	   *result = NIL;
	ListCell   *cell;

	foreach(cell, ids)
	{
		int64		id = *(int64 *) lfirst(cell);
		bool		found = false;
		ListCell   *other;

		foreach(other, present)
		{
			if (*(int64 *) lfirst(other) == id)
			{
				found = true;
				break;
			}
		}
		if (!found)
			result = hs_append_id(result, id);
	}
	return result;
}

/* Ids of the records of a jsonb array of records. */
static List *
record_ids(SyncRun *run, Jsonb *records)
{
	List	   *ids = NIL;

	for (int i = 0; i < hs_json_array_size(&records->root); i++)
	{
		JsonbContainer *record = hs_json_object_at(&records->root, i);

		ids = hs_append_id(ids, hs_parse_record_id(hs_json_string(hs_json_key(record, "id")),
												   run->entity_type));
	}
	return ids;
}

/*
 * Settle rows that HubSpot no longer lists where the mirror expects them.
 * Each is read back by id, first as a live record (restored, or the
 * survivor of a merge, which comes back under its new id) and then from
 * the recycle bin; only a record that neither read returns is deleted, so
 * a listing that missed a record can never delete it on its own.
 */
static void
resolve_missing(SyncRun *run, List *ids)
{
	Jsonb	   *live = hs_batch_read(run, ids, false);
	List	   *remaining = ids_not_in(ids, hs_apply_records(run, live));
	Jsonb	   *archived;
	List	   *gone;
	Oid			types[2] = {TEXTOID, JSONBOID};
	Datum		values[2];

	if (remaining == NIL)
		return;

	archived = hs_batch_read(run, remaining, true);
	if (hs_json_array_size(&archived->root) > 0)
	{
		values[0] = CStringGetTextDatum(run->entity_type);
		values[1] = JsonbPGetDatum(archived);
		hs_spi_execute("SELECT hubsync._apply_archived($1, $2)", 2, types, values, NULL,
					   SPI_OK_SELECT);
		run->stats.archived += hs_spi_int64(1);
		SPI_freetuptable(SPI_tuptable);
	}

	gone = ids_not_in(remaining, record_ids(run, archived));
	if (gone != NIL)
	{
		Oid			delete_types[2] = {TEXTOID, INT8ARRAYOID};

		values[0] = CStringGetTextDatum(run->entity_type);
		values[1] = hs_int64_array_datum(gone);
		hs_spi_execute("SELECT hubsync._delete_records($1, $2)", 2, delete_types, values,
					   NULL, SPI_OK_SELECT);
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
		char	   *path;

		CHECK_FOR_INTERRUPTS();
		hs_begin_step(run);
		path = list_path(run, true, run->properties_csv, after);
		response = hs_api_call("GET", path, NULL, HS_CALL_OTHER, 0);
		results = hs_response_results(&response, "GET", path);
		count = hs_json_array_size(results);
		for (int i = 0; i < count; i++)
			hs_check_record(run, hs_json_object_at(results, i), "GET", path);
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
	hs_spi_execute("UPDATE hubsync.sync_watermarks SET last_archive_scan_at = clock_timestamp()"
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

	/*
	 * Every live id, a list page at a time, in one step that writes only
	 * at its end, so that a failure of any page is recorded like any other.
	 */
	hs_begin_step(run);
	do
	{
		HsResponse	response;
		JsonbContainer *results;
		char	   *path;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(run->page_context);
		path = list_path(run, false, "hs_object_id", after);
		response = hs_api_call("GET", path, NULL, HS_CALL_OTHER, 0);
		results = hs_response_results(&response, "GET", path);
		old = MemoryContextSwitchTo(run->run_context);
		for (int i = 0; i < hs_json_array_size(results); i++)
		{
			JsonbContainer *record = hs_json_object_at(results, i);

			if (record == NULL)
				continue;
			known = hs_append_id(known,
								 hs_parse_record_id(hs_json_string(hs_json_key(record, "id")),
													run->entity_type));
		}
		after = next_after(run, response.body);
		MemoryContextSwitchTo(old);
		MemoryContextReset(run->page_context);
	} while (after != NULL);
	hs_report_progress(run, "reconcile");

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
	hs_spi_execute("UPDATE hubsync.sync_watermarks SET last_reconcile_at = clock_timestamp()"
			" WHERE entity_type = $1", 1, types, values, NULL, SPI_OK_UPDATE);
	hs_end_step(run);
}
