#!/usr/bin/env bash
# Benchmark: a full load and an incremental run of a large contact list
# against the local HubSpot-compatible server, with its rate limits off
# and search pacing raised, so the figures measure hubsync itself.
# Prints wall time, records per second, HTTP requests, the time the
# local server spent responding, and the sync backend's memory: VmHWM
# (peak resident, shared buffers included) and RssAnon (private).
#
# Usage: test/bench.sh [contacts]     (default 50000)
set -euo pipefail

count=${1:-50000}
export HS_RUN_DIR=${HS_RUN_DIR:-/tmp/hubsync-bench}
export HS_PG_PORT=${HS_PG_PORT:-55434}
export HS_DB=${HS_DB:-hubsync_bench}
source "$(dirname "$0")/env.sh"
cd "$HS_REPO"

hs_install_packages
hs_build
hs_start_cluster
trap hs_stop_all EXIT
hs_start_server empty
hs_configure_hubsync

psql -X -q -d "$HS_DB" -c "CREATE EXTENSION hubsync" >/dev/null
hs_log "creating $count contacts in the portal"
python3 test/hubspot_ctl.py --url "$HS_MOCK_URL" --timeout 600 bulk_stamp \
    "{\"type\":\"contacts\",\"count\":$count,\"modified_at\":1735689600000,\"spread_ms\":997}" >/dev/null

# Milliseconds the server spent responding, summed from its request log
# after line $1, to tell hubsync's own time from the server's.
server_ms() {
    tail -n +"$(($1 + 1))" "$HS_RUN_DIR/mock.log" |
        awk '{ sub("ms$", "", $NF); total += $NF } END { printf "%d", total }'
}

# One psql session per measurement, so VmHWM is that backend's peak.
measure() {
    local label=$1 statement=$2
    local log_lines
    log_lines=$(wc -l <"$HS_RUN_DIR/mock.log")
    psql -X -q -d "$HS_DB" -v ON_ERROR_STOP=1 <<SQL
SET hubsync.progress_notices = off;
SET hubsync.search_requests_per_second = 1000;
SET hubsync.reconcile_interval = 0;
SET hubsync.search_overlap = 0;
SELECT pg_backend_pid() AS pid, clock_timestamp() AS started \gset
$statement
SELECT format('%-24s %8s records  %8s s  %8s records/s  %5s requests',
              '$label', sum(fetched), round(seconds, 2),
              round(sum(fetched) / greatest(seconds, 0.001)), sum(http_requests)) AS result
FROM (SELECT extract(epoch FROM clock_timestamp() - :'started'::timestamptz) AS seconds) AS elapsed,
     hubsync.sync_runs WHERE started_at >= :'started'::timestamptz
GROUP BY seconds \gset
\echo :result
\setenv BENCH_PID :pid
\! grep -E 'VmHWM|RssAnon' /proc/\$BENCH_PID/status | tr -s ' \\t' ' ' | sed 's/^/    backend memory (peak including shared buffers, private now): /'
SQL
    echo "    of which the local server spent $(server_ms "$log_lines") ms responding"
}

hs_log "hardware: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; PostgreSQL $(pg_config --version | awk '{print $2}')"
measure "full load (CALL)" "CALL hubsync_run('contacts');"
python3 test/hubspot_ctl.py --url "$HS_MOCK_URL" bulk_stamp \
    "{\"type\":\"contacts\",\"count\":1000,\"modified_at\":$(( $(date +%s%3N) - 10000 )),\"spread_ms\":3}" >/dev/null
measure "1,000 changes (SELECT)" "SELECT * FROM hubsync_incremental('contacts') \\g /dev/null"
measure "no changes (SELECT)" "SELECT * FROM hubsync_incremental('contacts') \\g /dev/null"
