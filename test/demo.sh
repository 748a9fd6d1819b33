#!/usr/bin/env bash
# Demo on a fresh machine: installs the Debian packages (as root), builds
# and installs hubsync, starts a throwaway PostgreSQL 15 cluster with
# pg_cron and the local HubSpot-compatible server serving the demo portal
# (1,124 invoices, about 2,000 contacts, 600 companies, with HubSpot's
# real rate limits), runs the full sync, edits records in the portal, runs
# the incremental sync and prints what changed and what awaits review.
#
# Usage: test/demo.sh         run the demo and leave cluster and server up
#        test/demo.sh stop    stop them
set -euo pipefail

export HS_RUN_DIR=${HS_RUN_DIR:-/tmp/hubsync-demo}
export HS_PG_PORT=${HS_PG_PORT:-55433}
export HS_DB=${HS_DB:-hubsync_demo}
source "$(dirname "$0")/env.sh"
cd "$HS_REPO"

if [ "${1:-}" = stop ]; then
    hs_stop_all
    exit 0
fi

hs_install_packages
hs_build
hs_start_cluster
hs_start_server demo --realistic
hs_configure_hubsync

ctl() { python3 test/hubspot_ctl.py --url "$HS_MOCK_URL" "$@" >/dev/null; }
sql() { psql -X -q -d "$HS_DB" -v ON_ERROR_STOP=1 "$@"; }

sql -c "CREATE EXTENSION hubsync CASCADE"

hs_log "full sync of the demo portal"
sql -c "SET hubsync.progress_notices = off" \
    -c "SELECT entity_type, status, fetched, inserted, duration, watermark FROM hubsync_full_incremental()"

hs_log "editing records in the portal"
first_contact=$(sql -At -c "SELECT min(id) FROM hubsync.contacts")
open_invoice=$(sql -At -c "SELECT min(id) FROM hubsync.invoices WHERE status = 'open'")
line_item=$(sql -At -c "SELECT min(to_id) FROM hubsync.associations WHERE from_type = 'invoices' AND from_id = $open_invoice AND to_type = 'line_items'")
company=$(sql -At -c "SELECT max(id) FROM hubsync.companies")
ctl edit "{\"type\":\"contacts\",\"id\":$first_contact,\"properties\":{\"firstname\":\"Zoë\",\"lastname\":\"O'Brien\"}}"
ctl edit "{\"type\":\"invoices\",\"id\":$open_invoice,\"properties\":{\"hs_invoice_status\":\"paid\",\"hs_balance_due\":\"0.00\"}}"
ctl edit "{\"type\":\"line_items\",\"id\":$line_item,\"properties\":{\"quantity\":\"3\"}}"
ctl archive "{\"type\":\"companies\",\"id\":$company}"
echo "  contact $first_contact renamed, invoice $open_invoice paid, line item $line_item quantity 3, company $company archived"

hs_log "incremental sync"
sql -c "SET hubsync.progress_notices = off" \
    -c "SELECT entity_type, status, fetched, inserted, updated, archived, duration FROM hubsync_full_incremental()"

hs_log "what changed"
sql <<SQL
SELECT 'contact' AS record, id, concat_ws(' ', first_name, last_name) AS now FROM hubsync.contacts WHERE id = $first_contact
UNION ALL
SELECT 'invoice', id, concat(number, ' ', status, ', balance ', balance_due, ' ', currency) FROM hubsync.invoices WHERE id = $open_invoice
UNION ALL
SELECT 'line item', id, concat(name, ': ', quantity, ' x ', price) FROM hubsync.line_items WHERE id = $line_item
UNION ALL
SELECT 'company', id, concat(name, CASE WHEN archived THEN ' (archived)' END) FROM hubsync.companies WHERE id = $company;
SQL

hs_log "transfer queue awaiting review (the first load was the baseline, so only the edits are queued)"
sql -c "SELECT queue_id, quickbooks_action, trigger_reason, customer_name, invoice_number,
               amount, currency, what_changed, approve_with
          FROM hubsync.review_queue ORDER BY queue_id"

cat <<EOF

The cluster and the server are still running:
  psql -h $HS_RUN_DIR -p $HS_PG_PORT -U postgres $HS_DB
  test/demo.sh stop
EOF
