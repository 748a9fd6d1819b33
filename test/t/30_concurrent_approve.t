#!/usr/bin/env python3
"""Two real connections deciding one queue entry at once.

1. Two reviewers approve the same entry: the second waits for the first
   and, once it commits, is refused; many entries approved by both at
   the same time are each approved exactly once.
2. A sync refreshes an entry while a reviewer approves it: if the sync
   holds the entry first, the approval waits and then fails on the
   version; if the approval holds it first, the sync waits and then sends
   the approved entry back to review.  No change is lost either way.

Each connection is a psql process fed through a pipe; a statement's end
is marked by an \\echo of SQLSTATE, and a statement that has not ended
while pg_stat_activity shows its backend waiting for a lock is blocked.
Needs PGHOST, PGPORT and PGUSER (a superuser) from test/env.sh, the
database in HS_DB, and the helpers of test/helpers.sql.
"""
import os
import select
import subprocess
import sys
import time

DATABASE = os.environ.get("HS_DB", "hubsync_test")
MARK = "__hs_done__"

checks = []


def check(ok, name, diagnostic=None):
    checks.append((bool(ok), name, diagnostic))


class Session:
    """One psql connection, driven statement by statement."""

    def __init__(self, user=None):
        command = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=terse",
                   "-d", DATABASE]
        if user:
            command += ["-U", user]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0)
        self.buffer = b""
        self.pending = False
        self.pid = int(self.run("SELECT pg_backend_pid()")[0][0])

    def send(self, sql):
        """Start a statement without waiting for it."""
        assert not self.pending, "previous statement still running"
        self.proc.stdin.write((sql.rstrip().rstrip(";") + ";\n\\echo " + MARK + " :SQLSTATE\n").encode())
        self.proc.stdin.flush()
        self.pending = True

    def finished(self, timeout):
        """Whether the running statement ends within timeout seconds."""
        deadline = time.monotonic() + timeout
        while MARK.encode() not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError("psql exited: " + self.buffer.decode(errors="replace"))
                self.buffer += chunk
        return True

    def result(self, timeout=60):
        """Wait for the running statement: (output lines, SQLSTATE)."""
        if not self.finished(timeout):
            raise RuntimeError("statement did not finish in %ss" % timeout)
        head, _, rest = self.buffer.partition(MARK.encode())
        line, _, self.buffer = rest.partition(b"\n")
        self.pending = False
        lines = [l for l in head.decode().splitlines() if l != ""]
        return lines, line.decode().strip()

    def run(self, sql):
        self.send(sql)
        lines, state = self.result()
        if state != "00000":
            raise RuntimeError("%s failed (%s): %s" % (sql, state, "\n".join(lines)))
        return [l.split("|") for l in lines]

    def value(self, sql):
        return self.run(sql)[0][0]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def waiting_for_lock(monitor, session, timeout=10):
    """Whether session's backend is (or within timeout becomes) blocked on a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if session.finished(0):
            return False
        state = monitor.value("SELECT coalesce(wait_event_type, '-') FROM pg_stat_activity WHERE pid = %d"
                              % session.pid)
        if state == "Lock":
            return True
        time.sleep(0.05)
    return False


admin = Session()
admin.run("SELECT hubsync_test.reset('small')")
admin.run("""DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hs_test_alice') THEN CREATE ROLE hs_test_alice LOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hs_test_bob') THEN CREATE ROLE hs_test_bob LOGIN; END IF;
END $$""")
admin.run("GRANT hubsync_reviewer TO hs_test_alice, hs_test_bob")
admin.run("SELECT count(*) FROM hubsync_full_incremental()")


def edit(session, entity_type, record_id, properties):
    session.run("SELECT hubsync_test.mock('edit', jsonb_build_object('type', '%s', 'id', %d, 'properties', '%s'::jsonb)) IS NOT NULL"
                % (entity_type, record_id, properties.replace("'", "''")))


def entry_of(entity_type, record_id):
    return int(admin.value("SELECT max(id) FROM hubsync.quickbooks_transfer_queue WHERE entity_type = '%s' AND hubspot_id = %d"
                           % (entity_type, record_id)))


alice = Session("hs_test_alice")
bob = Session("hs_test_bob")
monitor = Session()

# --- 1a. Two approvals of one entry, the first in an open transaction.
edit(admin, "companies", 1000001, '{"name": "Summit Capital AG"}')
admin.run("SELECT count(*) FROM hubsync_full_incremental()")
entry = entry_of("companies", 1000001)

alice.run("BEGIN")
first = alice.run("SELECT status FROM hubsync_approve(%d, 1)" % entry)
bob.send("SELECT status FROM hubsync_approve(%d, 1)" % entry)
check(first == [["approved"]] and waiting_for_lock(monitor, bob),
      "a second reviewer approving the same entry waits for the first")
alice.run("COMMIT")
lines, state = bob.result()
check(state == "55000", "once the first commits, the second approval is refused as not pending (55000)",
      "got %s: %s" % (state, lines))
approvals = admin.run("SELECT actor, version FROM hubsync.queue_events WHERE queue_id = %d AND to_status = 'approved'" % entry)
check(approvals == [["hs_test_alice", "1"]], "exactly one approval is recorded, alice's", approvals)

# --- 1b. Two reviewers racing over many entries, in opposite orders.
for contact in range(2000011, 2000021):
    edit(admin, "contacts", contact, '{"phone": "+1 555 000 %04d"}' % (contact % 10000))
admin.run("SELECT count(*) FROM hubsync_full_incremental()")
ids = [int(r[0]) for r in admin.run(
    "SELECT id FROM hubsync.quickbooks_transfer_queue WHERE entity_type = 'contacts' AND status = 'pending_review' ORDER BY id")]
check(len(ids) == 10, "ten entries to race over", ids)


def approve_all(session, order):
    script = ";\n".join("SELECT '%d=' || status FROM hubsync_approve(%d, 1)" % (i, i) for i in order)
    session.send(script)


approve_all(alice, ids)
approve_all(bob, list(reversed(ids)))
alice_lines, _ = alice.result()
bob_lines, _ = bob.result()
won = {}
for who, lines in (("alice", alice_lines), ("bob", bob_lines)):
    for line in lines:
        if "=approved" in line:
            won.setdefault(int(line.split("=")[0]), []).append(who)
check(sorted(won) == ids and all(len(w) == 1 for w in won.values()),
      "each of the ten entries was approved by exactly one of the two", won)
refusals = [l for l in alice_lines + bob_lines if l.startswith("ERROR")]
check(len(refusals) == 10 and all("is not pending review" in l for l in refusals),
      "the other ten approvals were refused as not pending", refusals)
counted = admin.value("SELECT count(*) FROM hubsync.queue_events WHERE to_status = 'approved' AND queue_id IN (%s)"
                      % ",".join(map(str, ids)))
check(counted == "10", "the audit holds one approval per entry", counted)

# --- 2a. The sync holds the entry: the approval waits, then fails on the version.
edit(admin, "companies", 1000002, '{"name": "Big Co Ltd"}')
admin.run("SELECT count(*) FROM hubsync_full_incremental()")
entry = entry_of("companies", 1000002)
sync = Session()
sync.run("BEGIN")
edit(sync, "companies", 1000002, '{"name": "Big Co Limited"}')
sync.run("SELECT count(*) FROM hubsync_full_incremental()")
alice.send("SELECT status FROM hubsync_approve(%d, 1)" % entry)
check(waiting_for_lock(monitor, alice), "an approval waits while a sync holds the refreshed entry")
sync.run("COMMIT")
lines, state = alice.result()
check(state == "40001" and any("is at version 2, not version 1" in l for l in lines),
      "then approving the version the sync replaced fails (40001)", "%s %s" % (state, lines))
row = admin.run("SELECT status, version, approved_by IS NULL FROM hubsync.quickbooks_transfer_queue WHERE id = %d" % entry)
check(row == [["pending_review", "2", "t"]], "the entry stays pending at version 2", row)

# --- 2b. The same without a version: it refuses what the caller never saw.
sync.run("BEGIN")
edit(sync, "companies", 1000002, '{"name": "Big Co Unlimited"}')
sync.run("SELECT count(*) FROM hubsync_full_incremental()")
alice.send("SELECT status FROM hubsync_approve(%d)" % entry)
blocked = waiting_for_lock(monitor, alice)
sync.run("COMMIT")
lines, state = alice.result()
check(blocked and state == "40001" and any("changed while it was being approved" in l for l in lines),
      "an approval without a version also refuses a version that appeared while it waited",
      "%s %s" % (state, lines))

# --- 2c. The approval holds the entry: the sync waits, then sends it back to review.
bob.run("BEGIN")
approved = bob.run("SELECT status, version FROM hubsync_approve(%d, 3)" % entry)
edit(sync, "companies", 1000002, '{"name": "Big Company"}')
sync.send("SELECT count(*) FROM hubsync_full_incremental()")
check(approved == [["approved", "3"]] and waiting_for_lock(monitor, sync),
      "a sync waits for an approval in progress", approved)
bob.run("COMMIT")
lines, state = sync.result()
check(state == "00000", "then the sync completes", lines)
row = admin.run("SELECT status, version, approved_by IS NULL, entity_data->'properties'->>'name' "
                "FROM hubsync.quickbooks_transfer_queue WHERE id = %d" % entry)
check(row == [["pending_review", "4", "t", "Big Company"]],
      "and the approved entry is back in review at version 4 with the newest name", row)
history = admin.run("SELECT coalesce(from_status, '-'), to_status, version, actor FROM hubsync.queue_events "
                    "WHERE queue_id = %d ORDER BY id" % entry)
check([h[:3] for h in history] == [["-", "pending_review", "1"], ["pending_review", "pending_review", "2"],
                                   ["pending_review", "pending_review", "3"], ["pending_review", "approved", "3"],
                                   ["approved", "pending_review", "4"]]
      and history[3][3] == "hs_test_bob",
      "the audit keeps bob's approval of version 3 before the return to review", history)
open_entries = admin.value("SELECT count(*) FROM hubsync.quickbooks_transfer_queue "
                           "WHERE entity_type = 'companies' AND hubspot_id = 1000002 AND status IN ('pending_review', 'approved')")
check(open_entries == "1", "and the company still has exactly one open entry", open_entries)

for session in (alice, bob, sync, monitor, admin):
    session.close()

print("1..%d" % len(checks))
for number, (ok, name, diagnostic) in enumerate(checks, 1):
    print("%s %d - %s" % ("ok" if ok else "not ok", number, name))
    if not ok and diagnostic is not None:
        print("# %s" % (diagnostic,))
sys.exit(0 if all(ok for ok, _, _ in checks) else 1)
