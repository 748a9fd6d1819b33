#!/usr/bin/env python3
"""Interrupting and watching runs: pg_cancel_backend, statement_timeout and
pg_terminate_backend end a run within a second while a request hangs or a
retry waits, and the session can sync again; a second run of a type that is
already running records 'skipped' at once; another session sees
hubsync.sync_progress advance; a run started by hand prints NOTICE lines.
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubsync_tap import (Session, Tap, json_value, mock, psql, set_faults, value,  # noqa: E402
                         wait_for)

tap = Tap()



def backend_state(pid):
    return value(f"SELECT state FROM pg_stat_activity WHERE pid = {pid}")


def wait_until_waiting(pid, timeout=10):
    """Wait until the backend sleeps in hubsync's HTTP or retry wait."""
    return wait_for(lambda: value(f"SELECT wait_event_type = 'Extension' FROM pg_stat_activity "
                                  f"WHERE pid = {pid} AND state = 'active'") == "t", timeout, 0.02)


def seconds_until(predicate, timeout=10):
    """Seconds until predicate() is true, or None after timeout."""
    started = time.monotonic()
    if wait_for(predicate, timeout, 0.01) is None:
        return None
    return time.monotonic() - started


def check_cancel():
    psql("SELECT hubsync_test.reset('small');")
    set_faults({"path": "^/crm/v3/objects/companies/search$", "kind": "hang", "ms": 8000, "count": 1})
    session = Session("hubsync_cancel")
    session.send("CALL hubsync_run('companies');")
    pid = session.backend_pid()
    tap.ok(wait_until_waiting(pid), "cancel: the run waits for the hanging search")
    time.sleep(0.3)
    psql(f"SELECT pg_cancel_backend({pid})")
    elapsed = seconds_until(lambda: backend_state(pid) == "idle")
    tap.cmp(elapsed, "<", 1.0, f"cancel: the run ended {elapsed and round(elapsed, 3)} s after pg_cancel_backend")
    session.send("SELECT 'after cancel: ' || status FROM hubsync_incremental('companies');")
    returncode, out, err = session.finish(timeout=30)
    tap.like(err, r"ERROR:  57014: canceling statement due to user request", "cancel: the client sees 57014")
    tap.like(out, r"after cancel: ok", "cancel: the same session syncs again")
    tap.is_(value("SELECT error FROM hubsync.sync_runs WHERE entity_type = 'companies' "
                  "AND status IN ('failed', 'partial') ORDER BY id LIMIT 1"),
            "canceling statement due to user request", "cancel: sync_runs records the cancel")
    set_faults()


def check_statement_timeout():
    psql("SELECT hubsync_test.reset('small');")
    set_faults({"path": "^/crm/v3/objects/companies/search$", "kind": "hang", "ms": 8000, "count": 1})
    session = Session("hubsync_timeout", options="-c statement_timeout=1500")
    started = time.monotonic()
    session.send("CALL hubsync_run('companies');")
    pid = session.backend_pid()
    wait_for(lambda: backend_state(pid) == "idle", 10, 0.01)
    elapsed = time.monotonic() - started
    returncode, out, err = session.finish(timeout=30)
    tap.cmp(elapsed, "<", 2.5, f"statement_timeout 1.5 s: the run ended after {elapsed:.2f} s")
    tap.cmp(elapsed, ">=", 1.5, "statement_timeout: not before the timeout")
    tap.like(err, r"ERROR:  57014: canceling statement due to statement timeout",
             "statement_timeout: the client sees 57014")
    set_faults()


