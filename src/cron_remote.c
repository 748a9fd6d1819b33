/*-------------------------------------------------------------------------
 *
 * cron_remote.c
 *	  Running one statement in pg_cron's database, for hubsync_schedule().
 *
 * pg_cron keeps its jobs in the database named by cron.database_name, and
 * a function cannot write to another database.  When hubsync is installed
 * elsewhere, hubsync_schedule() therefore connects to the cron database of
 * this same server with libpq, as the calling role, and runs
 * cron.schedule_in_database() there.  The connection goes to this
 * server's first Unix socket directory (or localhost) and port, so
 * pg_hba.conf decides, as for any other client, whether the role may
 * connect.
 *
 * Like dblink, a role that is not a superuser may use this only when the
 * server asked it for a password, so that the server's own trust or peer
 * authentication never vouches for it.
 *
 * The connection is driven non-blocking and every wait is on the latch
 * and the socket, so a cancel or statement_timeout interrupts it.
 *
 * src/cron_remote.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/wait_event.h"

#include "hubsync.h"

/* Seconds allowed to connect to the cron database. */
#define HS_CRON_CONNECT_TIMEOUT "10"

/* Wait until the libpq socket is readable (or writable), or the latch is set. */
static void
wait_for_socket(PGconn *conn, bool for_write)
{
	int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | WL_TIMEOUT |
		(for_write ? WL_SOCKET_WRITEABLE : WL_SOCKET_READABLE);

	(void) WaitLatchOrSocket(MyLatch, events, PQsocket(conn), 1000, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* First directory of unix_socket_directories, or "localhost". */
static char *
server_host(void)
{
	const char *directories = GetConfigOption("unix_socket_directories", true, false);
	char	   *host;
	size_t		length;

	if (directories == NULL || directories[0] == '\0')
		return pstrdup("localhost");
	while (*directories == ' ')
		directories++;
	length = strcspn(directories, ",");
	host = pnstrdup(directories, length);
	while (length > 0 && host[length - 1] == ' ')
		host[--length] = '\0';
	return host[0] != '\0' ? host : pstrdup("localhost");
}

static PGconn *
connect_to(const char *database)
{
	const char *keywords[] = {"host", "port", "dbname", "user",
	"fallback_application_name", "connect_timeout", NULL};
	const char *values[7];
	PGconn	   *conn;
	PostgresPollingStatusType status = PGRES_POLLING_WRITING;

	values[0] = server_host();
	values[1] = psprintf("%d", PostPortNumber);
	values[2] = database;
	values[3] = GetUserNameFromId(GetUserId(), false);
	values[4] = "hubsync";
	values[5] = HS_CRON_CONNECT_TIMEOUT;
	values[6] = NULL;

	conn = PQconnectStartParams(keywords, values, 0);
	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not start a connection to database \"%s\"", database)));

	while (PQstatus(conn) != CONNECTION_BAD &&
		   status != PGRES_POLLING_OK && status != PGRES_POLLING_FAILED)
	{
		wait_for_socket(conn, status == PGRES_POLLING_WRITING);
		status = PQconnectPoll(conn);
	}

	if (PQstatus(conn) != CONNECTION_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to pg_cron's database \"%s\" as role \"%s\"",
						database, values[3]),
				 errdetail_internal("%s", pchomp(PQerrorMessage(conn))),
				 errhint("pg_hba.conf must let this role connect to database \"%s\" through %s, port %s; or run the statement in that database yourself.",
						 database, values[0], values[1])));

	if (!superuser() && !PQconnectionUsedPassword(conn))
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("only superusers may schedule from another database without a password"),
				 errdetail("The server let role \"%s\" connect to database \"%s\" without asking for a password.",
						   values[3], database),
				 errhint("Require password authentication for this role in pg_hba.conf, or schedule as a superuser.")));
	return conn;
}

/* Raise the error of a failed remote statement with its own SQLSTATE. */
static void
report_remote_error(PGresult *result, const char *database)
{
	const char *sqlstate = PQresultErrorField(result, PG_DIAG_SQLSTATE);
	const char *message = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
	const char *hint = PQresultErrorField(result, PG_DIAG_MESSAGE_HINT);
	int			code = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;

	if (sqlstate != NULL && strlen(sqlstate) == 5)
		code = MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2], sqlstate[3], sqlstate[4]);
	ereport(ERROR,
			(errcode(code),
			 errmsg_internal("%s", message ? message : "statement failed"),
			 hint ? errhint("%s", hint) : 0,
			 errcontext("statement run in pg_cron's database \"%s\"", database)));
}

/* Send a statement and return its first value, or NULL. */
static char *
run_statement(PGconn *conn, const char *database, const char *query,
			  int count, const char **arguments)
{
	PGresult   *result;
	char	   *value = NULL;

	if (!PQsendQueryParams(conn, query, count, NULL, arguments, NULL, NULL, 0))
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not send a statement to database \"%s\"", database),
				 errdetail_internal("%s", pchomp(PQerrorMessage(conn)))));
	while (PQflush(conn) > 0)
		wait_for_socket(conn, true);

	for (;;)
	{
		while (PQisBusy(conn))
		{
			wait_for_socket(conn, false);
			if (!PQconsumeInput(conn))
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("lost the connection to database \"%s\"", database),
						 errdetail_internal("%s", pchomp(PQerrorMessage(conn)))));
		}
		result = PQgetResult(conn);
		if (result == NULL)
			break;
		if (PQresultStatus(result) != PGRES_TUPLES_OK &&
			PQresultStatus(result) != PGRES_COMMAND_OK)
		{
			PG_TRY();
			{
				report_remote_error(result, database);
			}
			PG_FINALLY();
			{
				PQclear(result);
			}
			PG_END_TRY();
		}
		if (value == NULL && PQntuples(result) > 0 && PQnfields(result) > 0 &&
			!PQgetisnull(result, 0, 0))
			value = pstrdup(PQgetvalue(result, 0, 0));
		PQclear(result);
	}
	return value;
}

PG_FUNCTION_INFO_V1(hubsync_cron_remote);

/*
 * hubsync._cron_remote(database text, query text, arguments text[])
 * returns text: run query with $1.. bound to arguments in database of this
 * server, as the current role, and return the first value it returns.
 */
Datum
hubsync_cron_remote(PG_FUNCTION_ARGS)
{
	char	   *database;
	char	   *query;
	const char **arguments = NULL;
	int			count = 0;
	PGconn	   *volatile conn = NULL;
	char	   *value = NULL;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("database and query must not be NULL")));
	database = text_to_cstring(PG_GETARG_TEXT_PP(0));
	query = text_to_cstring(PG_GETARG_TEXT_PP(1));

	if (!PG_ARGISNULL(2))
	{
		Datum	   *elements;
		bool	   *nulls;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), TEXTOID, -1, false, TYPALIGN_INT,
						  &elements, &nulls, &count);
		arguments = palloc(sizeof(char *) * Max(count, 1));
		for (int i = 0; i < count; i++)
			arguments[i] = nulls[i] ? NULL : TextDatumGetCString(elements[i]);
	}

	if (!AcquireExternalFD())
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to database \"%s\": too many open files", database)));

	PG_TRY();
	{
		conn = connect_to(database);
		value = run_statement(conn, database, query, count, arguments);
	}
	PG_FINALLY();
	{
		if (conn != NULL)
			PQfinish(conn);
		ReleaseExternalFD();
	}
	PG_END_TRY();

	if (value == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(value));
}
