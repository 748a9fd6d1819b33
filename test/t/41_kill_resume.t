#!/usr/bin/env python3
"""Killed runs: CALL hubsync_run() over the demo portal, ended 20 times in a
row at random points by pg_terminate_backend or kill -9.  After every kill
the mirror is a consistent prefix of the portal: every record the watermark
covers is stored, nothing past it is, every stored row and association is
the portal's, and no record was written twice: with hubsync.first_load =
enqueue, every stored record has exactly one transfer-queue entry.  The
final run completes the mirror.  Then a load killed half-way resumes from its last committed step.

HS_KILL_SEED fixes the random kill points; the seed is printed either way.
"""

import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubsync_tap import (Session, Tap, install_checks, mirror_problems, mock,  # noqa: E402
                         psql, queue_problems, search_requests, value, wait_for,
                         wait_until_ready)

KILLS = 20
# A demo load needs 38 searches, so paced to 4 a second it takes about 10
# seconds.  Most kills come 0-1 seconds after the run has written its first
# page, so that every run gets further into the load.  Every fifth comes
# 0.02-0.3 seconds after the backend starts, before the run writes anything.
SLOW = ("-c hubsync.search_requests_per_second=4 -c hubsync.progress_notices=off "
        "-c hubsync.first_load=enqueue")
FAST = "-c hubsync.progress_notices=off -c hubsync.first_load=enqueue"

tap = Tap()


def mirror_total():
    return int(value("SELECT sum(records + archived_records) FROM hubsync.sync_status"))


def run_to_end(name, options=FAST):
    """CALL hubsync_run() in a new session; returns (returncode, stderr)."""
    session = Session(name, options=options, stop_on_error=True)
    session.send("CALL hubsync_run();")
    returncode, _, stderr = session.finish(timeout=120)
    return returncode, stderr


def kill_loop(portal_total, rng):
    """Kill 20 runs; returns how many of them interrupted an unfinished load."""
    interrupted = 0
    for kill in range(1, KILLS + 1):
        method = "pg_terminate_backend" if kill % 2 else "kill -9"
        session = Session(f"hubsync_kill_{kill}", options=SLOW)
        session.send("CALL hubsync_run();")
        pid = session.backend_pid()
        if pid is None:
            tap.bail(f"kill {kill}: the backend of CALL hubsync_run() did not show up")
        if kill % 5 == 0:
            delay = rng.uniform(0.02, 0.3)
            where = f"{delay:.2f} s after start"
        else:
            wait_for(lambda: value(f"SELECT 1 FROM hubsync.sync_progress WHERE pid = {pid} "
                                   "AND pages >= 1") == "1", 10, 0.02)
            delay = rng.uniform(0.0, 1.0)
            where = f"{delay:.2f} s after its first page"
        time.sleep(delay)

        finished_before_kill = session.process.poll() is not None
        if method == "kill -9":
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                finished_before_kill = True
        else:
            psql(f"SELECT pg_terminate_backend({pid})")
        _, _, stderr = session.finish(timeout=30)
        if method == "kill -9" and not wait_until_ready():
            tap.bail("the server did not recover from kill -9 within 60 seconds")

        stored = mirror_total()
        if stored < portal_total and not finished_before_kill:
            interrupted += 1
        problems = mirror_problems() + queue_problems()
        tap.ok(not problems,
               f"kill {kill} ({method} {where}, {stored} rows stored): consistent prefix",
               *problems, stderr.strip()[-500:])
    return interrupted


