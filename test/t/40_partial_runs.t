#!/usr/bin/env python3
"""Faults in the middle of CALL hubsync_run() over the demo portal.  The
run stops with a clear error, the steps it committed stay, sync_runs and
sync_status show a partial run, the mirror is a consistent prefix of the
portal (nothing from the failed response is written) and the next run
completes it.  Also: an empty 200 body and a 200 body without results are
errors, not empty pages.
"""

import http.server
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hubsync_tap import (Session, Tap, install_checks, json_value, mirror_problems, mock,  # noqa: E402
                         psql, set_faults, value)

OPTIONS = ("-c hubsync.max_retries=1 -c hubsync.retry_base_delay=10ms "
           "-c hubsync.retry_max_delay=200ms -c hubsync.progress_notices=off")

tap = Tap()


def call_run(name, options=OPTIONS):
    """CALL hubsync_run() in a new session; returns (returncode, stderr)."""
    session = Session(name, options=options, stop_on_error=True)
    session.send("CALL hubsync_run();")
    returncode, _, stderr = session.finish(timeout=120)
    return returncode, stderr


def last_runs():
    """The newest sync_runs row of each type, as a dict of dicts."""
    rows = json_value("""
        SELECT coalesce(jsonb_object_agg(entity_type, to_jsonb(r) - 'entity_type'), '{}')
          FROM (SELECT DISTINCT ON (entity_type) * FROM hubsync.sync_runs
                 ORDER BY entity_type, id DESC) AS r""")
    return rows


def status_of(entity_type):
    return json_value(f"SELECT to_jsonb(s) FROM hubsync.sync_status s WHERE entity_type = '{entity_type}'")


def fault_mid_run(label, fault, failing_type, error_pattern, sqlstate, options=OPTIONS):
    """Run with one fault installed; check the partial outcome and the recovery."""
    psql("SELECT hubsync_test.reset('demo');")
    set_faults(fault)
    mock("stats/clear")
    returncode, stderr = call_run(f"hubsync_partial_{failing_type}", options)
    set_faults()
    requests = mock("stats")["requests"]

    tap.ok(returncode not in (0, None), f"{label}: CALL hubsync_run() fails", stderr[-300:])
    tap.like(stderr, rf"ERROR:  {sqlstate}: {error_pattern}", f"{label}: the client sees the error")
    runs = last_runs()
    failing = runs.get(failing_type, {})
    tap.is_(failing.get("status"), "partial", f"{label}: the {failing_type} run is recorded as partial")
    tap.like(failing.get("error"), error_pattern, f"{label}: sync_runs has the error")
    tap.cmp(failing.get("pages"), ">", 0, f"{label}: pages committed before the fault are counted")
    order = ["companies", "contacts", "line_items", "invoices"]
    before = order[:order.index(failing_type)]
    tap.ok(all(runs.get(t, {}).get("status") == "ok" for t in before),
           f"{label}: the types before {failing_type} completed", str(runs))
    tap.ok(all(t not in runs for t in order[order.index(failing_type) + 1:]),
           f"{label}: the types after {failing_type} did not start")
    stored = int(value(f"SELECT records FROM hubsync.sync_status WHERE entity_type = '{failing_type}'"))
    total = int(value(f"SELECT count(*) FROM hubsync_test.portal_records WHERE entity_type = '{failing_type}'"))
    tap.ok(0 < stored < total, f"{label}: {stored} of {total} {failing_type} committed before the fault")
    problems = mirror_problems()
    tap.ok(not problems, f"{label}: the mirror is a consistent prefix of the portal", *problems)
    status = status_of(failing_type)
    tap.is_((status["state"], status["consecutive_failures"]), ("partial", 1),
            f"{label}: sync_status shows the partial run")
    tap.like(status["last_error"], error_pattern, f"{label}: sync_status shows the error")

    returncode, stderr = call_run(f"hubsync_recover_{failing_type}")
    tap.is_(returncode, 0, f"{label}: the next run succeeds")
    problems = mirror_problems(complete=True)
    tap.ok(not problems, f"{label}: the next run completes the mirror", *problems, stderr[-300:])
    recorded = int(value(f"SELECT count(*) FROM hubsync.sync_runs WHERE entity_type = '{failing_type}' "
                         "AND status IN ('failed', 'partial')"))
    tap.is_(recorded, 1, f"{label}: the failure is recorded once")
    return requests


def check_daily():
    requests = fault_mid_run(
        "DAILY", {"path": "^/crm/v3/objects/line_items/search$", "kind": "rate429",
                  "policy": "DAILY", "skip": 2, "count": -1},
        "line_items",
        r"HubSpot daily request limit reached for POST /crm/v3/objects/line_items/search "
        r"\(HTTP 429, policy DAILY\)", "53400")
    limited = [i for i, r in enumerate(requests) if r["status"] == 429]
    tap.is_(len(limited), 1, "DAILY: one 429, no retry and no wait")
    tap.is_(limited[-1:], [len(requests) - 1], "DAILY: no request after the 429")
    tap.is_(value("SELECT rate_limited FROM hubsync.sync_runs WHERE entity_type = 'line_items' "
                  "AND status = 'partial'"), "1", "DAILY: the partial run counts the 429")