def check_terminate():
    psql("SELECT hubsync_test.reset('small');")
    set_faults({"path": "^/crm/v3/objects/companies/search$", "kind": "hang", "ms": 8000, "count": 1})
    session = Session("hubsync_terminate")
    session.send("CALL hubsync_run('companies');")
    pid = session.backend_pid()
    wait_until_waiting(pid)
    time.sleep(0.3)
    psql(f"SELECT pg_terminate_backend({pid})")
    elapsed = seconds_until(lambda: backend_state(pid) is None)
    session.finish(timeout=30)
    tap.cmp(elapsed, "<", 1.0, f"terminate: the backend was gone {elapsed and round(elapsed, 3)} s later")
    status = json_value("SELECT to_jsonb(s) FROM hubsync.sync_status s WHERE entity_type = 'companies'")
    tap.is_(status["state"], "interrupted", "terminate: sync_status shows the run as interrupted")
    tap.is_(value("SELECT pid IS NULL FROM hubsync.sync_progress WHERE entity_type = 'companies'"), "t",
            "terminate: sync_progress no longer shows the dead backend")
    set_faults()


def check_cancel_during_waits():
    psql("SELECT hubsync_test.reset('small');")
    cases = [
        ("retry backoff", {"path": "^/crm/v3/objects/companies/search$", "kind": "status",
                           "status": 503, "count": -1},
         "-c hubsync.retry_base_delay=20s -c hubsync.retry_max_delay=60s"),
        ("rate-limit wait", {"path": "^/crm/v3/objects/companies/search$", "kind": "rate429",
                             "policy": "TEN_SECONDLY_ROLLING", "count": -1},
         "-c hubsync.retry_max_delay=60s"),
    ]
    for label, fault, options in cases:
        set_faults(fault)
        if fault["kind"] == "rate429":
            mock("config", {"retry_after_seconds": 30})
        session = Session(f"hubsync_wait_{label.replace(' ', '_')}", options=options)
        session.send("CALL hubsync_run('companies');")
        pid = session.backend_pid()
        wait_until_waiting(pid)
        time.sleep(0.5)
        psql(f"SELECT pg_cancel_backend({pid})")
        elapsed = seconds_until(lambda: backend_state(pid) == "idle")
        _, _, err = session.finish(timeout=30)
        tap.cmp(elapsed, "<", 1.0, f"cancel during a {label}: ended {elapsed and round(elapsed, 3)} s later")
        tap.like(err, r"57014: canceling statement due to user request", f"cancel during a {label}: 57014")
        mock("config", {"retry_after_seconds": None})
    set_faults()


def check_overlap():
    psql("SELECT hubsync_test.reset('small');")
    set_faults({"path": "^/crm/v3/objects/companies/search$", "kind": "hang", "ms": 3000, "count": 1})
    first = Session("hubsync_first")
    first.send("CALL hubsync_run('companies');")
    pid = first.backend_pid()
    wait_until_waiting(pid)
    # The run lock's first key is "HSNC" as a 32-bit integer (0x48534E43),
    # the second the type's sync_order.
    tap.is_(value("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1213419075 "
                  "AND objid = 1 AND granted"), pid, "overlap: the first run holds the companies run lock")

    started = time.monotonic()
    second = value("SELECT status FROM hubsync_incremental('companies')")
    elapsed = time.monotonic() - started
    tap.is_(second, "skipped", "overlap: a second companies run is skipped")
    tap.cmp(elapsed, "<", 1.0, f"overlap: skipped at once ({elapsed:.3f} s)")
    result = psql("SET client_min_messages = notice; CALL hubsync_run('companies');", check=False)
    tap.like(result.stderr, r"NOTICE:  hubsync: companies: another sync of this type is in progress; skipped",
             "overlap: CALL hubsync_run() says it skipped")
    tap.is_(value("SELECT count(*) FROM hubsync.sync_runs WHERE entity_type = 'companies' "
                  "AND status = 'skipped' AND error = 'another sync of this type was in progress'"),
            "2", "overlap: both skipped runs are in sync_runs")
    tap.is_(value("SELECT status FROM hubsync_incremental('contacts')"), "ok",
            "overlap: another type is not blocked")
    status = json_value("SELECT to_jsonb(s) FROM hubsync.sync_status s WHERE entity_type = 'companies'")
    tap.is_((status["state"], str(status["running_pid"])), ("running", pid),
            "overlap: sync_status shows the first run as running")

    returncode, _, err = first.finish(timeout=30)
    tap.ok("ERROR" not in err, "overlap: the first run completes", err[-300:])
    tap.is_(value("SELECT status FROM hubsync.sync_runs WHERE entity_type = 'companies' "
                  "AND status <> 'skipped' ORDER BY id DESC LIMIT 1"), "ok",
            "overlap: the first run is recorded ok")
    tap.is_(value("SELECT records FROM hubsync.sync_status WHERE entity_type = 'companies'"),
            value("SELECT count(*) FROM hubsync_test.dump('companies')"),
            "overlap: every company is mirrored")
    set_faults()


