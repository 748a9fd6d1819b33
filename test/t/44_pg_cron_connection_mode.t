#!/usr/bin/env python3
"""The pg_cron job also runs in pg_cron's default connection mode.

With cron.use_background_workers off, pg_cron starts each job over a libpq
connection to the server instead of in a background worker.  This script
starts a second throwaway cluster in that mode (pg_cron connects through
the cluster's Unix socket, which cron.host names), schedules hubsync
every minute against the local HubSpot-compatible server the main test
cluster uses, and waits for the job's run to finish.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

PORT = str(int(os.environ.get("HS_PG_PORT", "55432")) + 7)
DATABASE = "hubsync_cron_conn"
checks = []


def check(ok, name, diagnostic=""):
    checks.append((bool(ok), name, diagnostic))


def main():
    bin_dir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=True).stdout.strip()
    as_owner = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    directory = tempfile.mkdtemp(prefix="hubsync-cron-conn-")
    if as_owner:
        shutil.chown(directory, "postgres")
    data = os.path.join(directory, "data")
    env = dict(os.environ, PGHOST=directory, PGPORT=PORT, PGUSER="postgres")

    def psql(sql, db=DATABASE):
        result = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                                capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {sql}\n{result.stderr}")
        return result.stdout.strip()

    try:
        subprocess.run(as_owner + [f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "-A", "trust"],
                       check=True, capture_output=True)
        with open(os.path.join(data, "postgresql.conf"), "a") as conf:
            conf.write(f"listen_addresses = ''\nport = {PORT}\nunix_socket_directories = '{directory}'\n"
                       f"shared_preload_libraries = 'pg_cron,hubsync'\n"
                       f"cron.database_name = '{DATABASE}'\n"
                       f"cron.use_background_workers = off\n"
                       f"cron.host = '{directory}'\n"
                       f"hubsync.hubspot_url = '{os.environ['HS_MOCK_URL']}'\n"
                       f"hubsync.hubspot_token = '{os.environ['HS_TOKEN']}'\n"
                       "fsync = off\n")
        subprocess.run(as_owner + [f"{bin_dir}/pg_ctl", "-D", data, "-l", os.path.join(directory, "log"),
                                   "-w", "start"], check=True, capture_output=True)
        psql(f"CREATE DATABASE {DATABASE}", db="postgres")
        psql("CREATE EXTENSION pg_cron")
        psql("CREATE EXTENSION hubsync")
        check(psql("SHOW cron.use_background_workers") == "off", "pg_cron runs in connection mode")

        job_id = psql("SELECT hubsync_schedule('* * * * *')")
        check(job_id.isdigit(), f"hubsync_schedule() created job {job_id}")

        deadline = time.monotonic() + 130
        done = ""
        while time.monotonic() < deadline:
            done = psql("SELECT count(*) FROM hubsync.sync_runs WHERE status = 'ok'")
            if done == "4":
                break
            time.sleep(1)
        check(done == "4", "the job's run completed every type", f"ok runs: {done}")
        check(psql("SELECT count(*) FROM hubsync.contacts") != "0", "the job's run stored contacts")
        status = psql(f"SELECT status FROM cron.job_run_details WHERE jobid = {job_id} "
                      "ORDER BY start_time LIMIT 1")
        check(status in ("running", "succeeded"), "pg_cron records the job run",
              f"job_run_details status: {status}")
        psql("SELECT hubsync_unschedule()")
    finally:
        subprocess.run(as_owner + [f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


try:
    main()
except Exception as error:  # report a setup failure as a failed check, not a traceback only
    check(False, "connection-mode cluster set up and ran", str(error))

print(f"1..{len(checks)}")
for number, (ok, name, diagnostic) in enumerate(checks, 1):
    print(f"{'ok' if ok else 'not ok'} {number} - {name}")
    if not ok and diagnostic:
        for line in diagnostic.splitlines():
            print(f"# {line}")
sys.exit(0 if all(ok for ok, _, _ in checks) else 1)
