/*-------------------------------------------------------------------------
 *
 * http.c
 *	  Interruptible HTTP transfers over libcurl's multi interface.
 *
 * A backend must never block inside libcurl: a cancel, statement_timeout
 * or pg_terminate_backend has to take effect within a second even while
 * HubSpot is slow to respond.  So transfers are driven with
 * curl_multi_socket_action(), and the backend sleeps in a WaitEventSet
 * over its latch and the sockets libcurl reports through its socket
 * callback, calling CHECK_FOR_INTERRUPTS() on every wake.
 *
 * hs_http_perform() takes an array of requests and runs them concurrently,
 * which is what a parallel fetch within HubSpot's rate limits builds on.
 *
 * Resource ownership: libcurl allocates with malloc and keeps connections
 * alive in the multi handle's pool between calls, so the multi handle
 * lives as long as the backend.  Easy handles, header lists and response
 * buffers belong to one hs_http_perform() call and are released on every
 * path out of it, errors included.  Every socket libcurl opens is counted
 * with AcquireExternalFD(), through the open/close socket callbacks, so
 * the backend's file descriptor budget stays right.
 *
 * Callbacks called by libcurl never raise a PostgreSQL error, because a
 * longjmp through libcurl would leave it in an undefined state; they
 * report failure through their return value instead.
 *
 * src/http.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "hubsync.h"
#include "http.h"

/* Maximum sleep between interrupt checks while transfers are running. */
#define HS_MAX_WAIT_MS 1000

/* Largest response body accepted, to bound a backend's memory use. */
#define HS_MAX_RESPONSE_BYTES (256 * 1024 * 1024)

/* Most sockets one hs_http_perform() call watches at once. */
#define HS_MAX_WATCHED_SOCKETS 64

/* Per-transfer state that libcurl callbacks write into (malloc-owned). */
typedef struct TransferState
{
	HsHttpRequest *request;
	CURL	   *easy;
	struct curl_slist *headers;
	char	   *body;			/* response body being received */
	size_t		body_len;
	size_t		body_cap;
	bool		too_large;
	bool		done;
} TransferState;

typedef struct WatchedSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN, _OUT or _INOUT */
} WatchedSocket;

static CURLM *hs_multi = NULL;
static WatchedSocket watched_sockets[HS_MAX_WATCHED_SOCKETS];
static int	num_watched_sockets = 0;
static long multi_timeout_ms = -1;

static int	socket_callback(CURL *easy, curl_socket_t fd, int what,
							void *userp, void *socketp);
static int	timer_callback(CURLM *multi, long timeout_ms, void *userp);
static curl_socket_t open_socket_callback(void *clientp, curlsocktype purpose,
										  struct curl_sockaddr *address);
static int	close_socket_callback(void *clientp, curl_socket_t fd);
static size_t write_callback(char *data, size_t size, size_t nmemb, void *userp);
static size_t header_callback(char *data, size_t size, size_t nmemb, void *userp);
static void setup_transfer(TransferState *transfer);
static void run_transfers(TransferState *transfers, int count);
static int	collect_finished(TransferState *transfers, int count);
static void release_transfers(TransferState *transfers, int count);

/*
 * Initialize libcurl.  Called from _PG_init, before any thread exists.
 */
void
hs_http_init(void)
{
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl")));
}

