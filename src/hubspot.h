/*-------------------------------------------------------------------------
 *
 * hubspot.h
 *	  HubSpot CRM API calls with retries, rate limits and error reports.
 *
 * src/hubspot.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUBSYNC_HUBSPOT_H
#define HUBSYNC_HUBSPOT_H

#include "hubsync.h"

/* Search pages are 200 records, the maximum HubSpot's search accepts. */
#define HS_SEARCH_PAGE_SIZE 200

/* The list endpoint's maximum page size. */
#define HS_LIST_PAGE_SIZE 100

/* Batch read takes at most 100 ids per request. */
#define HS_BATCH_READ_SIZE 100

/* The v4 association batch read takes at most 1,000 ids per request. */
#define HS_ASSOCIATION_BATCH_SIZE 1000

typedef enum HsCallKind
{
	HS_CALL_SEARCH,				/* paced to hubsync.search_requests_per_second */
	HS_CALL_OTHER
} HsCallKind;

/* A successful (or caller-accepted) API response. */
typedef struct HsResponse
{
	long		status;
	Jsonb	   *body;			/* NULL for a body-less response */
	int			nul_removed;	/* \u0000 escapes dropped from the body */
} HsResponse;

extern HsResponse hs_api_call(const char *method, const char *path,
							  const char *body, HsCallKind kind,
							  long accepted_status);
extern char *hs_url_encode(const char *value);

#endif							/* HUBSYNC_HUBSPOT_H */
