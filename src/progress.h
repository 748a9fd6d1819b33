/*-------------------------------------------------------------------------
 *
 * progress.h
 *	  Shared-memory progress of running syncs.
 *
 * src/progress.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUBSYNC_PROGRESS_H
#define HUBSYNC_PROGRESS_H

#include "hubsync.h"

#define HS_PROGRESS_ERROR_SIZE 512

/* A failed run that has not been written to hubsync.sync_runs yet. */
typedef struct HsPendingFailure
{
	TimestampTz started_at;
	TimestampTz failed_at;
	HsRunStats	stats;
	char		error[HS_PROGRESS_ERROR_SIZE];
} HsPendingFailure;

extern bool hs_progress_available(void);
extern bool hs_progress_take_failure(int entity_index, HsPendingFailure *failure);

#endif							/* HUBSYNC_PROGRESS_H */
