/*-------------------------------------------------------------------------
 *
 * http.h
 *	  Interruptible HTTP transfers over libcurl's multi interface.
 *
 * src/http.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef HUBSYNC_HTTP_H
#define HUBSYNC_HTTP_H

#include <curl/curl.h>

/* Response headers hubsync acts on; empty string when absent. */
#define HS_HEADER_VALUE_SIZE 128

/*
 * One HTTP request and, after hs_http_perform(), its outcome.  The caller
 * fills in method, url and body (NULL for GET); everything below the
 * "outcome" line is set by hs_http_perform().  The response body is
 * palloc'd in the caller's memory context and NUL-terminated.
 */
typedef struct HsHttpRequest
{
	const char *method;
	const char *url;
	const char *body;

	/* outcome */
	CURLcode	curl_code;		/* CURLE_OK when a response arrived */
	char		curl_error[CURL_ERROR_SIZE];
	long		status;			/* HTTP status, 0 when no response */
	char	   *response;
	size_t		response_len;
	char		content_type[HS_HEADER_VALUE_SIZE];
	char		correlation_id[HS_HEADER_VALUE_SIZE];
	char		retry_after[HS_HEADER_VALUE_SIZE];
	char		ratelimit_remaining[HS_HEADER_VALUE_SIZE];
	char		ratelimit_interval_ms[HS_HEADER_VALUE_SIZE];
	double		elapsed_seconds;
} HsHttpRequest;

extern void hs_http_init(void);
extern void hs_http_perform(HsHttpRequest **requests, int count);

#endif							/* HUBSYNC_HTTP_H */