static void
ensure_multi_handle(void)
{
	if (hs_multi != NULL)
		return;

	hs_multi = curl_multi_init();
	if (hs_multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(hs_multi, CURLMOPT_SOCKETFUNCTION, socket_callback);
	curl_multi_setopt(hs_multi, CURLMOPT_TIMERFUNCTION, timer_callback);
}

/*
 * Perform all requests concurrently and wait until each has a response or
 * has failed.  Transport failures are reported in each request's
 * curl_code and curl_error, not raised; interrupts are raised as usual,
 * after every libcurl object of this call has been released.
 */
void
hs_http_perform(HsHttpRequest **requests, int count)
{
	TransferState *volatile transfers;

	ensure_multi_handle();

	transfers = palloc0(sizeof(TransferState) * count);
	for (int i = 0; i < count; i++)
		transfers[i].request = requests[i];

	PG_TRY();
	{
		for (int i = 0; i < count; i++)
			setup_transfer(&transfers[i]);
		run_transfers(transfers, count);

		for (int i = 0; i < count; i++)
		{
			TransferState *transfer = &transfers[i];
			HsHttpRequest *request = transfer->request;

			request->response = palloc(transfer->body_len + 1);
			if (transfer->body_len > 0)
				memcpy(request->response, transfer->body, transfer->body_len);
			request->response[transfer->body_len] = '\0';
			request->response_len = transfer->body_len;
			if (transfer->too_large)
				snprintf(request->curl_error, CURL_ERROR_SIZE,
						 "response body exceeds %d bytes", HS_MAX_RESPONSE_BYTES);
		}
	}
	PG_FINALLY();
	{
		release_transfers(transfers, count);
	}
	PG_END_TRY();

	pfree(transfers);
}

/*
 * Append a header line to the transfer's list.  Returns the list, or NULL
 * when libcurl is out of memory; the list built so far then stays in
 * transfer->headers, where release_transfers() frees it.
 */
static struct curl_slist *
append_header(TransferState *transfer, const char *line)
{
	struct curl_slist *extended = curl_slist_append(transfer->headers, line);

	if (extended == NULL)
		return NULL;
	transfer->headers = extended;
	return extended;
}

static void
setup_transfer(TransferState *transfer)
{
	HsHttpRequest *request = transfer->request;
	CURL	   *easy;
	char	   *authorization;
	struct curl_slist *headers = NULL;

	request->curl_code = CURLE_OK;
	request->curl_error[0] = '\0';
	request->status = 0;
	request->response = NULL;
	request->response_len = 0;
	request->content_type[0] = '\0';
	request->correlation_id[0] = '\0';
	request->retry_after[0] = '\0';
	request->ratelimit_remaining[0] = '\0';
	request->ratelimit_interval_ms[0] = '\0';
	request->elapsed_seconds = 0;

	easy = curl_easy_init();
	if (easy == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl easy handle")));
	transfer->easy = easy;

	/*
	 * The token goes only into this malloc'd header list, which libcurl
	 * sends and never logs because CURLOPT_VERBOSE stays off.
	 */
	authorization = psprintf("Authorization: Bearer %s",
							 hs_hubspot_token ? hs_hubspot_token : "");
	headers = append_header(transfer, authorization);
	memset(authorization, 0, strlen(authorization));
	pfree(authorization);
	if (headers != NULL)
		headers = append_header(transfer, "Accept: application/json");
	if (headers != NULL)
		headers = append_header(transfer, "Content-Type: application/json");
	/* No "Expect: 100-continue" round trip before request bodies. */
	if (headers != NULL)
		headers = append_header(transfer, "Expect:");
	if (headers == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not build HTTP request headers")));

	curl_easy_setopt(easy, CURLOPT_URL, request->url);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "hubsync/1.0");
	curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) hs_connect_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) hs_request_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, request->curl_error);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_callback);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, transfer);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_callback);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, transfer);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, transfer);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, open_socket_callback);
	curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, close_socket_callback);
	if (hs_ca_file != NULL && hs_ca_file[0] != '\0')
		curl_easy_setopt(easy, CURLOPT_CAINFO, hs_ca_file);

	if (strcmp(request->method, "GET") == 0)
		curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
	else
	{
		const char *body = request->body ? request->body : "";

		curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request->method);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
	}

	if (curl_multi_add_handle(hs_multi, easy) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not add a transfer to the libcurl multi handle")));
}

/*
 * Drive all transfers to completion, sleeping on the latch and on the
 * sockets libcurl watches.
 */
