/*-------------------------------------------------------------------------
 *
 * sync_internal.h
 *	  State of one sync run, shared by the files of the sync engine.
 *
 *	sync.c			runs: locking, sync_runs rows, steps and the watermark
 *	sync_search.c	phase 1, the keyset search over last-modified times
 *	sync_records.c	writing records and associations, and phases 2 to 4
 *
 * src/sync_internal.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUBSYNC_SYNC_INTERNAL_H
#define HUBSYNC_SYNC_INTERNAL_H

#include "executor/spi.h"
#include "nodes/pg_list.h"
#include "utils/resowner.h"

#include "hubspot.h"
#include "sync.h"
/*
 * Advisory lock key for "a run of this type is in progress": the first
 * key half spells "HSNC", the second is the type's sync_order.  Operators
 * see these locks in pg_locks as advisory locks with classid 1213419075.
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

	int64		pages_reported; /* search pages already shown as a NOTICE */

	BoundarySet boundary;
	List	   *refreshed_ids;	/* parents whose associations were read */
	List	   *archived_seen;	/* ids listed in the recycle bin this run */

	bool		in_step;
	bool		outcome_recorded;	/* sync_runs row has its final status */
	ResourceOwner step_owner;
	MemoryContext run_context;
	MemoryContext page_context;
} SyncRun;

typedef enum SearchKind
{
	SEARCH_BY_TIME,				/* modified >= / > lower, <= upper, by time */
	SEARCH_DRAIN				/* modified == time, id > after_id, by id */
} SearchKind;

/* sync.c */
extern void hs_spi_execute(const char *sql, int nargs, Oid *types, Datum *values,
						   const char *nulls, int expected);
extern int64 hs_spi_int64(int column);
extern Datum hs_int64_array_datum(List *ids);
extern List *hs_call_ids_function(const char *sql, const char *entity_type, List *ids);
extern List *hs_append_id(List *list, int64 id);
extern void hs_begin_step(SyncRun *run);
extern void hs_end_step(SyncRun *run);
extern void hs_save_watermark(SyncRun *run, int64 time_ms, int64 id);
extern void hs_report_progress(SyncRun *run, const char *phase);

/* sync_search.c */
extern int64 hs_parse_record_id(const char *text, const char *entity_type);
extern int64 hs_parse_hubspot_time(const char *text, const char *entity_type, int64 id);
extern char *hs_search_body(SyncRun *run, SearchKind kind, int64 time_ms,
							bool have_lower, bool inclusive, int64 after_id);
extern void hs_run_search_phase(SyncRun *run);

/* sync_records.c */
extern JsonbContainer *hs_response_results(HsResponse *response, const char *method,
										   const char *path);
extern void hs_check_record(SyncRun *run, JsonbContainer *record, const char *method,
							const char *path);
extern void hs_append_container(StringInfo buf, JsonbContainer *container);
extern Jsonb *hs_finish_json_array(StringInfo buf);
extern Jsonb *hs_batch_read(SyncRun *run, List *ids, bool archived);
extern List *hs_apply_records(SyncRun *run, Jsonb *records);
extern void hs_run_archive_phase(SyncRun *run);
extern void hs_run_association_refresh(SyncRun *run);
extern void hs_run_reconcile(SyncRun *run);

#endif							/* HUBSYNC_SYNC_INTERNAL_H */
