/*-------------------------------------------------------------------------
 *
 * sync.h
 *	  The incremental sync engine.
 *
 * src/sync.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUBSYNC_SYNC_H
#define HUBSYNC_SYNC_H

#include "hubsync.h"

/* Outcome of one run of one object type. */
typedef struct HsSyncResult
{
	char	   *entity_type;
	const char *status;			/* "ok" or "skipped" (failures raise) */
	HsRunStats	stats;
	TimestampTz started_at;
	TimestampTz finished_at;
	bool		have_watermark;
	TimestampTz watermark;
} HsSyncResult;

/* What a run does besides the incremental search. */
typedef enum HsSyncMode
{
	HS_SYNC_INCREMENTAL,		/* reconcile only when it is due */
	HS_SYNC_RECONCILE			/* reconcile now */
} HsSyncMode;

extern List *hs_entity_types(void);
extern void hs_sync_entity(const char *entity_type, bool nonatomic,
						   HsSyncMode mode, HsSyncResult *result);

#endif							/* HUBSYNC_SYNC_H */
