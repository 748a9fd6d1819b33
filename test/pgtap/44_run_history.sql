-- Run history: a completed run deletes sync_runs rows that finished more
-- than hubsync.run_history_retention ago, and hubsync.sync_status reports
-- each type's state, last success, last error and row counts from that
-- history, from shared memory and from the mirror.
SELECT hubsync_test.reset('small');
SELECT plan(37);

SET hubsync.max_retries = 0;

-- Never run.
SELECT results_eq(
    'SELECT entity_type, state, watermark, last_sync_at, last_success_at, last_error, consecutive_failures, records, archived_records, pending_queue_entries FROM hubsync.sync_status',
    $$SELECT entity_type, 'never run'::text, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz,
             NULL::text, 0, 0::bigint, 0::bigint, 0::bigint
        FROM hubsync.object_types ORDER BY sync_order$$,
    'sync_status before the first run: never run, nothing stored');

-- One successful run of every type.
SELECT is((SELECT count(*)::int FROM hubsync_full_incremental() WHERE status = 'ok'), 4, 'first sync');
SELECT results_eq(
    'SELECT entity_type, state, consecutive_failures, last_error FROM hubsync.sync_status',
    $$SELECT entity_type, 'ok'::text, 0, NULL::text FROM hubsync.object_types ORDER BY sync_order$$,
    'after the first sync every type is ok');
SELECT results_eq(
    'SELECT entity_type, records FROM hubsync.sync_status',
    $$SELECT t, (SELECT count(*) FROM hubsync_test.dump(t)) FROM hubsync.object_types AS o(t) ORDER BY sync_order$$,
    'records counts every mirrored record');
SELECT results_eq(
    'SELECT s.entity_type, s.watermark, s.last_sync_at FROM hubsync.sync_status s',
    'SELECT w.entity_type, w.last_modified_at, w.last_sync_at FROM hubsync.sync_watermarks w JOIN hubsync.object_types USING (entity_type) ORDER BY sync_order',
    'watermark and last_sync_at come from sync_watermarks');
SELECT results_eq(
    'SELECT s.entity_type, s.last_success_at, s.last_run_started_at FROM hubsync.sync_status s',
    $$SELECT r.entity_type, r.finished_at, r.started_at FROM hubsync.sync_runs r
        JOIN hubsync.object_types USING (entity_type) ORDER BY sync_order$$,
    'last_success_at and last_run_started_at come from the ok run');
SELECT is((SELECT max(watermark) FROM hubsync.sync_status WHERE entity_type = 'contacts'),
          (SELECT max((d->>'updatedAt')::timestamptz) FROM hubsync_test.dump('contacts') AS d),
          'the contacts watermark is the latest last-modified time of the portal');

-- An archived record counts as archived, not as live.
SELECT hubsync_test.mock('archive', '{"type": "companies", "id": "1000005"}');
SELECT is((SELECT count(*)::int FROM hubsync_incremental('companies') WHERE status = 'ok'), 1, 'sync after archiving');
SELECT results_eq($$SELECT records, archived_records FROM hubsync.sync_status WHERE entity_type = 'companies'$$,
                  $$VALUES ((SELECT count(*) FROM hubsync_test.dump('companies')), 1::bigint)$$,
                  'the archived company moved from records to archived_records');

-- A failed SELECT run rolls back its sync_runs row; sync_status shows the
-- failure from shared memory until the next run records it.
SELECT hubsync_test.mock('faults', '{"faults": [{"path": "^/crm/v3/objects/contacts/search$", "kind": "status", "status": 503, "count": -1}]}');
SELECT throws_like($$SELECT * FROM hubsync_incremental('contacts')$$,
                   'HubSpot request POST /crm/v3/objects/contacts/search failed with HTTP 503%',
                   'a SELECT run fails on a 503');
SELECT hubsync_test.mock('faults', '{"faults": []}');
SELECT is((SELECT count(*)::int FROM hubsync.sync_runs WHERE status = 'failed'), 0,
          'the failed SELECT run left no sync_runs row');
SELECT results_eq($$SELECT state, consecutive_failures FROM hubsync.sync_status WHERE entity_type = 'contacts'$$,
                  $$VALUES ('failed'::text, 1)$$, 'sync_status shows the failure from shared memory');
SELECT alike((SELECT last_error FROM hubsync.sync_status WHERE entity_type = 'contacts'),
             'a run inside a transaction % failed and rolled back; its error is written to hubsync.sync_runs by the next run%',
             'last_error says where the error will be recorded');