def check_http_faults():
    fault_mid_run(
        "503", {"path": "^/crm/v3/objects/contacts/search$", "kind": "status", "status": 503,
                "skip": 3, "count": -1},
        "contacts",
        r"HubSpot request POST /crm/v3/objects/contacts/search failed with HTTP 503 after 1 retries",
        "08006")
    fault_mid_run(
        "connection reset", {"path": "^/crm/v3/objects/line_items/search$", "kind": "reset",
                             "skip": 4, "count": -1},
        "line_items", r"HubSpot request POST /crm/v3/objects/line_items/search failed: ", "08006")
    fault_mid_run(
        "HTML 502", {"path": "^/crm/v3/objects/companies/search$", "kind": "html", "status": 502,
                     "skip": 1, "count": -1},
        "companies",
        r"HubSpot request POST /crm/v3/objects/companies/search failed with HTTP 502 after 1 retries",
        "08006")
    fault_mid_run(
        "hang past request_timeout",
        {"path": "^/crm/v3/objects/invoices/search$", "kind": "hang", "ms": 3000, "skip": 2, "count": -1},
        "invoices",
        r"HubSpot request POST /crm/v3/objects/invoices/search failed: Operation timed out after",
        "08006", options=OPTIONS + " -c hubsync.request_timeout=1s")
    fault_mid_run(
        "malformed search", {"path": "^/crm/v3/objects/contacts/search$", "kind": "malformed",
                             "skip": 2, "count": 1},
        "contacts", r"HubSpot returned invalid JSON for POST /crm/v3/objects/contacts/search", "22032")
    fault_mid_run(
        "malformed association read",
        {"path": "^/crm/v4/associations/invoices/line_items/batch/read$", "kind": "malformed",
         "skip": 2, "count": 1},
        "invoices",
        r"HubSpot returned invalid JSON for POST /crm/v4/associations/invoices/line_items/batch/read",
        "22032")
    requests = fault_mid_run(
        "401", {"path": "^/crm/v3/objects/contacts/search$", "kind": "status", "status": 401,
                "skip": 2, "count": -1},
        "contacts",
        r"HubSpot rejected the access token for POST /crm/v3/objects/contacts/search \(HTTP 401\)",
        "28000")
    unauthorized = [r for r in requests if r["status"] == 401]
    tap.is_(len(unauthorized), 1, "401: not retried")


def check_reconcile_failure():
    """A failure while reconcile lists every id, with the backend still connected."""
    psql("SELECT hubsync_test.reset('small');")
    returncode, _ = call_run("hubsync_before_reconcile")
    tap.is_(returncode, 0, "reconcile: the first load succeeds")
    psql("SELECT pg_sleep(1.1);")
    # The first GET of companies is the recycle-bin scan, the second the
    # reconcile's list of every id.
    set_faults({"path": "^/crm/v3/objects/companies$", "kind": "status", "status": 500,
                "skip": 1, "count": -1})
    session = Session("hubsync_reconcile_failure",
                      options=OPTIONS + " -c hubsync.reconcile_interval=1s")
    session.send("CALL hubsync_run('companies');")
    session.send("SELECT 'state ' || state FROM hubsync.sync_status WHERE entity_type = 'companies';")
    session.send("SELECT 'row ' || status FROM hubsync.sync_runs WHERE entity_type = 'companies' "
                 "ORDER BY id DESC LIMIT 1;")
    _, out, err = session.finish(timeout=60)
    set_faults()
    tap.like(err, r"ERROR:  08006: HubSpot request GET /crm/v3/objects/companies failed with HTTP 500",
             "reconcile: the client sees the error")
    tap.like(out, r"state failed", "reconcile: sync_status shows the failure, not a running run")
    tap.like(out, r"row (failed|partial)", "reconcile: the run's row records the failure")


class FixedResponseHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with status 200 and the server's body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests += 1
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, format, *args):
        pass


def run_against(body):
    """A SELECT run against a server that always answers 200 with body."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FixedResponseHandler)
    server.body = body
    server.requests = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = psql(f"""
            SET hubsync.hubspot_url = 'http://127.0.0.1:{server.server_address[1]}';
            SET hubsync.max_retries = 2;
            SET hubsync.retry_base_delay = '10ms';
            \\set VERBOSITY verbose
            SELECT * FROM hubsync_incremental('companies');""", check=False)
    finally:
        server.shutdown()
        server.server_close()
    return result, server.requests


def check_bodies_without_results():
    psql("SELECT hubsync_test.reset('small');")
    result, requests = run_against(b"")
    tap.ok(result.returncode != 0, "empty 200 body: the run fails")
    tap.like(result.stderr, r"HubSpot returned an empty body for POST /crm/v3/objects/companies/search",
             "empty 200 body: the error names the endpoint")
    tap.is_(requests, 3, "empty 200 body: retried twice")
    tap.is_(value("SELECT watermark IS NULL AND last_sync_at IS NULL FROM hubsync.sync_status "
                  "WHERE entity_type = 'companies'"), "t", "empty 200 body: no watermark, no success")

    result, requests = run_against(b'{"total": 0}')
    tap.ok(result.returncode != 0, "200 body without results: the run fails")
    tap.is_(value("SELECT last_sync_at IS NULL FROM hubsync.sync_status WHERE entity_type = 'companies'"),
            "t", "200 body without results: not recorded as a complete sync")


def main():
    install_checks()
    psql("SELECT hubsync_test.reset('demo'); SELECT hubsync_test.snapshot_portal();")
    check_daily()
    check_http_faults()
    check_reconcile_failure()
    check_bodies_without_results()


tap.run(main)
