# hubsync: PGXS build.
#
# The install script hubsync--1.0.sql is assembled from the parts in
# src/sql/, in name order, so that each concern (mirror schema, sync writes,
# queue, scheduling) can be read on its own.

EXTENSION = hubsync
MODULE_big = hubsync
OBJS = \
	src/cron_remote.o \
	src/hubsync.o \
	src/http.o \
	src/hubspot.o \
	src/json_util.o \
	src/sync.o \
	src/sync_records.o \
	src/sync_search.o \
	src/progress.o
PGFILEDESC = "hubsync - HubSpot CRM mirror and QuickBooks review queue"

SQL_PARTS = $(sort $(wildcard src/sql/*.sql))
DATA_built = hubsync--1.0.sql

PG_CPPFLAGS = -I$(srcdir)/src -I$(libpq_srcdir) $(shell curl-config --cflags)
SHLIB_LINK = $(libpq) $(shell curl-config --libs)

# pg_regress (make installcheck): SQL-level behaviour, run against the
# cluster that test/run-tests.sh starts with hubsync preloaded.
REGRESS = schema conversions settings errors

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Every object depends on the shared headers.
$(OBJS): $(wildcard src/*.h)

hubsync--1.0.sql: $(SQL_PARTS)
	cat $(SQL_PARTS) > $@