static void
run_transfers(TransferState *transfers, int count)
{
	int			running = 0;
	int			pending = count;

	curl_multi_socket_action(hs_multi, CURL_SOCKET_TIMEOUT, 0, &running);
	pending -= collect_finished(transfers, count);

	while (pending > 0)
	{
		WaitEventSet *set;
		WaitEvent	occurred[HS_MAX_WATCHED_SOCKETS + 2];
		int			num_occurred;
		long		timeout;
		bool		socket_ready = false;

		set = CreateWaitEventSet(CurrentMemoryContext, num_watched_sockets + 2);
		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		for (int i = 0; i < num_watched_sockets; i++)
		{
			uint32		events = 0;

			if (watched_sockets[i].what & CURL_POLL_IN)
				events |= WL_SOCKET_READABLE;
			if (watched_sockets[i].what & CURL_POLL_OUT)
				events |= WL_SOCKET_WRITEABLE;
			if (events != 0)
				AddWaitEventToSet(set, events, watched_sockets[i].fd, NULL, NULL);
		}

		timeout = multi_timeout_ms;
		if (timeout < 0 || timeout > HS_MAX_WAIT_MS)
			timeout = HS_MAX_WAIT_MS;

		num_occurred = WaitEventSetWait(set, timeout, occurred,
										lengthof(occurred), PG_WAIT_EXTENSION);
		FreeWaitEventSet(set);

		for (int i = 0; i < num_occurred; i++)
		{
			if (occurred[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			else if (occurred[i].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
			{
				int			flags = 0;

				if (occurred[i].events & WL_SOCKET_READABLE)
					flags |= CURL_CSELECT_IN;
				if (occurred[i].events & WL_SOCKET_WRITEABLE)
					flags |= CURL_CSELECT_OUT;
				curl_multi_socket_action(hs_multi, occurred[i].fd, flags, &running);
				socket_ready = true;
			}
		}

		/* A cancel, timeout or termination request takes effect here. */
		CHECK_FOR_INTERRUPTS();

		if (!socket_ready)
			curl_multi_socket_action(hs_multi, CURL_SOCKET_TIMEOUT, 0, &running);
		pending -= collect_finished(transfers, count);
	}
}

/* Record the outcome of transfers that libcurl reports as done. */
static int
collect_finished(TransferState *transfers, int count)
{
	CURLMsg    *message;
	int			remaining;
	int			finished = 0;

	while ((message = curl_multi_info_read(hs_multi, &remaining)) != NULL)
	{
		TransferState *transfer = NULL;

		if (message->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, (char **) &transfer);
		if (transfer == NULL || transfer->done)
			continue;

		transfer->done = true;
		transfer->request->curl_code = message->data.result;
		curl_easy_getinfo(transfer->easy, CURLINFO_RESPONSE_CODE,
						  &transfer->request->status);
		curl_easy_getinfo(transfer->easy, CURLINFO_TOTAL_TIME,
						  &transfer->request->elapsed_seconds);
		if (transfer->request->curl_error[0] == '\0' &&
			message->data.result != CURLE_OK)
			strlcpy(transfer->request->curl_error,
					curl_easy_strerror(message->data.result), CURL_ERROR_SIZE);
		finished++;
	}
	return finished;
}

/* Release every libcurl object and buffer of one hs_http_perform() call. */
static void
release_transfers(TransferState *transfers, int count)
{
	for (int i = 0; i < count; i++)
	{
		TransferState *transfer = &transfers[i];

		if (transfer->easy != NULL)
		{
			curl_multi_remove_handle(hs_multi, transfer->easy);
			curl_easy_cleanup(transfer->easy);
			transfer->easy = NULL;
		}
		if (transfer->headers != NULL)
		{
			curl_slist_free_all(transfer->headers);
			transfer->headers = NULL;
		}
		free(transfer->body);
		transfer->body = NULL;
	}
}

/* libcurl callbacks below; none of them may raise a PostgreSQL error. */

static int
socket_callback(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < num_watched_sockets; i++)
		if (watched_sockets[i].fd == fd)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < num_watched_sockets)
			watched_sockets[i] = watched_sockets[--num_watched_sockets];
		return 0;
	}

	if (i == num_watched_sockets)
	{
		if (num_watched_sockets >= HS_MAX_WATCHED_SOCKETS)
			return -1;
		num_watched_sockets++;
	}
	watched_sockets[i].fd = fd;
	watched_sockets[i].what = what;
	return 0;
}