def check_notices():
    psql("SELECT hubsync_test.reset('demo');")
    result = psql("SET client_min_messages = notice; CALL hubsync_run('companies');", check=False)
    pages = re.findall(r"NOTICE:  hubsync: companies: search, page (\d+): (\d+) fetched, (\d+) new, "
                       r"0 updated, watermark \d{4}-\d\d-\d\d", result.stderr)
    numbers = [int(p[0]) for p in pages]
    tap.ok(len(numbers) >= 3 and numbers == list(range(1, len(numbers) + 1)),
           "notices: one line per search page", str(numbers))
    tap.is_([int(p[1]) for p in pages][-1:], [600], "notices: the last page line counts every company")
    tap.like(result.stderr, r"NOTICE:  hubsync: companies: ok, 600 fetched, 600 new, 0 updated, "
                            r"0 archived, 0 deleted, \d+ queue entries", "notices: a summary line")
    psql("SELECT hubsync_reset_watermark('companies');")
    result = psql("SET client_min_messages = notice; SET hubsync.progress_notices = off; "
                  "CALL hubsync_run('companies');", check=False)
    tap.ok("search, page" not in result.stderr, "notices off: no page lines", result.stderr[-300:])
    tap.like(result.stderr, r"NOTICE:  hubsync: companies: ok, ", "notices off: the summary stays")


def check_progress():
    psql("SELECT hubsync_test.reset('demo');")
    session = Session("hubsync_progress", options="-c hubsync.search_requests_per_second=3 "
                                                  "-c hubsync.progress_notices=off")
    session.send("CALL hubsync_run();")
    pid = session.backend_pid()
    samples = []
    for _ in range(12):
        time.sleep(0.35)
        row = json_value(f"SELECT to_jsonb(p) FROM hubsync.sync_progress p WHERE pid = {pid}")
        if row:
            samples.append(row)
    fetched = [(s["entity_type"], s["fetched"]) for s in samples]
    tap.diag(f"progress samples: {fetched}")
    tap.cmp(len(samples), ">=", 10, "progress: another session sees the running run")
    order = ["companies", "contacts", "line_items", "invoices"]
    positions = [(order.index(s["entity_type"]), s["fetched"]) for s in samples]
    tap.ok(positions == sorted(positions), "progress: type and fetched never go back")
    tap.cmp(len(set(positions)), ">=", 4, "progress: it advanced at least 3 times")
    tap.ok(all(s["phase"] in ("starting", "search", "archive scan", "association refresh") for s in samples),
           "progress: the phase is a known one", str({s["phase"] for s in samples}))
    tap.ok(all(s["http_requests"] >= s["pages"] for s in samples), "progress: requests are counted")
    running = json_value(f"SELECT jsonb_agg(entity_type) FROM hubsync.sync_status WHERE running_pid = {pid}")
    tap.is_(len(running or []), 1, "progress: sync_status shows one type running in that backend")
    psql(f"SELECT pg_terminate_backend({pid})")
    session.finish(timeout=30)


def main():
    check_cancel()
    check_statement_timeout()
    check_terminate()
    check_cancel_during_waits()
    check_overlap()
    check_notices()
    check_progress()


tap.run(main)
