/*-------------------------------------------------------------------------
 *
 * hubsync.c
 *	  Settings, module initialization and the SQL-callable sync functions.
 *
 * Settings that decide where the token is sent or which certificates are
 * trusted (hubsync.hubspot_url, hubsync.hubspot_token, hubsync.ca_file)
 * can be set only by superusers, and the token cannot be read by anyone
 * else: a role that could point the URL at its own server could collect
 * the token.  The remaining settings tune timeouts, retries and pacing;
 * they only change how the caller's own session behaves, so any role may
 * set them.
 *
 * src/hubsync.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/tcopprot.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "http.h"
#include "hubsync.h"
#include "sync.h"

PG_MODULE_MAGIC;

char	   *hs_hubspot_url = NULL;
char	   *hs_hubspot_token = NULL;
char	   *hs_ca_file = NULL;
int			hs_connect_timeout_ms = 10000;
int			hs_request_timeout_ms = 30000;
int			hs_max_retries = 5;
int			hs_retry_base_delay_ms = 500;
int			hs_retry_max_delay_ms = 30000;
int			hs_max_rate_limit_waits = 20;
int			hs_search_requests_per_second = 4;
int			hs_search_overlap_ms = 60000;
int			hs_reconcile_interval_s = 86400;
int			hs_run_history_retention_s = 30 * 86400;
bool		hs_progress_notices = true;
char	   *hs_first_load = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;

void		_PG_init(void);

static void
hubsync_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	hs_progress_shmem_request();
}

/*
 * Check the bracketed IPv6 host and the port of a URL whose host part
 * starts at host.
 */
static bool
check_url_port(const char *url, const char *host)
{
	const char *end = host + strcspn(host, "/");
	const char *colon;

	if (host[0] == '[')
	{
		const char *bracket = memchr(host, ']', end - host);

		if (bracket == NULL)
		{
			GUC_check_errdetail("The URL \"%s\" has an IPv6 address without its closing bracket.", url);
			return false;
		}
		colon = (bracket + 1 < end && bracket[1] == ':') ? bracket + 1 : NULL;
	}
	else
		colon = memchr(host, ':', end - host);

	if (colon != NULL)
	{
		long		port = 0;
		const char *p;

		for (p = colon + 1; p < end && *p >= '0' && *p <= '9' && port <= 65535; p++)
			port = port * 10 + (*p - '0');
		if (p == colon + 1 || p != end || port < 1 || port > 65535)
		{
			GUC_check_errdetail("The URL \"%s\" has an invalid port; use a number from 1 to 65535.", url);
			return false;
		}
	}
	return true;
}

/* Accept only http:// and https:// base URLs without credentials. */
static bool
check_hubspot_url(char **newval, void **extra, GucSource source)
{
	const char *url = *newval;
	const char *host;

	if (url == NULL)
		return true;
	if (pg_strncasecmp(url, "https://", 8) == 0)
		host = url + 8;
	else if (pg_strncasecmp(url, "http://", 7) == 0)
		host = url + 7;
	else
	{
		GUC_check_errdetail("The URL \"%s\" does not start with https:// or http://.", url);
		return false;
	}
	if (host[0] == '\0' || host[0] == '/')
	{
		GUC_check_errdetail("The URL \"%s\" has no host name.", url);
		return false;
	}
	if (strchr(url, '?') != NULL || strchr(url, '#') != NULL)
	{
		GUC_check_errdetail("The URL \"%s\" must not contain a query string or fragment.", url);
		return false;
	}
	for (const char *p = url; *p; p++)
	{
		if ((unsigned char) *p <= ' ' || *p == 0x7f)
		{
			GUC_check_errdetail("The URL \"%s\" contains a space or a control character.", url);
			return false;
		}
	}
	for (const char *p = host; *p && *p != '/'; p++)
	{
		if (*p == '@')
		{
			GUC_check_errdetail("The URL must not contain credentials; set hubsync.hubspot_token instead.");
			return false;
		}
	}
	if (!check_url_port(url, host))
		return false;
	return true;
}

/*
 * A token is sent in an HTTP header, so a space or a control character in
 * it could end the header and inject another one.
 */
