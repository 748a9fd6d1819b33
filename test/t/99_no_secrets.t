#!/usr/bin/env python3
"""After every other test: the access token appears in no log and no table.

Runs last (prove takes files in name order). It reads the server log of
the test cluster, the local HubSpot-compatible server's request log, and
every text column of schema hubsync, looking for the token that
test/env.sh configured and for the wrong token a pgTAP test sets.
"""
import os
import subprocess
import sys

TOKENS = [os.environ.get("HS_TOKEN", "pat-na1-hubsync-test"), "pat-na1-wrong-secret-0000"]
RUN_DIR = os.environ.get("HS_RUN_DIR", "/tmp/hubsync-run")
DATABASE = os.environ.get("HS_DB", "hubsync_test")

checks = []


def check(ok, name):
    checks.append((ok, name))


for path in (os.path.join(RUN_DIR, "postgres.log"), os.path.join(RUN_DIR, "mock.log")):
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    check(len(text) > 0, f"{os.path.basename(path)} is not empty")
    for token in TOKENS:
        check(token not in text, f"{os.path.basename(path)} has no token {token[:12]}...")

# Every text and jsonb column of every table in schema hubsync, as text.
query = """
SELECT string_agg(format('SELECT %L AS col, count(*) FROM hubsync.%I WHERE %I::text LIKE ''%%'' || $1 || ''%%''',
                         c.relname || '.' || a.attname, c.relname, a.attname), ' UNION ALL ')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'hubsync' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
  AND a.atttypid IN ('text'::regtype, 'jsonb'::regtype)
"""
union = subprocess.run(["psql", "-X", "-At", "-d", DATABASE, "-c", query],
                       capture_output=True, text=True, check=True).stdout.strip()
check(bool(union), "schema hubsync has text columns to search")
for token in TOKENS:
    prepared = f"PREPARE scan(text) AS SELECT coalesce(sum(count), 0) FROM ({union}) AS s;"
    result = subprocess.run(["psql", "-X", "-At", "-d", DATABASE, "-c", prepared,
                             "-c", f"EXECUTE scan('{token}')"],
                            capture_output=True, text=True)
    found = result.stdout.strip().splitlines()[-1] if result.returncode == 0 else "error"
    check(found == "0", f"no table row contains token {token[:12]}... (found: {found})")

print(f"1..{len(checks)}")
for number, (ok, name) in enumerate(checks, 1):
    print(f"{'ok' if ok else 'not ok'} {number} - {name}")
sys.exit(0 if all(ok for ok, _ in checks) else 1)
