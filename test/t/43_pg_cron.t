#!/usr/bin/env python3
"""pg_cron: hubsync_schedule('* * * * *') creates a job that pg_cron runs in
a background worker within about a minute; the job commits after every
page, as CALL hubsync_run() does by hand, and leaves the mirror equal to
the portal; hubsync_unschedule() removes it.  From a database other than
cron.database_name, hubsync_schedule() raises an error whose hint is the
statement to run in the cron database, and that statement works.  Without
pg_cron loaded at all, hubsync_schedule() says how to load it.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubsync_tap import (DB, Tap, install_checks, json_value, mirror_problems, psql,  # noqa: E402
                         value, wait_for)

OTHER_DB = "hubsync_other"
OTHER_JOB = f"hubsync_{OTHER_DB}"

tap = Tap()


def error_of(sql, db):
    """Message, SQLSTATE and hint of the error sql raises in db, as a dict."""
    return json_value(f"""
        DO $$
        DECLARE v_state text; v_message text; v_hint text;
        BEGIN
            EXECUTE $q${sql}$q$;
            PERFORM set_config('hubsync_test.error', 'null', false);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                    v_hint = PG_EXCEPTION_HINT;
            PERFORM set_config('hubsync_test.error', jsonb_build_object(
                'sqlstate', v_state, 'message', v_message, 'hint', v_hint)::text, false);
        END $$;
        SELECT current_setting('hubsync_test.error');""", db)


def check_other_database():
    """hubsync in a database that is not pg_cron's: the job is created in pg_cron's."""
    psql(f"DROP DATABASE IF EXISTS {OTHER_DB} WITH (FORCE)", db="postgres")
    psql(f"CREATE DATABASE {OTHER_DB}", db="postgres")
    psql("CREATE EXTENSION hubsync", db=OTHER_DB)

    job_id = value("SELECT hubsync_schedule('* * * * *')", OTHER_DB)
    tap.ok(job_id and job_id.isdigit(), f"other database: hubsync_schedule() returns job id {job_id}")
    tap.is_(value(f"SELECT database || ' ' || command || ' ' || schedule FROM cron.job WHERE jobname = '{OTHER_JOB}'"),
            f"{OTHER_DB} CALL public.hubsync_run() * * * * *",
            "other database: the job runs hubsync_run() in that database")
    tap.is_(value("SELECT hubsync_schedule('*/5 * * * *')", OTHER_DB), job_id,
            "other database: scheduling again keeps the job id")
    tap.is_(value(f"SELECT schedule FROM cron.job WHERE jobname = '{OTHER_JOB}'"), "*/5 * * * *",
            "other database: scheduling again replaces the schedule")
    tap.is_(value("SELECT count(*) FROM hubsync.sync_status WHERE next_run_at IS NULL", OTHER_DB), "4",
            "other database: sync_status cannot show a next run")
    tap.is_(value("SELECT hubsync_unschedule()", OTHER_DB), "t",
            "other database: hubsync_unschedule() removes the job")
    tap.is_(value(f"SELECT count(*) FROM cron.job WHERE jobname = '{OTHER_JOB}'"), "0",
            "other database: no job is left")
    tap.is_(value("SELECT hubsync_unschedule()", OTHER_DB), "f",
            "other database: a second hubsync_unschedule() finds nothing")

    # Schedule it once more for the run below, which checks that it syncs.
    value("SELECT hubsync_schedule('* * * * *')", OTHER_DB)


def wait_for_cron_run(timeout):
    """The pid of the first sync_runs row a pg_cron worker writes, or None."""
    return wait_for(lambda: value(
        "SELECT r.pid FROM hubsync.sync_runs r JOIN pg_stat_activity a ON a.pid = r.pid "
        "WHERE r.status = 'running' AND a.backend_type = 'pg_cron' LIMIT 1"), timeout, 0.2)


def check_scheduled_run():
    psql("SELECT hubsync_test.reset('demo'); SELECT hubsync_test.snapshot_portal();")
    # The job's run should last long enough to be watched: pg_cron's
    # worker picks this setting up from the role's database settings.
    psql(f"ALTER ROLE CURRENT_USER IN DATABASE {DB} SET hubsync.search_requests_per_second = 3")

    job_id = value("SELECT hubsync_schedule('* * * * *')")
    tap.is_(value(f"SELECT schedule || ' ' || command || ' ' || database FROM cron.job WHERE jobid = {job_id}"),
            f"* * * * * CALL public.hubsync_run() {DB}", "hubsync_schedule() created the job")
    tap.is_(value("SELECT bool_and(next_run_at = date_trunc('minute', now()) + interval '1 minute' "
                  "AND schedule = '* * * * *') FROM hubsync.sync_status"),
            "t", "sync_status shows the next whole minute as the next run")

    started = time.monotonic()
    pid = wait_for_cron_run(75)
    tap.ok(pid, f"a pg_cron background worker started the sync after {time.monotonic() - started:.0f} s")
    if not pid:
        return None

    # While the job runs, its committed pages are visible here.
    committed = wait_for(lambda: value(
        f"SELECT count(*) FROM hubsync.contacts WHERE EXISTS (SELECT 1 FROM hubsync.sync_runs "
        f"WHERE pid = {pid} AND entity_type = 'contacts' AND status = 'running') "
        f"HAVING count(*) > 0"), 30, 0.2)
    tap.ok(committed, f"while the job runs, {committed} committed contacts are visible to other sessions")
    status = json_value(f"SELECT jsonb_agg(state) FROM hubsync.sync_status WHERE running_pid = {pid}")
    tap.is_(status, ["running"], "sync_status shows the job's run")

    finished = wait_for(lambda: value(
        f"SELECT count(*) = 4 FROM hubsync.sync_runs WHERE pid = {pid} AND status = 'ok'") == "t", 90, 0.5)
    tap.ok(finished, "the job's run completed every type")
    problems = mirror_problems(complete=True)
    tap.ok(not problems, "the scheduled run left the mirror equal to the portal", *problems)
    details = wait_for(lambda: value(
        f"SELECT status || ' ' || job_pid FROM cron.job_run_details WHERE jobid = {job_id} "
        f"AND job_pid = {pid} AND status <> 'running'"), 10, 0.2)
    tap.is_(details, f"succeeded {pid}", "cron.job_run_details records the run as succeeded")
    return job_id


def check_other_database_run():
    ran = wait_for(lambda: value("SELECT count(DISTINCT entity_type) FROM hubsync.sync_runs WHERE status = 'ok'",
                                 OTHER_DB) == "4", 120, 0.5)
    tap.ok(ran, "the job scheduled from the other database synced it")


def check_unschedule(job_id):
    tap.is_(value("SELECT hubsync_unschedule()"), "t", "hubsync_unschedule() removes the job")
    tap.is_(value(f"SELECT count(*) FROM cron.job WHERE jobid = {job_id}"), "0", "the job is gone")
    tap.is_(value("SELECT count(*) FROM hubsync.sync_status WHERE schedule IS NULL AND next_run_at IS NULL"),
            "4", "sync_status shows no schedule any more")


def check_without_pg_cron():
    """A cluster with hubsync but without pg_cron or shared_preload_libraries."""
    bin_dir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
    as_owner = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    directory = tempfile.mkdtemp(prefix="hubsync-plain-")
    if as_owner:
        shutil.chown(directory, "postgres")
    data = os.path.join(directory, "data")
    env = dict(os.environ, PGHOST=directory, PGPORT="5432")
    try:
        subprocess.run(as_owner + [f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "-A", "trust"],
                       check=True, capture_output=True)
        with open(os.path.join(data, "postgresql.conf"), "a") as conf:
            conf.write(f"listen_addresses = ''\nport = 5432\nunix_socket_directories = '{directory}'\n"
                       "fsync = off\n")
        subprocess.run(as_owner + [f"{bin_dir}/pg_ctl", "-D", data, "-l", os.path.join(directory, "log"),
                                   "-w", "start"], check=True, capture_output=True)
        result = subprocess.run(
            ["psql", "-X", "-q", "-At", "-d", "postgres", "-v", "VERBOSITY=verbose", "-f", "-"],
            input="CREATE EXTENSION hubsync;\n"
                  "SELECT count(*) FROM hubsync.sync_status WHERE state = 'never run';\n"
                  "SELECT hubsync_schedule();\n",
            capture_output=True, text=True, env=env)
        tap.is_(result.stdout.strip(), "4", "without preloading, sync_status still works")
        tap.like(result.stderr, r"ERROR:  55000: pg_cron is not loaded", "without pg_cron: the error")
        tap.like(result.stderr, r"HINT:  In postgresql.conf set shared_preload_libraries = 'pg_cron,hubsync'",
                 "without pg_cron: the hint shows the postgresql.conf line")
    finally:
        subprocess.run(as_owner + [f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def main():
    install_checks()
    psql("DELETE FROM cron.job WHERE command LIKE '%hubsync_run%'")
    try:
        check_other_database()
        job_id = check_scheduled_run()
        check_other_database_run()
        if job_id:
            check_unschedule(job_id)
    finally:
        psql(f"ALTER ROLE CURRENT_USER IN DATABASE {DB} RESET hubsync.search_requests_per_second")
        psql("DELETE FROM cron.job WHERE command LIKE '%hubsync_run%'")
        psql(f"DROP DATABASE IF EXISTS {OTHER_DB} WITH (FORCE)", db="postgres")
    check_without_pg_cron()


tap.run(main)
