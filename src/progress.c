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
 * Slots belong to one database and object type each, so runs in other
 * databases of the cluster neither overwrite nor show up in a database's
 * progress.  The slots exist only when hubsync is in
 * shared_preload_libraries; without it syncs work as usual and
 * hubsync_progress() raises an error saying so.
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
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "hubsync.h"
#include "progress.h"

/* Databases times object types that can report progress at once. */
#define HS_PROGRESS_SLOTS (16 * HS_NUM_ENTITIES)

typedef struct ProgressSlot
{
	Oid			database;		/* InvalidOid while the slot is free */
	int			entity_index;
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
	ProgressSlot slots[HS_PROGRESS_SLOTS];
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

/*
 * The slot of this database and object type, taking a free one (or, when
 * none is free, the least recently updated idle one) if create is set.
 * Returns NULL when there is none.  The caller holds the lock exclusively
 * when create is set.
 */
static ProgressSlot *
find_slot(int entity_index, bool create)
{
	ProgressSlot *reuse = NULL;

	for (int i = 0; i < HS_PROGRESS_SLOTS; i++)
	{
		ProgressSlot *slot = &progress->slots[i];

		if (slot->database == MyDatabaseId && slot->entity_index == entity_index)
			return slot;
		if (!create)
			continue;
		if (slot->database == InvalidOid)
		{
			if (reuse == NULL || reuse->database != InvalidOid)
				reuse = slot;
		}
		else if (slot->pid == 0 && !slot->failure_pending &&
				 (reuse == NULL ||
				  (reuse->database != InvalidOid && slot->updated_at < reuse->updated_at)))
			reuse = slot;
	}
	if (reuse != NULL)
	{
		memset(reuse, 0, sizeof(ProgressSlot));
		reuse->database = MyDatabaseId;
		reuse->entity_index = entity_index;
	}
	return reuse;
}

void
hs_progress_begin(int entity_index, const char *entity_type)
{
	ProgressSlot *slot;

	if (progress == NULL)
		return;
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	slot = find_slot(entity_index, true);
	if (slot == NULL)
	{
		LWLockRelease(progress->lock);
		return;
	}
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
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	slot = find_slot(entity_index, false);
	if (slot != NULL && slot->pid == MyProcPid)
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
 * counts as failed; with pending set as well, the failure is kept for the
 * next run to write into sync_runs, because this run could not.
 */
void
hs_progress_end(int entity_index, const HsRunStats *stats, const char *error_message,
				bool pending)
{
	ProgressSlot *slot;

	if (progress == NULL)
		return;
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	slot = find_slot(entity_index, false);
	if (slot != NULL && slot->pid == MyProcPid)
	{
		slot->stats = *stats;
		if (error_message != NULL && pending)
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
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	slot = find_slot(entity_index, false);
	if (slot != NULL && slot->failure_pending)
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
 * hubsync_progress() returns one row per object type of this database that
 * has run since the server started: the run in progress (pid not NULL) or
 * the last one.  A run whose backend died without ending it shows phase
 * "interrupted" and no pid.
 */
Datum
hubsync_progress(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ProgressSlot copy[HS_PROGRESS_SLOTS];

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

	for (int i = 0; i < HS_PROGRESS_SLOTS; i++)
	{
		ProgressSlot *slot = &copy[i];
		Datum		values[12];
		bool		nulls[12] = {0};

		if (slot->database != MyDatabaseId)
			continue;
		if (slot->pid != 0 && BackendPidGetProc(slot->pid) == NULL)
		{
			slot->pid = 0;
			strlcpy(slot->phase, "interrupted", sizeof(slot->phase));
		}

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
