/*-------------------------------------------------------------------------
 *
 * sync_search.c
 *	  Phase 1 of a sync run: the keyset search over last-modified times.
 *
 *	  How the cursor works is described at the top of sync.c.
 *
 * src/sync_search.c
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

/* ---------------------------------------------------------------------
 * Records and pages
 * ---------------------------------------------------------------------
 */

/* Parse a HubSpot record id; raise for anything but a positive integer. */
int64
hs_parse_record_id(const char *text, const char *entity_type)
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

/* Error context naming the record whose time is being parsed. */
typedef struct TimeContext
{
	const char *entity_type;
	int64		id;
	const char *text;
} TimeContext;

static void
time_error_context(void *arg)
{
	TimeContext *context = (TimeContext *) arg;

	errcontext("reading the time \"%s\" of HubSpot %s record %lld",
			   context->text, context->entity_type, (long long) context->id);
}

/*
 * Parse a HubSpot time: ISO-8601 with an explicit zone, as HubSpot sends
 * in responses, or epoch milliseconds.  Raises an error naming the record
 * for anything else, and for times outside the years 1970 to 9999.
 */
int64
hs_parse_hubspot_time(const char *text, const char *entity_type, int64 id)
{
	bool		digits = (text != NULL && text[0] != '\0');
	int64		ms;
	ErrorContextCallback callback;
	TimeContext context = {entity_type, id, text};

	if (text == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("HubSpot returned %s record %lld without a last-modified time",
						entity_type, (long long) id),
				 errhint("Nothing from this response was written; the next run retries it.")));
	for (const char *p = text; *p; p++)
		if (*p < '0' || *p > '9')
			digits = false;

	if (digits)
	{
		errno = 0;
		ms = strlen(text) <= 15 ? strtoi64(text, NULL, 10) : -1;
	}
	else
	{
		callback.callback = time_error_context;
		callback.arg = &context;
		callback.previous = error_context_stack;
		error_context_stack = &callback;
		ms = hs_timestamp_to_ms(DatumGetTimestampTz(
			DirectFunctionCall3(timestamptz_in, CStringGetDatum(text),
								ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1))));
		error_context_stack = callback.previous;
	}

	/* 253402300800000 ms is 10000-01-01. */
	if (ms < 0 || ms >= INT64CONST(253402300800000))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("HubSpot returned an invalid time \"%s\" for %s record %lld",
						text, entity_type, (long long) id),
				 errhint("Nothing from this response was written; the next run retries it.")));
	return ms;
}

/* Id and last-modified time of one record of a response. */
static void
record_key(SyncRun *run, JsonbContainer *record, int64 *id, int64 *time_ms)
{
	JsonbContainer *properties = hs_json_container(hs_json_key(record, "properties"));
	char	   *modified;

	*id = hs_parse_record_id(hs_json_string(hs_json_key(record, "id")), run->entity_type);
	modified = hs_json_string(hs_json_key(properties, run->modified_property));
	if (modified == NULL || modified[0] == '\0')
		modified = hs_json_string(hs_json_key(record, "updatedAt"));
	*time_ms = hs_parse_hubspot_time(modified, run->entity_type, *id);
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


/* ---------------------------------------------------------------------
 * Phase 1: search
 * ---------------------------------------------------------------------
 */


char *
hs_search_body(SyncRun *run, SearchKind kind, int64 time_ms, bool have_lower,
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

	page.results = hs_response_results(&response, "POST", path);
	page.count = hs_json_array_size(page.results);
	for (int i = 0; i < page.count; i++)
		hs_check_record(run, hs_json_object_at(page.results, i), "POST", path);
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
		hs_append_container(&fresh, record);
		fresh_ids = hs_append_id(fresh_ids, id);
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
		Jsonb	   *records = hs_finish_json_array(&fresh);

		if (run->search_needs_batch_read)
			records = hs_batch_read(run, fresh_ids, false);
		hs_apply_records(run, records);
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
		hs_begin_step(run);
		page = fetch_search_page(run, hs_search_body(run, SEARCH_DRAIN, time_ms, true, true, after_id));
		if (page.count > 0)
		{
			write_search_page(run, &page, false);
			after_id = page.last_id;
			run->position_ms = time_ms;
			hs_save_watermark(run, time_ms, page.last_id);
		}
		hs_report_progress(run, "search");
		hs_end_step(run);

		if (page.count < HS_SEARCH_PAGE_SIZE)
			break;
	}
	/* Everything at time_ms is written now. */
	boundary_reset(&run->boundary, 0);
	run->position_ms = time_ms + 1;
}

void
hs_run_search_phase(SyncRun *run)
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
		hs_begin_step(run);
		page = fetch_search_page(run, hs_search_body(run, SEARCH_BY_TIME, lower_ms,
												  have_lower, inclusive, 0));

		if (page.count == HS_SEARCH_PAGE_SIZE && page.first_ms == page.last_ms)
		{
			/* A whole page in one millisecond: drain it by id. */
			hs_end_step(run);
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
				hs_save_watermark(run, run->cursor_ms, run->cursor_id);
			hs_end_step(run);
			break;
		}

		max_id = write_search_page(run, &page, true);
		if (page.count < HS_SEARCH_PAGE_SIZE)
		{
			/* The last page: everything up to the upper bound is written. */
			run->position_ms = run->upper_ms + 1;
			hs_save_watermark(run, page.last_ms, max_id);
			hs_report_progress(run, "search");
			hs_end_step(run);
			break;
		}

		/* Records before last_ms are complete; last_ms may continue. */
		run->position_ms = page.last_ms;
		hs_save_watermark(run, page.last_ms, 0);
		hs_report_progress(run, "search");
		hs_end_step(run);
		have_lower = true;
		inclusive = true;
		lower_ms = page.last_ms;
	}
}
