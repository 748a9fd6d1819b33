#!/usr/bin/env bash
# Run every hubsync test on this machine: installs the Debian packages it
# needs (as root), builds and installs the extension, starts a throwaway
# PostgreSQL 15 cluster with pg_cron and the local HubSpot-compatible
# server, then runs
#   0. the self-check of the local server (test/test_hubspot_server.py);
#   1. pg_regress (sql/, expected/): SQL-level behaviour;
#   2. pg_prove (test/pgtap/*.sql): sync behaviour against the server;
#   3. prove (test/t/*.t): scenarios with several connections, pg_cron
#      jobs and killed backends.
# Usage: test/run-tests.sh [pgTAP or prove test files...]
set -euo pipefail

source "$(dirname "$0")/env.sh"
cd "$HS_REPO"

hs_install_packages
hs_build
hs_start_cluster
trap hs_stop_all EXIT
hs_start_server small
hs_configure_hubsync

status=0
pgtap_files=()
prove_files=()
for f in "$@"; do
    case "$f" in
        *.sql) pgtap_files+=("$f") ;;
        *.t) prove_files+=("$f") ;;
    esac
done
if [ $# -eq 0 ]; then
    hs_log "self-check of the local HubSpot-compatible server"
    python3 test/test_hubspot_server.py >"$HS_RUN_DIR/server-selfcheck.log" 2>&1 ||
        { tail -30 "$HS_RUN_DIR/server-selfcheck.log"; status=1; }
    hs_log "pg_regress"
    if ! make -s installcheck; then
        [ -f regression.diffs ] && head -100 regression.diffs
        status=1
    fi
    pgtap_files=(test/pgtap/*.sql)
    prove_files=(test/t/*.t)
fi

# The test helpers run hubspot_ctl.py as the cluster's operating-system
# user, who may not be able to read this checkout; give it its own copy.
install -m 755 test/hubspot_ctl.py "$HS_RUN_DIR/hubspot_ctl.py"
python_for_server=$(command -v /usr/bin/python3 || command -v python3)
psql -q -d "$HS_DB" -v ON_ERROR_STOP=1 -f test/helpers.sql >/dev/null
psql -q -d "$HS_DB" -v ON_ERROR_STOP=1 <<SQL
ALTER DATABASE $HS_DB SET hubsync_test.ctl = '$HS_RUN_DIR/hubspot_ctl.py';
ALTER DATABASE $HS_DB SET hubsync_test.python = '$python_for_server';
ALTER DATABASE $HS_DB SET hubsync_test.mock_url = '$HS_MOCK_URL';
ALTER DATABASE $HS_DB SET client_min_messages = warning;
ALTER DATABASE $HS_DB SET hubsync.search_requests_per_second = 50;
SQL

if [ ${#pgtap_files[@]} -gt 0 ]; then
    hs_log "pg_prove: ${#pgtap_files[@]} files"
    pg_prove --failures -d "$HS_DB" "${pgtap_files[@]}" || status=1
fi
if [ ${#prove_files[@]} -gt 0 ]; then
    hs_log "prove: ${#prove_files[@]} files"
    # --failures and --comments put the failed checks and their
    # diagnostics into the output, so a CI log says what failed.
    prove --failures --comments "${prove_files[@]}" || status=1
fi

if [ "$status" -ne 0 ]; then
    hs_log "FAILED (server log: $HS_RUN_DIR/postgres.log)"
    cp "$HS_RUN_DIR/postgres.log" /tmp/hubsync-last-postgres.log 2>/dev/null || true
fi
exit "$status"
