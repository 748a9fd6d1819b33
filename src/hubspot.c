/*-------------------------------------------------------------------------
 *
 * hubspot.c
 *	  HubSpot CRM API calls with retries, rate limits and error reports.
 *
 * hs_api_call() is the one way hubsync talks to HubSpot.  It adds the base
 * URL, paces search requests, retries what can succeed on a second try
 * (transport failures, 5xx, 423 and 477) with exponential backoff and
 * jitter, waits out 429 responses as their policy requires, and turns every
 * other failure into an ereport that names the endpoint, the HTTP status,
 * HubSpot's message and correlation id, with a hint where one helps.
 *
 * The access token is sent only in the Authorization header.  Text that
 * comes back from HubSpot is scrubbed of the token before it is reported,
 * in case a proxy or error page echoes request headers.
 *
 * src/hubspot.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "utils/timestamp.h"

#include "http.h"
#include "hubspot.h"

/* HubSpot's ten-second rolling window, used when no header gives it. */
#define HS_DEFAULT_RATE_WINDOW_MS 10000

/* Minimum wait after a 423 Locked, as HubSpot's error documentation sets it. */
#define HS_LOCKED_WAIT_MS 2000

/* When the last search request was sent, for pacing. */
static TimestampTz last_search_at = 0;

/* Copy of text with every occurrence of the access token masked. */
static char *
scrub_secret(const char *text)
{
	StringInfoData buf;
	const char *token = hs_hubspot_token;
	size_t		token_len;
	const char *p = text;
	const char *hit;

	if (text == NULL)
		return NULL;
	if (token == NULL || strlen(token) < 4)
		return pstrdup(text);

	token_len = strlen(token);
	initStringInfo(&buf);
	while ((hit = strstr(p, token)) != NULL)
	{
		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, "[token]");
		p = hit + token_len;
	}
	appendStringInfoString(&buf, p);
	return buf.data;
}

/* Percent-encode a query parameter value (RFC 3986 unreserved kept). */
char *
hs_url_encode(const char *value)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (const unsigned char *p = (const unsigned char *) value; *p; p++)
	{
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			(*p >= '0' && *p <= '9') || *p == '-' || *p == '_' ||
			*p == '.' || *p == '~')
			appendStringInfoChar(&buf, (char) *p);
		else
			appendStringInfo(&buf, "%%%02X", *p);
	}
	return buf.data;
}

/* Base URL without a trailing slash. */
static char *
base_url(void)
{
	char	   *url = pstrdup(hs_hubspot_url ? hs_hubspot_url : "");
	size_t		len = strlen(url);

	while (len > 0 && url[len - 1] == '/')
		url[--len] = '\0';
	return url;
}

/* A string field of an error body, or NULL. */
static char *
error_field(Jsonb *body, const char *key)
{
	if (body == NULL)
		return NULL;
	return scrub_secret(hs_json_string(hs_json_key(&body->root, key)));
}

/*
 * The scopes a 403 MISSING_SCOPES body names, comma-separated, or NULL.
 * HubSpot lists them under errors[].context.requiredGranularScopes.
 */
static char *
missing_scopes(Jsonb *body)
{
	JsonbContainer *errors;
	StringInfoData buf;

	if (body == NULL)
		return NULL;
	errors = hs_json_container(hs_json_key(&body->root, "errors"));
	initStringInfo(&buf);
	for (int i = 0; i < hs_json_array_size(errors); i++)
	{
		JsonbContainer *error = hs_json_object_at(errors, i);
		JsonbContainer *context = hs_json_container(hs_json_key(error, "context"));
		JsonbContainer *scopes = hs_json_container(hs_json_key(context, "requiredGranularScopes"));

		for (int j = 0; j < hs_json_array_size(scopes); j++)
		{
			char	   *scope = hs_json_string(getIthJsonbValueFromContainer(scopes, j));

			if (scope == NULL)
				continue;
			if (buf.len > 0)
				appendStringInfoString(&buf, ", ");
			appendStringInfoString(&buf, scope);
		}
	}
	return buf.len > 0 ? scrub_secret(buf.data) : NULL;
}