SELECT ok((SELECT last_error_at > last_success_at FROM hubsync.sync_status WHERE entity_type = 'contacts'),
          'last_error_at is after the last success');
SELECT is((SELECT state FROM hubsync.sync_status WHERE entity_type = 'companies'), 'ok',
          'other types stay ok');

-- The next run records the failure and succeeds.
SELECT is((SELECT status FROM hubsync_incremental('contacts')), 'ok', 'the next contacts run succeeds');
SELECT is((SELECT error FROM hubsync.sync_runs WHERE entity_type = 'contacts' AND status = 'failed'),
          'HubSpot request POST /crm/v3/objects/contacts/search failed with HTTP 503 after 0 retries',
          'the next run wrote the failure to sync_runs');
SELECT results_eq($$SELECT state, consecutive_failures, last_error FROM hubsync.sync_status WHERE entity_type = 'contacts'$$,
                  $$VALUES ('ok'::text, 0, 'HubSpot request POST /crm/v3/objects/contacts/search failed with HTTP 503 after 0 retries'::text)$$,
                  'ok again, and last_error keeps the recorded error');

-- Failures recorded by CALL runs, and a run whose backend died, at times
-- after the last ok run.
CREATE TEMP TABLE base AS SELECT now() AS at;
INSERT INTO hubsync.sync_runs (entity_type, status, started_at, finished_at, error)
VALUES ('line_items', 'partial', (SELECT at FROM base) + interval '1 second',
        (SELECT at FROM base) + interval '2 seconds', 'first failure'),
       ('line_items', 'failed', (SELECT at FROM base) + interval '3 seconds',
        (SELECT at FROM base) + interval '4 seconds', 'second failure');
SELECT results_eq($$SELECT state, consecutive_failures, last_error, last_error_at, last_run_started_at
                      FROM hubsync.sync_status WHERE entity_type = 'line_items'$$,
                  $$SELECT 'failed'::text, 2, 'second failure'::text, at + interval '4 seconds', at + interval '3 seconds'
                      FROM base$$,
                  'two failures in a row after the last ok run');
-- pid 1 is never a backend.
INSERT INTO hubsync.sync_runs (entity_type, status, started_at, pid)
VALUES ('line_items', 'running', (SELECT at FROM base) + interval '5 seconds', 1);
SELECT results_eq($$SELECT state, consecutive_failures, running_pid, last_error_at FROM hubsync.sync_status WHERE entity_type = 'line_items'$$,
                  $$SELECT 'interrupted'::text, 3, NULL::int, at + interval '5 seconds' FROM base$$,
                  'a running row whose backend is gone is interrupted');
SELECT alike((SELECT last_error FROM hubsync.sync_status WHERE entity_type = 'line_items'),
             'the run ended without recording a result: its backend was terminated, the server restarted%',
             'an interrupted run explains itself');
-- A live backend whose run has ended, as its progress slot shows, is not
-- running that run any more.  Live runs are checked in
-- test/t/42_interrupts.t and test/t/43_pg_cron.t.
UPDATE hubsync.sync_runs SET pid = pg_backend_pid() WHERE status = 'running';
SELECT results_eq($$SELECT state, running_pid FROM hubsync.sync_status WHERE entity_type = 'line_items'$$,
                  $$VALUES ('interrupted'::text, NULL::int)$$,
                  'a running row is not running when the progress slot shows the run ended');
SELECT ok(NOT hubsync._backend_alive(pg_backend_pid(), now() - interval '10 years'),
          'a pid reused by a backend that started after the run is not mistaken for it');
DELETE FROM hubsync.sync_runs WHERE entity_type = 'line_items' AND status <> 'ok';

-- A pending transfer-queue entry, when the queue table exists.
SELECT CASE WHEN to_regclass('hubsync.quickbooks_transfer_queue') IS NULL
            THEN skip('hubsync.quickbooks_transfer_queue does not exist', 1)
            ELSE results_eq(
                'SELECT entity_type, pending_queue_entries FROM hubsync.sync_status',
                $$SELECT o.entity_type, (SELECT count(*) FROM hubsync.quickbooks_transfer_queue q
                                         WHERE q.entity_type = o.entity_type AND q.status = 'pending_review')
                    FROM hubsync.object_types o ORDER BY sync_order$$,
                'pending_queue_entries counts the pending_review entries of each type') END;