static int
timer_callback(CURLM *multi, long timeout_ms, void *userp)
{
	multi_timeout_ms = timeout_ms;
	return 0;
}

static curl_socket_t
open_socket_callback(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	curl_socket_t fd;

	if (!AcquireExternalFD())
	{
		errno = EMFILE;
		return CURL_SOCKET_BAD;
	}
	fd = socket(address->family, address->socktype, address->protocol);
	if (fd == CURL_SOCKET_BAD)
		ReleaseExternalFD();
	return fd;
}

static int
close_socket_callback(void *clientp, curl_socket_t fd)
{
	int			result = close(fd);

	ReleaseExternalFD();
	return result;
}

static size_t
write_callback(char *data, size_t size, size_t nmemb, void *userp)
{
	TransferState *transfer = (TransferState *) userp;
	size_t		length = size * nmemb;

	if (transfer->body_len + length > HS_MAX_RESPONSE_BYTES)
	{
		transfer->too_large = true;
		return 0;
	}
	if (transfer->body_len + length > transfer->body_cap)
	{
		size_t		new_cap = Max(transfer->body_cap * 2, 64 * 1024);
		char	   *new_body;

		while (new_cap < transfer->body_len + length)
			new_cap *= 2;
		new_body = realloc(transfer->body, new_cap);
		if (new_body == NULL)
			return 0;
		transfer->body = new_body;
		transfer->body_cap = new_cap;
	}
	memcpy(transfer->body + transfer->body_len, data, length);
	transfer->body_len += length;
	return length;
}

/* Copy the value of header "name" into dest when line is that header. */
static bool
match_header(const char *line, size_t length, const char *name, char *dest)
{
	size_t		name_len = strlen(name);
	size_t		start;
	size_t		end;

	if (length <= name_len || pg_strncasecmp(line, name, name_len) != 0 ||
		line[name_len] != ':')
		return false;

	start = name_len + 1;
	while (start < length && (line[start] == ' ' || line[start] == '\t'))
		start++;
	end = length;
	while (end > start && (line[end - 1] == '\r' || line[end - 1] == '\n' ||
						   line[end - 1] == ' '))
		end--;
	if (end - start >= HS_HEADER_VALUE_SIZE)
		end = start + HS_HEADER_VALUE_SIZE - 1;
	memcpy(dest, line + start, end - start);
	dest[end - start] = '\0';
	return true;
}

static size_t
header_callback(char *data, size_t size, size_t nmemb, void *userp)
{
	TransferState *transfer = (TransferState *) userp;
	HsHttpRequest *request = transfer->request;
	size_t		length = size * nmemb;

	/* A new status line starts a new header block (e.g. after a redirect). */
	if (length > 5 && strncmp(data, "HTTP/", 5) == 0)
	{
		request->content_type[0] = '\0';
		request->correlation_id[0] = '\0';
		request->retry_after[0] = '\0';
		request->ratelimit_remaining[0] = '\0';
		request->ratelimit_interval_ms[0] = '\0';
		return length;
	}

	if (!match_header(data, length, "Content-Type", request->content_type) &&
		!match_header(data, length, "X-HubSpot-Correlation-Id", request->correlation_id) &&
		!match_header(data, length, "Retry-After", request->retry_after) &&
		!match_header(data, length, "X-HubSpot-RateLimit-Remaining",
					  request->ratelimit_remaining))
		match_header(data, length, "X-HubSpot-RateLimit-Interval-Milliseconds",
					 request->ratelimit_interval_ms);
	return length;
}
