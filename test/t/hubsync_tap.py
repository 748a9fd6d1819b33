"""TAP output, psql sessions and server control for hubsync's prove scripts.

The scripts in test/t/ run against the cluster and the local
HubSpot-compatible server that test/run-tests.sh starts: PGHOST, PGPORT and
PGUSER select the cluster, HS_DB the database (default hubsync_test) and
HS_MOCK_URL the server, which must listen on this machine.
"""

import http.client
import json
import os
import re
import subprocess
import sys
import time
import traceback
from urllib.parse import urlencode, urlsplit

DB = os.environ.get("HS_DB", "hubsync_test")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class Tap:
    """Numbered TAP test lines; done() prints the plan and exits.

    A check given todo= is a known bug: TAP marks it "# TODO", and prove
    reports it without failing, or as unexpectedly passing once fixed.
    """

    def __init__(self):
        self.count = 0
        self.failed = 0

    def ok(self, condition, name, *diagnostics, todo=None):
        self.count += 1
        directive = f" # TODO {todo}" if todo else ""
        print(f"{'ok' if condition else 'not ok'} {self.count} - {name}{directive}", flush=True)
        if not condition:
            if not todo:
                self.failed += 1
            for line in diagnostics:
                self.diag(line)
        return bool(condition)

    def is_(self, got, expected, name, todo=None):
        return self.ok(got == expected, name, f"got:      {got!r}", f"expected: {expected!r}",
                       todo=todo)

    def cmp(self, got, op, bound, name, todo=None):
        checks = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
                  ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
        passed = got is not None and checks[op](got, bound)
        return self.ok(passed, name, f"got {got!r}, expected {op} {bound!r}", todo=todo)

    def like(self, text, pattern, name, todo=None):
        passed = text is not None and re.search(pattern, text, re.S) is not None
        return self.ok(passed, name, f"text:    {text!r}", f"pattern: {pattern!r}", todo=todo)

    def diag(self, message):
        for line in str(message).splitlines() or [""]:
            print(f"# {line}", flush=True)

    def done(self):
        print(f"1..{self.count}", flush=True)
        sys.exit(1 if self.failed else 0)

    def bail(self, reason):
        print(f"Bail out! {reason}", flush=True)
        sys.exit(255)

    def run(self, main):
        """Run main(), turning an unexpected exception into a bail-out, then done()."""
        try:
            main()
        except Exception as error:  # noqa: BLE001 - any failure ends the script
            self.diag(traceback.format_exc())
            self.bail(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        self.done()


class PsqlError(Exception):
    """A psql run that failed; the message has psql's stderr."""


def _psql_command(db):
    return ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"]


def _environment(options=None, application_name=None):
    env = dict(os.environ)
    if options:
        env["PGOPTIONS"] = options
    if application_name:
        env["PGAPPNAME"] = application_name
    return env


def psql(sql, db=DB, options=None, check=True, timeout=300):
    """Run SQL statements (each on its own, as psql sends them); return stdout.

    With check=False a failure returns the completed process instead of
    raising PsqlError.
    """
    result = subprocess.run(_psql_command(db), input=sql, capture_output=True, text=True,
                            env=_environment(options), timeout=timeout)
    if not check:
        return result
    if result.returncode != 0:
        raise PsqlError(f"psql failed ({result.returncode}) for:\n{sql}\n{result.stderr}")
    return result.stdout.strip()


def value(sql, db=DB):
    """Return the single value of a query as text (None for SQL NULL)."""
    text = psql(sql, db)
    return text if text != "" else None


def json_value(sql, db=DB):
    """Return the single json or jsonb value of a query, decoded."""
    text = value(sql, db)
    return None if text is None else json.loads(text)


class Session:
    """A psql process that reads statements from a pipe, so that a test can
    start a statement, act on its backend and then send more."""

    def __init__(self, application_name, db=DB, options=None, verbose_errors=True,
                 stop_on_error=False):
        self.application_name = application_name
        # Without stop_on_error a statement that fails, e.g. when cancelled,
        # leaves the session open for the next one, and psql exits with 0.
        command = ["psql", "-X", "-q", "-A", "-t", "-d", db]
        if stop_on_error:
            command += ["-v", "ON_ERROR_STOP=1"]
        if verbose_errors:
            command += ["-v", "VERBOSITY=verbose"]
        command += ["-f", "-"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        env=_environment(options, application_name))

    def send(self, sql):
        self.process.stdin.write(sql if sql.endswith("\n") else sql + "\n")
        self.process.stdin.flush()

    def backend_pid(self, timeout=10):
        """Return the pid of the session's backend once it is connected, else None."""
        return wait_for(lambda: value(
            "SELECT pid FROM pg_stat_activity WHERE application_name = "
            f"'{self.application_name}' ORDER BY backend_start DESC LIMIT 1"), timeout, 0.02)

    def finish(self, timeout=120):
        """Close stdin, wait for psql to exit and return (returncode, stdout, stderr)."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            return None, out, err
        return self.process.returncode, out, err


def wait_for(probe, timeout, interval=0.1):
    """Call probe until it returns something truthy and return that, or None after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_until_ready(timeout=60):
    """Wait for the server to accept queries again, e.g. after crash recovery."""
    def ready():
        if subprocess.run(["pg_isready", "-q"], env=_environment()).returncode != 0:
            return False
        return psql("SELECT 1", check=False).returncode == 0
    return wait_for(ready, timeout, 0.2) is not None


def _mock_address():
    url = os.environ.get("HS_MOCK_URL") or os.environ.get("HUBSPOT_MOCK_URL")
    if not url:
        raise RuntimeError("HS_MOCK_URL is not set; run the test through test/run-tests.sh")
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
        raise RuntimeError(f"HS_MOCK_URL {url!r} is not an http URL on this machine")
    return parts.hostname, parts.port


def mock(verb, body=None, query=None):
    """Call the server's control API and return the decoded JSON response."""
    host, port = _mock_address()
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        if query is not None:
            connection.request("GET", f"/_mock/{verb}?{urlencode(query)}")
        elif body is None and verb in ("stats", "health", "config"):
            connection.request("GET", f"/_mock/{verb}")
        else:
            connection.request("POST", f"/_mock/{verb}", body=json.dumps(body or {}),
                               headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read().decode("utf-8")
    finally:
        connection.close()
    if response.status >= 400:
        raise RuntimeError(f"/_mock/{verb} failed with HTTP {response.status}: {data}")
    return json.loads(data) if data.strip().startswith(("{", "[")) else data


def set_faults(*faults):
    mock("faults", {"faults": list(faults)})


def search_requests():
    """Count the search requests the server received since the last stats/clear."""
    return mock("stats").get("counts", {}).get("search", 0)


# SQL objects the prove scripts share, kept in schema hubsync_test (which
# test/helpers.sql creates): a snapshot of the portal and a check that the
# mirror is a consistent prefix of it.
CHECK_SQL = r"""
CREATE TABLE IF NOT EXISTS hubsync_test.portal_records (
    entity_type text, id bigint, updated_at timestamptz, properties jsonb,
    PRIMARY KEY (entity_type, id));
CREATE TABLE IF NOT EXISTS hubsync_test.portal_links (
    from_type text, from_id bigint, to_type text, to_id bigint, type_id int,
    category text, label text);

-- Copy the portal's live records and associations, as the sync should
-- store them.
CREATE OR REPLACE FUNCTION hubsync_test.snapshot_portal() RETURNS void
LANGUAGE sql AS $$
    TRUNCATE hubsync_test.portal_records, hubsync_test.portal_links;
    INSERT INTO hubsync_test.portal_records
    SELECT t, (d->>'id')::bigint, (d->>'updatedAt')::timestamptz,
           jsonb_strip_nulls(coalesce(
               (SELECT jsonb_object_agg(key, value) FROM jsonb_each(d->'properties')
                 WHERE key = ANY (hubsync._request_properties(t))), '{}'))
      FROM hubsync.object_types AS o(t), LATERAL hubsync_test.dump(t) AS d;
    INSERT INTO hubsync_test.portal_links
    SELECT f, (a->>'from_id')::bigint, t, (a->>'to_id')::bigint, (a->>'type_id')::int,
           a->>'category', a->>'label'
      FROM hubsync.association_types AS p(f, t), LATERAL hubsync_test.dump_associations(f, t) AS a;
$$;

-- Every way the mirror can differ from a consistent prefix of the
-- snapshot: one row per problem kind found, with a count and an example.
-- With complete, the prefix must be the whole portal.
CREATE OR REPLACE FUNCTION hubsync_test.mirror_problems(complete boolean DEFAULT false)
RETURNS TABLE (problem text, count bigint, example text)
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    v_at timestamptz;
    v_id bigint;
BEGIN
    FOR t IN SELECT entity_type FROM hubsync.object_types ORDER BY sync_order LOOP
        SELECT w.last_modified_at, coalesce(w.last_modified_id, 0) INTO v_at, v_id
          FROM hubsync.sync_watermarks w WHERE w.entity_type = t;

        -- Every record the watermark covers is stored.
        RETURN QUERY
        SELECT t || ': record at or before the watermark is missing', count(*), min(p.id)::text
          FROM hubsync_test.portal_records p
         WHERE p.entity_type = t
           AND (complete OR (v_at IS NOT NULL AND (p.updated_at, p.id) <= (v_at, v_id)))
           AND NOT EXISTS (SELECT 1 FROM hubsync_test.mirror_rows(t) m WHERE m.id = p.id)
        HAVING count(*) > 0;

        -- Nothing past the watermark's time is stored.
        RETURN QUERY
        SELECT t || ': row past the watermark', count(*), min(m.id)::text
          FROM hubsync_test.mirror_rows(t) m
         WHERE NOT m.archived AND (v_at IS NULL OR m.updated_at > v_at)
        HAVING count(*) > 0;

        -- Every stored row is the portal's record, exactly.
        RETURN QUERY
        SELECT t || ': row differs from the portal', count(*), min(m.id)::text
          FROM hubsync_test.mirror_rows(t) m
         WHERE NOT EXISTS (SELECT 1 FROM hubsync_test.portal_records p
                            WHERE p.entity_type = t AND p.id = m.id
                              AND p.updated_at = m.updated_at
                              AND p.properties = jsonb_strip_nulls(m.properties))
        HAVING count(*) > 0;

        -- The associations of every stored parent are the portal's.
        RETURN QUERY
        SELECT t || ': associations differ from the portal', count(*), min(x.from_id)::text
          FROM ((SELECT a.from_type, a.from_id, a.to_type, a.to_id, a.type_id, a.category, a.label
                   FROM hubsync.associations a WHERE a.from_type = t
                 EXCEPT
                 SELECT l.from_type, l.from_id, l.to_type, l.to_id, l.type_id, l.category, l.label
                   FROM hubsync_test.portal_links l WHERE l.from_type = t)
                UNION ALL
                (SELECT l.from_type, l.from_id, l.to_type, l.to_id, l.type_id, l.category, l.label
                   FROM hubsync_test.portal_links l
                  WHERE l.from_type = t
                    AND EXISTS (SELECT 1 FROM hubsync_test.mirror_rows(t) m WHERE m.id = l.from_id)
                 EXCEPT
                 SELECT a.from_type, a.from_id, a.to_type, a.to_id, a.type_id, a.category, a.label
                   FROM hubsync.associations a WHERE a.from_type = t)) AS x
        HAVING count(*) > 0;

        -- A record noted as new more than once was written twice.
        RETURN QUERY
        SELECT t || ': record noted as new more than once', count(*), min(c.hubspot_id)::text
          FROM (SELECT hubspot_id FROM hubsync.change_log
                 WHERE entity_type = t AND change_kind = 'new'
                 GROUP BY hubspot_id HAVING count(*) > 1) AS c
        HAVING count(*) > 0;
    END LOOP;

    IF complete THEN
        RETURN QUERY
        SELECT w.entity_type || ': watermark is not the latest record', 1::bigint,
               w.last_modified_at::text
          FROM hubsync.sync_watermarks w
          LEFT JOIN LATERAL (
                SELECT p.updated_at, p.id FROM hubsync_test.portal_records p
                 WHERE p.entity_type = w.entity_type
                 ORDER BY p.updated_at DESC, p.id DESC LIMIT 1) AS latest ON true
         WHERE (w.last_modified_at, w.last_modified_id) IS DISTINCT FROM (latest.updated_at, latest.id);
    END IF;
END;
$$;

-- With hubsync.first_load = enqueue, every stored company, contact and
-- invoice of a first load has exactly one transfer-queue entry, written in
-- the step that stored the record.  Empty without the queue table.
CREATE OR REPLACE FUNCTION hubsync_test.queue_problems()
RETURNS TABLE (problem text, count bigint, example text)
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    IF to_regclass('hubsync.quickbooks_transfer_queue') IS NULL THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['companies', 'contacts', 'invoices'] LOOP
        RETURN QUERY EXECUTE format($q$
            SELECT %1$L || ': stored record without exactly one queue entry', count(*), min(m.id)::text
              FROM hubsync_test.mirror_rows(%1$L) m
             WHERE (SELECT count(*) FROM hubsync.quickbooks_transfer_queue q
                     WHERE q.entity_type = %1$L AND q.hubspot_id = m.id) <> 1
            HAVING count(*) > 0
            UNION ALL
            SELECT %1$L || ': queue entry without a stored record', count(*), min(q.hubspot_id)::text
              FROM hubsync.quickbooks_transfer_queue q
             WHERE q.entity_type = %1$L
               AND NOT EXISTS (SELECT 1 FROM hubsync_test.mirror_rows(%1$L) m WHERE m.id = q.hubspot_id)
            HAVING count(*) > 0
            $q$, t);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION hubsync_test.mirror_rows(p_type text)
RETURNS TABLE (id bigint, updated_at timestamptz, archived boolean, properties jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE format('SELECT id, updated_at, archived, properties FROM hubsync.%I', p_type);
END;
$$;
"""


def install_checks():
    psql(CHECK_SQL)


def queue_problems():
    """Return the problems of the transfer queue of a first load with first_load = enqueue."""
    rows = psql("SELECT problem || ' (' || count || ', e.g. ' || example || ')' "
                "FROM hubsync_test.queue_problems()")
    return [line for line in rows.splitlines() if line]


def mirror_problems(complete=False):
    """Return the problems of the mirror against the snapshot as 'problem (count, e.g. id)' strings."""
    rows = psql(f"SELECT problem || ' (' || count || ', e.g. ' || example || ')' "
                f"FROM hubsync_test.mirror_problems({'true' if complete else 'false'})")
    return [line for line in rows.splitlines() if line]