-- Pruning.  Rows of every type that finished more than the retention ago
-- go; newer rows and rows still running stay.
SET hubsync.run_history_retention = '1h';
INSERT INTO hubsync.sync_runs (entity_type, status, started_at, finished_at, error)
VALUES ('contacts',   'ok',     now() - interval '3 hours', now() - interval '3 hours', 'prune: old ok'),
       ('invoices',   'failed', now() - interval '2 hours', now() - interval '2 hours', 'prune: old failure'),
       ('companies',  'ok',     now() - interval '61 minutes', now() - interval '61 minutes', 'prune: just too old'),
       ('companies',  'ok',     now() - interval '30 minutes', now() - interval '30 minutes', 'keep: recent'),
       ('line_items', 'running', now() - interval '5 hours', NULL, 'keep: running');
CREATE TEMP TABLE rows_before AS
SELECT count(*) AS n FROM hubsync.sync_runs
 WHERE error IS NULL OR (error NOT LIKE 'prune:%' AND error NOT LIKE 'keep:%');
SELECT is((SELECT status FROM hubsync_incremental('companies')), 'ok', 'a run with a 1-hour retention');
SELECT is((SELECT count(*)::int FROM hubsync.sync_runs WHERE error LIKE 'prune:%'), 0,
          'rows finished more than an hour ago are gone, whatever their type and status');
SELECT results_eq($$SELECT error FROM hubsync.sync_runs WHERE error LIKE 'keep:%' ORDER BY error$$,
                  $$VALUES ('keep: recent'::text), ('keep: running')$$,
                  'a recent row and a row without finished_at stay');
SELECT is((SELECT count(*)::int FROM hubsync.sync_runs WHERE error IS NULL OR (error NOT LIKE 'prune:%' AND error NOT LIKE 'keep:%')),
          (SELECT n::int + 1 FROM rows_before), 'the runs of this test stay, plus the new one');

-- A failed run does not prune.
INSERT INTO hubsync.sync_runs (entity_type, status, started_at, finished_at, error)
VALUES ('contacts', 'ok', now() - interval '3 hours', now() - interval '3 hours', 'prune: after failure');
SELECT hubsync_test.mock('faults', '{"faults": [{"path": "^/crm/v3/objects/companies/search$", "kind": "status", "status": 500, "count": -1}]}');
SELECT throws_like($$SELECT * FROM hubsync_incremental('companies')$$, '%failed with HTTP 500%', 'a failing run');
SELECT hubsync_test.mock('faults', '{"faults": []}');
SELECT is((SELECT count(*)::int FROM hubsync.sync_runs WHERE error = 'prune: after failure'), 1,
          'a failed run leaves the history alone');

-- Retention 0 keeps everything.
SET hubsync.run_history_retention = 0;
SELECT is((SELECT status FROM hubsync_incremental('companies')), 'ok', 'a run with retention 0');
SELECT is((SELECT count(*)::int FROM hubsync.sync_runs WHERE error = 'prune: after failure'), 1,
          'retention 0 keeps old rows');
SET hubsync.run_history_retention = '1h';
SELECT is((SELECT status FROM hubsync_incremental('companies')), 'ok', 'a run with the retention back');
SELECT is((SELECT count(*)::int FROM hubsync.sync_runs WHERE error = 'prune: after failure'), 0,
          'the next ok run prunes the old row');

-- The pending failure written by the last run is newer than the
-- retention and stays.
SELECT is((SELECT count(*)::int FROM hubsync.sync_runs WHERE entity_type = 'companies' AND status = 'failed'
            AND error LIKE '%HTTP 500%'), 1, 'the recorded failure of the failing run is kept');
SELECT is((SELECT last_error FROM hubsync.sync_status WHERE entity_type = 'companies'),
          'HubSpot request POST /crm/v3/objects/companies/search failed with HTTP 500 after 0 retries',
          'sync_status shows it as the last error');

-- Skipped runs are history too, but they are not the last run.
INSERT INTO hubsync.sync_runs (entity_type, status, started_at, finished_at, error)
VALUES ('invoices', 'skipped', now() + interval '1 minute', now() + interval '1 minute',
        'another sync of this type was in progress');
SELECT results_eq($$SELECT state, last_run_started_at < now() + interval '1 minute' FROM hubsync.sync_status WHERE entity_type = 'invoices'$$,
                  $$VALUES ('ok'::text, true)$$, 'a skipped run does not change the state or last run');

SELECT * FROM finish();