static bool
check_hubspot_token(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL)
		return true;
	for (const char *p = *newval; *p; p++)
	{
		if ((unsigned char) *p <= ' ' || *p == 0x7f)
		{
			GUC_check_errdetail("The token contains a space or a control character.");
			return false;
		}
	}
	return true;
}

/*
 * SHOW and current_setting() display a mask instead of the token, for
 * every role: GUC_SUPERUSER_ONLY alone would still show it to members of
 * pg_read_all_settings (and so of pg_monitor).  Superusers can find the
 * value in pg_file_settings.
 */
static const char *
show_hubspot_token(void)
{
	return (hs_hubspot_token != NULL && hs_hubspot_token[0] != '\0') ? "********" : "";
}

static bool
check_first_load(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || strcmp(*newval, "baseline") == 0 ||
		strcmp(*newval, "enqueue") == 0)
		return true;
	GUC_check_errdetail("Valid values are \"baseline\" and \"enqueue\".");
	return false;
}

/* Copy of text with every occurrence of secret replaced, or NULL. */
static char *
replace_secret(const char *text, const char *secret)
{
	StringInfoData buf;
	const char *p = text;
	const char *hit;
	size_t		secret_len = strlen(secret);

	if (text == NULL || strstr(text, secret) == NULL)
		return NULL;
	initStringInfo(&buf);
	while ((hit = strstr(p, secret)) != NULL)
	{
		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, "[redacted]");
		p = hit + secret_len;
	}
	appendStringInfoString(&buf, p);
	return buf.data;
}

/* First occurrence of needle in haystack, ignoring ASCII case. */
static char *
strcasestr_ascii(const char *haystack, const char *needle)
{
	size_t		length = strlen(needle);

	for (const char *p = haystack; *p; p++)
		if (pg_strncasecmp(p, needle, length) == 0)
			return (char *) p;
	return NULL;
}

/*
 * Keep the token out of the server log.  PostgreSQL itself logs
 * 'parameter "hubsync.hubspot_token" changed to "<value>"' when a reload
 * picks up a new value from postgresql.auto.conf, and statement logging
 * would show the value of an ALTER SYSTEM or SET.  This hook runs before
 * any message is written: it cuts the value off such messages, hides the
 * statement text that names the setting (in any letter case, as setting
 * names are), and masks the current token wherever else it appears.  It is installed in every process that loads
 * hubsync, so with hubsync in shared_preload_libraries it covers the
 * postmaster, which writes the reload message.
 */
