/*-------------------------------------------------------------------------
 *
 * progress.c
 *	  Shared-memory progress of running syncs, visible to every session.
 *
 * A sync run started with SELECT writes its rows in one transaction, so
 * other sessions cannot see its progress in tables until it commits.  Each
 * object type therefore has a slot in shared memory that the running sync
 * updates after every page: phase, counters and the watermark reached.
 * The slot also keeps the error of the last failed run, because a failed
 * SELECT rolls back the history row it would have written.  The next run
 * of that type writes the failure into hubsync.sync_runs.  Only the latest
 * failure is kept: when that next run fails in its own transaction too,
 * its failure replaces the earlier one.
 *
 * The slots exist only when hubsync is in shared_preload_libraries.
 * Without it syncs work as usual and hubsync.sync_progress is empty.
 *
 * src/progress.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "hubsync.h"
#include "progress.h"

typedef struct ProgressSlot
{
	char		entity_type[NAMEDATALEN];
	int			pid;			/* 0 when no run is in progress */
	TimestampTz started_at;
	TimestampTz updated_at;
	char		phase[32];
	HsRunStats	stats;
	TimestampTz watermark;		/* 0 when none yet */

	/* The last failed run, until a later run records it in sync_runs. */
	bool		failure_pending;
	TimestampTz failed_started_at;
	TimestampTz failed_at;
	HsRunStats	failed_stats;
	char		failed_error[HS_PROGRESS_ERROR_SIZE];
} ProgressSlot;

typedef struct ProgressShared
{
	LWLock	   *lock;
	ProgressSlot slots[HS_NUM_ENTITIES];
} ProgressShared;

static ProgressShared *progress = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void
hs_progress_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(ProgressShared)));
	RequestNamedLWLockTranche("hubsync", 1);
}

static void
progress_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	progress = ShmemInitStruct("hubsync progress", sizeof(ProgressShared), &found);
	if (!found)
	{
		memset(progress, 0, sizeof(ProgressShared));
		progress->lock = &(GetNamedLWLockTranche("hubsync"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

void
hs_progress_shmem_startup(void)
{
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = progress_shmem_startup;
}

bool
hs_progress_available(void)
{
	return progress != NULL;
}

void
hs_progress_begin(int entity_index, const char *entity_type)
{
	ProgressSlot *slot;

	if (progress == NULL)
		return;
	slot = &progress->slots[entity_index];
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	strlcpy(slot->entity_type, entity_type, NAMEDATALEN);
	slot->pid = MyProcPid;
	slot->started_at = GetCurrentTimestamp();
	slot->updated_at = slot->started_at;
	strlcpy(slot->phase, "starting", sizeof(slot->phase));
	memset(&slot->stats, 0, sizeof(HsRunStats));
	slot->watermark = 0;
	LWLockRelease(progress->lock);
}

void
hs_progress_update(int entity_index, const char *phase,
				   const HsRunStats *stats, TimestampTz watermark)
{
	ProgressSlot *slot;

	if (progress == NULL)
		return;
	slot = &progress->slots[entity_index];
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
	{
		slot->updated_at = GetCurrentTimestamp();
		strlcpy(slot->phase, phase, sizeof(slot->phase));
		slot->stats = *stats;
		if (watermark != 0)
			slot->watermark = watermark;
	}
	LWLockRelease(progress->lock);
}

/*
 * Mark the run of this backend as ended.  With an error message the run
 * is kept as a pending failure for the next run to record.
 */
void
hs_progress_end(int entity_index, const char *error_message)
{
	ProgressSlot *slot;

	if (progress == NULL)
		return;
	slot = &progress->slots[entity_index];
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
	{
		if (error_message != NULL)
		{
			slot->failure_pending = true;
			slot->failed_started_at = slot->started_at;
			slot->failed_at = GetCurrentTimestamp();
			slot->failed_stats = slot->stats;
			strlcpy(slot->failed_error, error_message, HS_PROGRESS_ERROR_SIZE);
		}
		slot->pid = 0;
		strlcpy(slot->phase, error_message ? "failed" : "done", sizeof(slot->phase));
		slot->updated_at = GetCurrentTimestamp();
	}
	LWLockRelease(progress->lock);
}

/*
 * Take the pending failure of a type, if any, clearing it.  Returns false
 * when there is none.
 */
bool
hs_progress_take_failure(int entity_index, HsPendingFailure *failure)
{
	ProgressSlot *slot;
	bool		found = false;

	if (progress == NULL)
		return false;
	slot = &progress->slots[entity_index];
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	if (slot->failure_pending)
	{
		failure->started_at = slot->failed_started_at;
		failure->failed_at = slot->failed_at;
		failure->stats = slot->failed_stats;
		strlcpy(failure->error, slot->failed_error, HS_PROGRESS_ERROR_SIZE);
		slot->failure_pending = false;
		found = true;
	}
	LWLockRelease(progress->lock);
	return found;
}

PG_FUNCTION_INFO_V1(hubsync_progress);

/*
 * hubsync_progress() returns one row per object type that has run since
 * the server started: the run in progress (pid not NULL) or the last one.
 */
Datum
hubsync_progress(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ProgressSlot copy[HS_NUM_ENTITIES];

	InitMaterializedSRF(fcinfo, 0);

	if (progress == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("hubsync progress reporting is not available"),
				 errdetail("The shared memory it needs is set up only when hubsync is loaded at server start."),
				 errhint("Add hubsync to shared_preload_libraries in postgresql.conf and restart the server.")));

	LWLockAcquire(progress->lock, LW_SHARED);
	memcpy(copy, progress->slots, sizeof(copy));
	LWLockRelease(progress->lock);

	for (int i = 0; i < HS_NUM_ENTITIES; i++)
	{
		ProgressSlot *slot = &copy[i];
		Datum		values[12];
		bool		nulls[12] = {0};

		if (slot->entity_type[0] == '\0')
			continue;

		values[0] = CStringGetTextDatum(slot->entity_type);
		values[1] = Int32GetDatum(slot->pid);
		nulls[1] = (slot->pid == 0);
		values[2] = CStringGetTextDatum(slot->phase);
		values[3] = TimestampTzGetDatum(slot->started_at);
		values[4] = TimestampTzGetDatum(slot->updated_at);
		values[5] = Int64GetDatum(slot->stats.pages);
		values[6] = Int64GetDatum(slot->stats.fetched);
		values[7] = Int64GetDatum(slot->stats.inserted);
		values[8] = Int64GetDatum(slot->stats.updated);
		values[9] = Int64GetDatum(slot->stats.http_requests);
		values[10] = TimestampTzGetDatum(slot->watermark);
		nulls[10] = (slot->watermark == 0);
		values[11] = Int64GetDatum(slot->stats.rate_limited);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	return (Datum) 0;
}