/* errdetail text with HubSpot's own message, category and correlation id. */
static char *
hubspot_detail(HsHttpRequest *request, Jsonb *body)
{
	StringInfoData buf;
	char	   *message = error_field(body, "message");
	char	   *category = error_field(body, "category");
	char	   *correlation = error_field(body, "correlationId");

	if (correlation == NULL && request->correlation_id[0] != '\0')
		correlation = scrub_secret(request->correlation_id);

	initStringInfo(&buf);
	if (message != NULL)
	{
		size_t		length = strlen(message);
		bool		ends_sentence = length > 0 &&
			(message[length - 1] == '.' || message[length - 1] == '!' ||
			 message[length - 1] == '?');

		appendStringInfo(&buf, "HubSpot says: %s%s", message, ends_sentence ? "" : ".");
	}
	else if (request->content_type[0] != '\0')
		appendStringInfo(&buf, "The response is not a HubSpot error body (content type %s).",
						 request->content_type);
	else
		appendStringInfoString(&buf, "The response has no HubSpot error body.");
	if (category != NULL)
		appendStringInfo(&buf, " Category: %s.", category);
	if (correlation != NULL)
		appendStringInfo(&buf, " Correlation id: %s.", correlation);
	return buf.data;
}

/* Raise the error for a response that will not be retried. */
static void
report_http_error(const char *endpoint, HsHttpRequest *request, Jsonb *body)
{
	char	   *detail = hubspot_detail(request, body);
	long		status = request->status;

	if (status == 401)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("HubSpot rejected the access token for %s (HTTP 401)", endpoint),
				 errdetail_internal("%s", detail),
				 errhint("Set a valid private app token as superuser: ALTER SYSTEM SET hubsync.hubspot_token = '...'; SELECT pg_reload_conf();")));

	if (status == 403)
	{
		char	   *scopes = missing_scopes(body);

		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("HubSpot denied access to %s (HTTP 403)", endpoint),
				 errdetail_internal("%s", detail),
				 scopes ?
				 errhint("Grant the private app the missing scopes in HubSpot: %s.", scopes) :
				 errhint("Check the private app's scopes in HubSpot; hubsync needs read access to contacts, companies, invoices and line items.")));
	}

	if (status >= 500 || status == 423 || status == 477)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("HubSpot request %s failed with HTTP %ld after %d retries",
						endpoint, status, hs_max_retries),
				 errdetail_internal("%s", detail),
				 errhint("HubSpot is unavailable for now. A CALL hubsync_run() keeps the pages it committed and a SELECT run leaves the data as it was; the next run continues from the last committed watermark.")));

	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg("HubSpot request %s failed with HTTP %ld", endpoint, status),
			 errdetail_internal("%s", detail),
			 status == 400 ?
			 errhint("Check the property names in hubsync.sync_properties; HubSpot rejected the request itself.") : 0));
}

/*
 * Raise the error for a 429 that will not be waited out: the daily limit,
 * or another limit that was still reached after the allowed waits.
 */
static void
report_rate_limit(const char *endpoint, HsHttpRequest *request, Jsonb *body,
				  const char *policy, int waits)
{
	char	   *detail = hubspot_detail(request, body);

	if (strcmp(policy, "DAILY") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("HubSpot daily request limit reached for %s (HTTP 429, policy DAILY)",
						endpoint),
				 errdetail_internal("%s", detail),
				 errhint("Every request fails until the limit resets at midnight in the portal's time zone. A CALL hubsync_run() keeps the pages it committed and a SELECT run leaves the data as it was; the next run continues from the last committed watermark.")));

	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("HubSpot rate limit %s still reached for %s after %d waits (HTTP 429)",
					policy, endpoint, waits),
			 errdetail_internal("%s", detail),
			 errhint("Other integrations of the portal share its limits. Raise hubsync.max_rate_limit_waits, or lower hubsync.search_requests_per_second when the policy is SECONDLY.")));
}

/* Whether a transport failure may go away on a second try. */
static bool
transport_error_is_retryable(CURLcode code)
{
	switch (code)
	{
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_URL_MALFORMAT:
		case CURLE_WRITE_ERROR:
		case CURLE_OUT_OF_MEMORY:
		case CURLE_BAD_FUNCTION_ARGUMENT:
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CERTPROBLEM:
			return false;
		default:
			return true;
	}
}

static bool
status_is_retryable(long status)
{
	return status >= 500 || status == 423 || status == 477;
}

