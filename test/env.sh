# Shared by test/run-tests.sh and test/demo.sh: a throwaway PostgreSQL 15
# cluster with pg_cron and hubsync preloaded, and the local
# HubSpot-compatible server, both on this machine only.
#
# Source this file, then call hs_start_cluster and hs_start_server.  The
# cluster listens on 127.0.0.1 and a Unix socket in $HS_RUN_DIR; the
# server binds 127.0.0.1 on a free port.  hs_stop_all ends both.

HS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HS_RUN_DIR=${HS_RUN_DIR:-/tmp/hubsync-run}
HS_PG_PORT=${HS_PG_PORT:-55432}
HS_DB=${HS_DB:-hubsync_test}
HS_TOKEN=${HS_TOKEN:-pat-na1-hubsync-test}
HS_PG_BIN=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
HS_PACKAGES="postgresql-15 postgresql-server-dev-15 libpq-dev libcurl4-openssl-dev postgresql-15-cron postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl python3 make gcc"

export PGHOST=$HS_RUN_DIR PGPORT=$HS_PG_PORT PGUSER=postgres
export HS_REPO HS_RUN_DIR HS_PG_PORT HS_DB HS_TOKEN

hs_log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

# Install the Debian packages hubsync needs, unless all are present.
hs_install_packages() {
    local missing=""
    for p in $HS_PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    hs_log "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $HS_PACKAGES >/dev/null
}

hs_build() {
    hs_log "building and installing hubsync"
    make -C "$HS_REPO" -s >/dev/null
    make -C "$HS_REPO" -s install >/dev/null
}

# Run a command as the cluster's operating-system user.  initdb refuses
# to run as root, so as root the cluster belongs to "postgres".
hs_as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

hs_start_cluster() {
    hs_stop_cluster
    rm -rf "$HS_RUN_DIR"
    mkdir -p "$HS_RUN_DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$HS_RUN_DIR"
    hs_log "initdb in $HS_RUN_DIR/data"
    hs_as_owner "$HS_PG_BIN/initdb" -D "$HS_RUN_DIR/data" -U postgres -A trust \
        --encoding UTF8 --locale C.UTF-8 >"$HS_RUN_DIR/initdb.log"
    cat >>"$HS_RUN_DIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $HS_PG_PORT
unix_socket_directories = '$HS_RUN_DIR'
shared_preload_libraries = 'pg_cron,hubsync'
cron.database_name = '$HS_DB'
cron.use_background_workers = on
max_worker_processes = 16
log_line_prefix = '%m [%p] %d '
fsync = off
EOF
    hs_as_owner "$HS_PG_BIN/pg_ctl" -D "$HS_RUN_DIR/data" -l "$HS_RUN_DIR/postgres.log" -w start >/dev/null
    psql -q -d postgres -c "CREATE DATABASE $HS_DB"
}

hs_stop_cluster() {
    if [ -f "$HS_RUN_DIR/data/postmaster.pid" ]; then
        hs_as_owner "$HS_PG_BIN/pg_ctl" -D "$HS_RUN_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}

# Start the local HubSpot-compatible server; sets HS_MOCK_URL.
hs_start_server() {
    local portal=${1:-small}
    shift || true
    hs_stop_server
    rm -f "$HS_RUN_DIR/mock.port"
    python3 "$HS_REPO/test/hubspot_server.py" --port 0 --port-file "$HS_RUN_DIR/mock.port" \
        --portal "$portal" --token "$HS_TOKEN" --log "$HS_RUN_DIR/mock.log" "$@" \
        >"$HS_RUN_DIR/mock.out" 2>&1 &
    echo $! >"$HS_RUN_DIR/mock.pid"
    for _ in $(seq 1 100); do
        [ -s "$HS_RUN_DIR/mock.port" ] && break
        sleep 0.1
    done
    if [ ! -s "$HS_RUN_DIR/mock.port" ]; then
        cat "$HS_RUN_DIR/mock.out" >&2
        echo "the local HubSpot-compatible server did not start" >&2
        return 1
    fi
    HS_MOCK_URL="http://127.0.0.1:$(cat "$HS_RUN_DIR/mock.port")"
    export HS_MOCK_URL HUBSPOT_MOCK_URL=$HS_MOCK_URL
    hs_log "HubSpot-compatible server at $HS_MOCK_URL (portal $portal)"
}

hs_stop_server() {
    if [ -f "$HS_RUN_DIR/mock.pid" ]; then
        kill "$(cat "$HS_RUN_DIR/mock.pid")" 2>/dev/null || true
        rm -f "$HS_RUN_DIR/mock.pid"
    fi
}

# Point hubsync at the local server.  ALTER SYSTEM keeps the token out of
# any database-level setting that non-superusers could list.
hs_configure_hubsync() {
    psql -q -o /dev/null -d postgres <<EOF
ALTER SYSTEM SET hubsync.hubspot_url = '$HS_MOCK_URL';
ALTER SYSTEM SET hubsync.hubspot_token = '$HS_TOKEN';
SELECT pg_reload_conf();
EOF
}

hs_stop_all() {
    hs_stop_server
    hs_stop_cluster
}