static void
redact_token_in_log(ErrorData *edata)
{
	const char *name = "hubsync.hubspot_token";
	char	   *found;

	/*
	 * A value follows the name when the rest of the message has a quote or
	 * an equals sign after the name's own closing quote: the reload message
	 * ("changed to \"...\""), SET ... = '...' and set_config(..., '...').
	 * Messages that only name the setting are left as they are.
	 */
	if (edata->message != NULL && (found = strcasestr_ascii(edata->message, name)) != NULL)
	{
		size_t		keep = (found - edata->message) + strlen(name);
		const char *rest;

		if (edata->message[keep] == '"' || edata->message[keep] == '\'')
			keep++;
		rest = edata->message + keep;
		if (strpbrk(rest, "'\"=") != NULL)
			edata->message = psprintf("%.*s ... [value redacted]", (int) keep, edata->message);
	}
	if (debug_query_string != NULL && strcasestr_ascii(debug_query_string, name) != NULL)
		edata->hide_stmt = true;

	if (hs_hubspot_token != NULL && strlen(hs_hubspot_token) >= 4)
	{
		char	   *clean;

		if ((clean = replace_secret(edata->message, hs_hubspot_token)) != NULL)
			edata->message = clean;
		if ((clean = replace_secret(edata->detail, hs_hubspot_token)) != NULL)
			edata->detail = clean;
		if ((clean = replace_secret(edata->hint, hs_hubspot_token)) != NULL)
			edata->hint = clean;
		if ((clean = replace_secret(edata->context, hs_hubspot_token)) != NULL)
			edata->context = clean;
		if (debug_query_string != NULL && strstr(debug_query_string, hs_hubspot_token) != NULL)
			edata->hide_stmt = true;
	}

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
_PG_init(void)
{
	DefineCustomStringVariable("hubsync.hubspot_url",
							   "Base URL of the HubSpot API.",
							   NULL,
							   &hs_hubspot_url,
							   "https://api.hubapi.com",
							   PGC_SUSET,
							   0,
							   check_hubspot_url, NULL, NULL);

	DefineCustomStringVariable("hubsync.hubspot_token",
							   "HubSpot private app access token (superuser only).",
							   "Sent as a bearer token to hubsync.hubspot_url; never logged.",
							   &hs_hubspot_token,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_hubspot_token, NULL, show_hubspot_token);

	DefineCustomStringVariable("hubsync.ca_file",
							   "File of CA certificates to verify HubSpot's TLS certificate with; empty uses the system store.",
							   NULL,
							   &hs_ca_file,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.connect_timeout",
							"Time allowed to connect to HubSpot, per attempt.",
							NULL,
							&hs_connect_timeout_ms,
							10000, 100, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.request_timeout",
							"Time allowed for one HubSpot request, connecting included, per attempt.",
							NULL,
							&hs_request_timeout_ms,
							30000, 100, 3600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.max_retries",
							"Retries of a HubSpot request after a transport failure, HTTP 5xx, 423 or 477.",
							NULL,
							&hs_max_retries,
							5, 0, 100,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.retry_base_delay",
							"Delay before the first retry; it doubles for each further retry, with jitter.",
							NULL,
							&hs_retry_base_delay_ms,
							500, 1, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.retry_max_delay",
							"Longest wait before one retry or after one rate-limit response.",
							NULL,
							&hs_retry_max_delay_ms,
							30000, 1, 3600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.max_rate_limit_waits",
							"Rate-limit (HTTP 429) responses one request may wait out before the run fails.",
							NULL,
							&hs_max_rate_limit_waits,
							20, 0, 1000,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.search_requests_per_second",
							"Most CRM search requests per second; HubSpot allows 5 per account, shared by all integrations.",
							NULL,
							&hs_search_requests_per_second,
							4, 1, 1000,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.search_overlap",
							"How far back each run re-reads, to pick up writes that HubSpot's search index showed late.",
							NULL,
							&hs_search_overlap_ms,
							60000, 0, 86400000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.reconcile_interval",
							"How often a run also compares all record ids with HubSpot to find permanent deletions; 0 turns it off.",
							NULL,
							&hs_reconcile_interval_s,
							86400, 0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("hubsync.run_history_retention",
							"Age after which rows of hubsync.sync_runs are deleted; 0 keeps them.",
							NULL,
							&hs_run_history_retention_s,
							30 * 86400, 0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("hubsync.progress_notices",
							 "Report the progress of each sync page as a NOTICE.",
							 NULL,
							 &hs_progress_notices,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("hubsync.first_load",
							   "What the first load of an object type puts in the transfer queue: baseline (nothing) or enqueue (every record as new).",
							   NULL,
							   &hs_first_load,
							   "baseline",
							   PGC_SUSET,
							   0,
							   check_first_load, NULL, NULL);

	MarkGUCPrefixReserved("hubsync");

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = redact_token_in_log;

	hs_http_init();

	if (process_shared_preload_libraries_in_progress)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = hubsync_shmem_request;
		hs_progress_shmem_startup();
	}
}

/*
 * Sleep for delay_ms, waking at least once a second to honour a cancel,
 * statement_timeout or termination request.
 */
void
hs_wait_interruptibly(long delay_ms)
{
	TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms);

	for (;;)
	{
		long		remaining;

		CHECK_FOR_INTERRUPTS();
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), end);
		if (remaining <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(remaining, 1000), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Append the row of one run to a materialized result set. */
static void
put_result_row(ReturnSetInfo *rsinfo, HsSyncResult *result)
{
	Datum		values[11];
	bool		nulls[11] = {0};
	Interval   *duration;

	duration = DatumGetIntervalP(DirectFunctionCall2(timestamp_mi,
													 TimestampTzGetDatum(result->finished_at),
													 TimestampTzGetDatum(result->started_at)));
	values[0] = CStringGetTextDatum(result->entity_type);
	values[1] = CStringGetTextDatum(result->status);
	values[2] = Int64GetDatum(result->stats.fetched);
	values[3] = Int64GetDatum(result->stats.inserted);
	values[4] = Int64GetDatum(result->stats.updated);
	values[5] = Int64GetDatum(result->stats.unchanged);
	values[6] = Int64GetDatum(result->stats.archived);
	values[7] = Int64GetDatum(result->stats.deleted);
	values[8] = Int64GetDatum(result->stats.queue_entries);
	values[9] = IntervalPGetDatum(duration);
	values[10] = TimestampTzGetDatum(result->watermark);
	nulls[10] = !result->have_watermark;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

static void
sync_into_result_set(FunctionCallInfo fcinfo, List *entity_types, HsSyncMode mode)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ListCell   *cell;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	if (entity_types == NIL)
		entity_types = hs_entity_types();
	foreach(cell, entity_types)
	{
		HsSyncResult result;

		hs_sync_entity((char *) lfirst(cell), false, mode, &result);
		put_result_row(rsinfo, &result);
	}
	SPI_finish();
}

PG_FUNCTION_INFO_V1(hubsync_incremental);

/* hubsync_incremental(entity_type): sync one object type. */
Datum
hubsync_incremental(PG_FUNCTION_ARGS)
{
	char	   *entity_type;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("entity_type must not be NULL"),
				 errhint("Use one of: companies, contacts, line_items, invoices; or call hubsync_full_incremental() for all of them.")));
	entity_type = text_to_cstring(PG_GETARG_TEXT_PP(0));
	sync_into_result_set(fcinfo, list_make1(entity_type), HS_SYNC_INCREMENTAL);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(hubsync_full_incremental);

/* hubsync_full_incremental(): sync every object type, in sync order. */
Datum
hubsync_full_incremental(PG_FUNCTION_ARGS)
{
	sync_into_result_set(fcinfo, NIL, HS_SYNC_INCREMENTAL);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(hubsync_reconcile);

/* hubsync_reconcile(entity_type DEFAULT NULL): sync and reconcile now. */
Datum
hubsync_reconcile(PG_FUNCTION_ARGS)
{
	List	   *types = NIL;

	if (!PG_ARGISNULL(0))
		types = list_make1(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	sync_into_result_set(fcinfo, types, HS_SYNC_RECONCILE);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(hubsync_run);

/*
 * CALL hubsync_run(entity_type DEFAULT NULL): sync one or every object
 * type, committing after each page, as the pg_cron job does.  Called
 * inside an explicit transaction block it cannot commit, and then runs in
 * that transaction like hubsync_full_incremental().
 */
Datum
hubsync_run(PG_FUNCTION_ARGS)
{
	bool		nonatomic = fcinfo->context != NULL &&
		IsA(fcinfo->context, CallContext) &&
		!castNode(CallContext, fcinfo->context)->atomic;
	List	   *types = NIL;
	ListCell   *cell;

	if (!PG_ARGISNULL(0))
		types = list_make1(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	if (!nonatomic)
		ereport(NOTICE,
				(errmsg("hubsync_run cannot commit here, so it syncs in the current transaction"),
				 errhint("Call it as a statement of its own, outside BEGIN ... COMMIT and not in a multi-statement query string, to commit after every page.")));

	SPI_connect_ext(nonatomic ? SPI_OPT_NONATOMIC : 0);
	if (types == NIL)
		types = hs_entity_types();
	foreach(cell, types)
	{
		HsSyncResult result;

		hs_sync_entity((char *) lfirst(cell), nonatomic, HS_SYNC_INCREMENTAL, &result);
		ereport(NOTICE,
				(errmsg("hubsync: %s: %s, %lld fetched, %lld new, %lld updated, %lld archived, %lld deleted, %lld queue entries",
						result.entity_type, result.status,
						(long long) result.stats.fetched, (long long) result.stats.inserted,
						(long long) result.stats.updated, (long long) result.stats.archived,
						(long long) result.stats.deleted, (long long) result.stats.queue_entries)));
	}
	SPI_finish();
	PG_RETURN_VOID();
}