/* Exponential backoff with jitter: between half and all of base * 2^n. */
static long
backoff_delay_ms(int attempt)
{
	double		delay = (double) hs_retry_base_delay_ms;

	for (int i = 0; i < attempt && delay < hs_retry_max_delay_ms; i++)
		delay *= 2;
	if (delay > hs_retry_max_delay_ms)
		delay = hs_retry_max_delay_ms;
	return (long) (delay * (0.5 + 0.5 * pg_prng_double(&pg_global_prng_state)));
}

/* Retry-After in milliseconds (HubSpot sends seconds), or -1. */
static long
retry_after_ms(HsHttpRequest *request)
{
	char	   *end;
	long		seconds;

	if (request->retry_after[0] == '\0')
		return -1;
	seconds = strtol(request->retry_after, &end, 10);
	if (end == request->retry_after || seconds < 0)
		return -1;
	/* Checked before multiplying, which could overflow. */
	if (seconds >= hs_retry_max_delay_ms / 1000 + 1)
		return hs_retry_max_delay_ms;
	return Min(seconds * 1000, (long) hs_retry_max_delay_ms);
}

/*
 * How long to wait after a 429, or -1 when the policy means stopping (the
 * daily limit).  SECONDLY is the search limit of a few requests a second;
 * TEN_SECONDLY_ROLLING is the per-app burst window.  Every wait is capped
 * by hubsync.retry_max_delay, as that setting promises.
 */
static long
rate_limit_wait_ms(HsHttpRequest *request, Jsonb *body, char **policy_out)
{
	char	   *policy = error_field(body, "policyName");
	char	   *message = error_field(body, "message");
	long		wait = retry_after_ms(request);

	*policy_out = policy ? policy : "unknown";
	if (policy != NULL && strcmp(policy, "DAILY") == 0)
		return -1;
	if (wait >= 0)
		return wait;
	if ((policy != NULL && strcmp(policy, "SECONDLY") == 0) ||
		(message != NULL && strstr(message, "secondly limit") != NULL))
		return Min(1000L, (long) hs_retry_max_delay_ms);
	if (request->ratelimit_interval_ms[0] != '\0')
	{
		long		interval = strtol(request->ratelimit_interval_ms, NULL, 10);

		if (interval > 0)
			return Min(interval, (long) hs_retry_max_delay_ms);
	}
	return Min((long) HS_DEFAULT_RATE_WINDOW_MS, (long) hs_retry_max_delay_ms);
}

/* Sleep until the next search request is allowed. */
static void
pace_search(void)
{
	long		gap_ms = 1000 / Max(hs_search_requests_per_second, 1);
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = TimestampTzPlusMilliseconds(last_search_at, gap_ms);

	if (last_search_at != 0 && now < next)
		hs_wait_interruptibly(TimestampDifferenceMilliseconds(now, next));
	last_search_at = GetCurrentTimestamp();
}

/*
 * Perform one HubSpot API call.  Returns the parsed body of a 2xx
 * response, or of a response with status accepted_status (0 for none),
 * which the caller handles itself (404 for a batch read that found
 * nothing).  Raises an error for everything else, after retries where a
 * retry can help.
 */
