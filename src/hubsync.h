/*-------------------------------------------------------------------------
 *
 * hubsync.h
 *	  Declarations shared by the hubsync source files.
 *
 * hubsync mirrors a HubSpot portal's contacts, companies, invoices and line
 * items into tables of schema hubsync.  The layers are:
 *
 *	http.c		libcurl multi driver whose waits are latch-based, so a
 *				cancel or statement_timeout interrupts a request at once
 *	hubspot.c	HubSpot API calls: retries, rate limits, error reports
 *	json_util.c	response parsing with PostgreSQL's JSON machinery
 *	sync.c		the incremental sync engine and its watermark cursor
 *	progress.c	shared-memory progress of running syncs
 *	hubsync.c	settings, _PG_init and the SQL-callable entry points
 *
 * src/hubsync.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUBSYNC_H
#define HUBSYNC_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"

/* Settings, defined in hubsync.c (units as in the setting names' docs). */
extern char *hs_hubspot_url;
extern char *hs_hubspot_token;
extern char *hs_ca_file;
extern int	hs_connect_timeout_ms;
extern int	hs_request_timeout_ms;
extern int	hs_max_retries;
extern int	hs_retry_base_delay_ms;
extern int	hs_retry_max_delay_ms;
extern int	hs_max_rate_limit_waits;
extern int	hs_search_requests_per_second;
extern int	hs_search_overlap_ms;
extern int	hs_reconcile_interval_s;
extern int	hs_run_history_retention_s;
extern bool hs_progress_notices;
extern char *hs_first_load;

/* Number of object types hubsync mirrors. */
#define HS_NUM_ENTITIES 4

/*
 * Counters of one run of one object type.  The API layer adds to the
 * request counters of whichever run is current (hs_current_stats).
 */
typedef struct HsRunStats
{
	int64		fetched;		/* distinct records read from search */
	int64		inserted;
	int64		updated;
	int64		unchanged;
	int64		archived;		/* rows that became archived */
	int64		deleted;		/* rows removed: merged away or gone for good */
	int64		warnings;		/* removed NULs and unparseable typed values */
	int64		queue_entries;	/* queue entries created or refreshed */
	int64		pages;
	int64		http_requests;
	int64		retries;
	int64		rate_limited;	/* 429 responses */
} HsRunStats;

extern HsRunStats *hs_current_stats;

/* Milliseconds since the Unix epoch <-> TimestampTz. */
#define HS_UNIX_EPOCH_OFFSET_MS \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000)

static inline int64
hs_timestamp_to_ms(TimestampTz ts)
{
	return ts / 1000 + HS_UNIX_EPOCH_OFFSET_MS;
}

static inline TimestampTz
hs_ms_to_timestamp(int64 ms)
{
	return (ms - HS_UNIX_EPOCH_OFFSET_MS) * 1000;
}

/* hubsync.c */
extern void hs_wait_interruptibly(long delay_ms);

/* json_util.c */
extern Jsonb *hs_parse_json(const char *data, size_t len, const char *endpoint,
							int *nul_removed);
extern Jsonb *hs_try_parse_json(const char *data, size_t len);
extern JsonbValue *hs_json_key(JsonbContainer *container, const char *key);
extern JsonbContainer *hs_json_container(JsonbValue *value);
extern char *hs_json_string(JsonbValue *value);
extern int	hs_json_array_size(JsonbContainer *array);
extern JsonbContainer *hs_json_object_at(JsonbContainer *array, int index);
extern void hs_append_json_string_array(StringInfo buf, char **items, int count);

/* progress.c */
extern void hs_progress_shmem_request(void);
extern void hs_progress_shmem_startup(void);
extern void hs_progress_begin(int entity_index, const char *entity_type);
extern void hs_progress_update(int entity_index, const char *phase,
							   const HsRunStats *stats, TimestampTz watermark);
extern void hs_progress_end(int entity_index, const HsRunStats *stats,
							const char *error_message, bool pending);

#endif							/* HUBSYNC_H */