def check_final_run(interrupted):
    returncode, stderr = run_to_end("hubsync_kill_final")
    tap.is_(returncode, 0, "the final CALL hubsync_run() succeeds")
    problems = mirror_problems(complete=True) + queue_problems()
    tap.ok(not problems, "after the final run the mirror equals the portal", *problems, stderr[-500:])
    tap.is_(value("SELECT count(*) FROM hubsync.sync_runs WHERE status = 'running'"), "0",
            "no sync_runs row is left running")
    tap.is_(value("SELECT string_agg(DISTINCT state, ',') FROM hubsync.sync_status"), "ok",
            "sync_status shows every type ok")
    tap.cmp(int(value("SELECT count(*) FROM hubsync.sync_runs WHERE status = 'failed' "
                      "AND error LIKE 'the run ended without recording a result%'")),
            ">=", interrupted, "the killed runs are recorded as failed")


def check_resume(portal_total):
    # A whole load at full speed gives the search requests of a full load.
    psql("SELECT hubsync_test.reset('demo');")
    mock("stats/clear")
    returncode, _ = run_to_end("hubsync_full_load")
    tap.is_(returncode, 0, "a full load at full speed succeeds")
    full_searches = search_requests()

    # The same load, paced, terminated once contacts have committed 4 pages.
    psql("SELECT hubsync_test.reset('demo');")
    mock("stats/clear")
    slow = Session("hubsync_resume", options=SLOW)
    slow.send("CALL hubsync_run();")
    pid = slow.backend_pid()
    reached = wait_for(lambda: value("SELECT pages >= 4 FROM hubsync.sync_progress "
                                     "WHERE entity_type = 'contacts' AND pid IS NOT NULL") == "t",
                       60, 0.05)
    tap.ok(reached, "the paced load reached page 4 of contacts")
    psql(f"SELECT pg_terminate_backend({pid})")
    slow.finish(timeout=30)
    killed_searches = search_requests()
    stored_at_kill = mirror_total()
    tap.ok(0 < stored_at_kill < portal_total,
           f"the killed load stored {stored_at_kill} of {portal_total} records")
    problems = mirror_problems()
    tap.ok(not problems, "the killed load left a consistent prefix", *problems)

    mock("stats/clear")
    returncode, _ = run_to_end("hubsync_resumed")
    tap.is_(returncode, 0, "the resumed load succeeds")
    resumed_searches = search_requests()
    tap.diag(f"search requests: full load {full_searches}, killed load {killed_searches}, "
             f"resumed load {resumed_searches}")
    tap.cmp(resumed_searches, "<", full_searches, "the resumed load sends fewer searches than a full one")
    # Resuming costs two searches for the finished companies (the drain at
    # their cursor and one empty page after it), one to re-read the
    # boundary millisecond of contacts, and the page that was in flight.
    tap.cmp(resumed_searches, "<=", full_searches - killed_searches + 4,
            "the resumed load repeats at most 4 searches of the killed one")
    inserted, updated = value(
        "SELECT sum(inserted) || ' ' || sum(updated) FROM hubsync.sync_runs "
        "WHERE status = 'ok' AND started_at > (SELECT max(started_at) FROM hubsync.sync_runs "
        "WHERE status = 'failed')").split()
    tap.is_(int(inserted) + stored_at_kill, portal_total,
            "the resumed load inserted exactly the records the killed one had not stored")
    tap.is_(int(updated), 0, "the resumed load rewrote no stored record")
    problems = mirror_problems(complete=True)
    tap.ok(not problems, "after resuming the mirror equals the portal", *problems)


def main():
    seed = int(os.environ.get("HS_KILL_SEED", str(int(time.time()))))
    tap.diag(f"kill points from HS_KILL_SEED={seed}")

    install_checks()
    psql("SELECT hubsync_test.reset('demo'); SELECT hubsync_test.snapshot_portal();")
    portal_total = int(value("SELECT count(*) FROM hubsync_test.portal_records"))
    tap.ok(portal_total > 7000, f"the demo portal has {portal_total} records")

    interrupted = kill_loop(portal_total, random.Random(seed))
    tap.cmp(interrupted, ">=", 15, f"kills that interrupted an unfinished load ({interrupted} of {KILLS})")
    check_final_run(interrupted)
    check_resume(portal_total)


tap.run(main)