HsResponse
hs_api_call(const char *method, const char *path, const char *body,
			HsCallKind kind, long accepted_status)
{
	HsResponse	response = {0};
	HsHttpRequest request = {0};
	HsHttpRequest *requests[1] = {&request};
	char	   *endpoint;
	char	   *url;
	int			retries = 0;
	int			rate_limit_waits = 0;
	char	   *query_start;

	if (hs_hubspot_token == NULL || hs_hubspot_token[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("hubsync.hubspot_token is not set"),
				 errhint("Set a private app token as superuser: ALTER SYSTEM SET hubsync.hubspot_token = '...'; SELECT pg_reload_conf();")));

	/* Errors name the endpoint without its query string. */
	endpoint = psprintf("%s %s", method, path);
	query_start = strchr(endpoint, '?');
	if (query_start != NULL)
		*query_start = '\0';

	url = psprintf("%s%s", base_url(), path);
	request.method = method;
	request.url = url;
	request.body = body;

	for (;;)
	{
		Jsonb	   *error_body;
		long		wait_ms;

		if (kind == HS_CALL_SEARCH)
			pace_search();

		/* Count the attempt before sending it, so that a cancelled one counts. */
		if (hs_current_stats)
			hs_current_stats->http_requests++;
		hs_http_perform(requests, 1);

		if (request.curl_code != CURLE_OK)
		{
			char	   *reason = scrub_secret(request.curl_error);

			if (!transport_error_is_retryable(request.curl_code) || retries >= hs_max_retries)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("HubSpot request %s failed: %s", endpoint, reason),
						 retries > 0 ? errdetail("Gave up after %d retries.", retries) : 0,
						 errhint("Check hubsync.hubspot_url and the network path to HubSpot; hubsync.request_timeout bounds each attempt.")));
			wait_ms = backoff_delay_ms(retries);
			retries++;
			if (hs_current_stats)
				hs_current_stats->retries++;
			ereport(LOG,
					(errmsg("hubsync: retrying HubSpot request %s in %ld ms after: %s (retry %d of %d)",
							endpoint, wait_ms, reason, retries, hs_max_retries),
					 errhidestmt(true)));
			hs_wait_interruptibly(wait_ms);
			continue;
		}

		/*
		 * Every endpoint hubsync calls returns a JSON body with its 2xx
		 * status.  An empty body (from a proxy, or a connection closed
		 * early without a Content-Length) is retried, and after the last
		 * retry hs_parse_json() raises for it, because reading it as "no
		 * results" would move the watermark past records never read.
		 */
		if (request.status >= 200 && request.status < 300 && request.status != 204 &&
			request.response_len == 0 && retries < hs_max_retries)
		{
			wait_ms = backoff_delay_ms(retries);
			retries++;
			if (hs_current_stats)
				hs_current_stats->retries++;
			ereport(LOG,
					(errmsg("hubsync: retrying HubSpot request %s in %ld ms after an empty HTTP %ld response (retry %d of %d)",
							endpoint, wait_ms, request.status, retries, hs_max_retries),
					 errhidestmt(true)));
			hs_wait_interruptibly(wait_ms);
			continue;
		}

		if ((request.status >= 200 && request.status < 300) ||
			(accepted_status != 0 && request.status == accepted_status))
		{
			response.status = request.status;
			if (request.response_len > 0 ||
				(request.status >= 200 && request.status < 300 && request.status != 204))
				response.body = hs_parse_json(request.response, request.response_len,
											  endpoint, &response.nul_removed);
			if (response.nul_removed > 0 && hs_current_stats)
				hs_current_stats->warnings += response.nul_removed;
			if (response.nul_removed > 0)
				ereport(WARNING,
						(errmsg("removed %d NUL characters (\\u0000) from text values in the response of %s",
								response.nul_removed, endpoint),
						 errdetail("PostgreSQL text cannot contain U+0000; the values are stored without it.")));
			return response;
		}

		error_body = hs_try_parse_json(request.response, request.response_len);

		if (request.status == 429)
		{
			char	   *policy;

			if (hs_current_stats)
				hs_current_stats->rate_limited++;
			wait_ms = rate_limit_wait_ms(&request, error_body, &policy);
			if (wait_ms < 0 || rate_limit_waits >= hs_max_rate_limit_waits)
				report_rate_limit(endpoint, &request, error_body, policy, rate_limit_waits);
			rate_limit_waits++;
			ereport(LOG,
					(errmsg("hubsync: HubSpot rate limit %s reached on %s; waiting %ld ms",
							policy, endpoint, wait_ms),
					 errhidestmt(true)));
			hs_wait_interruptibly(wait_ms);
			continue;
		}

		if (status_is_retryable(request.status) && retries < hs_max_retries)
		{
			wait_ms = retry_after_ms(&request);
			if (wait_ms < 0)
				wait_ms = backoff_delay_ms(retries);
			if (request.status == 423)
				wait_ms = Max(wait_ms, HS_LOCKED_WAIT_MS);
			retries++;
			if (hs_current_stats)
				hs_current_stats->retries++;
			ereport(LOG,
					(errmsg("hubsync: retrying HubSpot request %s in %ld ms after HTTP %ld (retry %d of %d)",
							endpoint, wait_ms, request.status, retries, hs_max_retries),
					 errhidestmt(true)));
			hs_wait_interruptibly(wait_ms);
			continue;
		}

		report_http_error(endpoint, &request, error_body);
	}
}
