/*-------------------------------------------------------------------------
 *
 * json_util.c
 *	  Parsing HubSpot responses with PostgreSQL's own JSON machinery.
 *
 * A response is first checked with the core JSON lexer (pg_parse_json with
 * the null semantic actions), which reports a syntax error as a value
 * instead of raising it, so the error can name the HubSpot endpoint.  It is
 * then converted with jsonb_in.  The one preparation step hubsync does
 * itself is to drop the JSON escape \u0000: jsonb cannot store U+0000, and
 * a single such character in a HubSpot text property must not fail a sync.
 *
 * src/json_util.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"

#include "hubsync.h"

/* Longest excerpt of an invalid body quoted in an error detail. */
#define HS_BODY_EXCERPT_CHARS 200

/*
 * Copy JSON text without its \u0000 escapes, counting them.  Backslashes
 * occur only in string escapes in valid JSON, so consuming every escape as
 * a pair ("\\", "\"", "\u....") keeps "\\u0000" (an escaped backslash
 * followed by the letters u0000) intact.  Invalid JSON is left for the
 * parser to reject.
 */
static char *
strip_nul_escapes(const char *data, size_t len, int *removed)
{
	char	   *out = palloc(len + 1);
	size_t		o = 0;
	size_t		i = 0;

	*removed = 0;
	while (i < len)
	{
		if (data[i] != '\\' || i + 1 >= len)
		{
			out[o++] = data[i++];
			continue;
		}
		if (data[i + 1] == 'u' && i + 5 < len &&
			memcmp(data + i + 2, "0000", 4) == 0)
		{
			(*removed)++;
			i += 6;
			continue;
		}
		out[o++] = data[i++];
		out[o++] = data[i++];
	}
	out[o] = '\0';
	return out;
}

/* A printable excerpt of a response body for an error detail. */
static char *
body_excerpt(const char *data, size_t len)
{
	size_t		n = Min(len, HS_BODY_EXCERPT_CHARS);
	char	   *excerpt = palloc(n + 4);

	for (size_t i = 0; i < n; i++)
		excerpt[i] = (data[i] >= 0x20 && data[i] < 0x7f) ? data[i] : '?';
	excerpt[n] = '\0';
	if (len > n)
		strcat(excerpt, "...");
	return excerpt;
}

/*
 * Parse a response body into jsonb.  Raises an error naming the endpoint
 * when the body is not valid UTF-8 JSON.  *nul_removed is set to the
 * number of \u0000 escapes dropped.
 */
Jsonb *
hs_parse_json(const char *data, size_t len, const char *endpoint, int *nul_removed)
{
	char	   *clean;
	JsonLexContext *lex;
	JsonParseErrorType result;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("HubSpot returned an empty body for %s", endpoint),
				 errhint("Nothing from this response was written; the next run retries it.")));

	if (memchr(data, '\0', len) != NULL ||
		!pg_verify_mbstr(PG_UTF8, data, (int) len, true))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("HubSpot returned a body for %s that is not valid UTF-8 text", endpoint),
				 errhint("Nothing from this response was written; the next run retries it.")));

	clean = strip_nul_escapes(data, len, nul_removed);

	/* HubSpot sends UTF-8; jsonb_in expects the database encoding. */
	clean = pg_any_to_server(clean, (int) strlen(clean), PG_UTF8);

	lex = makeJsonLexContextCstringLen(clean, (int) strlen(clean),
									   GetDatabaseEncoding(), true);
	result = pg_parse_json(lex, &nullSemAction);
	if (result != JSON_SUCCESS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("HubSpot returned invalid JSON for %s", endpoint),
				 errdetail_internal("%s Body starts with: %s",
									json_errdetail(result, lex),
									body_excerpt(data, len)),
				 errhint("Nothing from this response was written; the next run retries it.")));

	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(clean)));
}

/*
 * Parse a body that may or may not be JSON, such as an error response
 * that could be an HTML page.  Returns NULL instead of raising an error
 * when the body is not valid JSON.
 */
Jsonb *
hs_try_parse_json(const char *data, size_t len)
{
	char	   *clean;
	int			removed;
	JsonLexContext *lex;

	if (len == 0 || memchr(data, '\0', len) != NULL ||
		!pg_verify_mbstr(PG_UTF8, data, (int) len, true))
		return NULL;
	clean = strip_nul_escapes(data, len, &removed);
	if (GetDatabaseEncoding() != PG_UTF8)
		return NULL;
	lex = makeJsonLexContextCstringLen(clean, (int) strlen(clean), PG_UTF8, true);
	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
		return NULL;
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(clean)));
}

/* Value of key in an object container, or NULL when absent. */
JsonbValue *
hs_json_key(JsonbContainer *container, const char *key)
{
	if (container == NULL || !JsonContainerIsObject(container))
		return NULL;
	return getKeyJsonValueFromContainer(container, key, strlen(key), NULL);
}

/* Container of an object or array value, or NULL for any other value. */
JsonbContainer *
hs_json_container(JsonbValue *value)
{
	if (value == NULL || value->type != jbvBinary)
		return NULL;
	return value->val.binary.data;
}

/*
 * A scalar value as a palloc'd string: strings as they are, numbers in
 * their text form, NULL for JSON null, objects, arrays and missing values.
 */
char *
hs_json_string(JsonbValue *value)
{
	if (value == NULL)
		return NULL;
	switch (value->type)
	{
		case jbvString:
			return pnstrdup(value->val.string.val, value->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(value->val.numeric)));
		case jbvBool:
			return pstrdup(value->val.boolean ? "true" : "false");
		default:
			return NULL;
	}
}

/* Number of elements of an array container; 0 for anything else. */
int
hs_json_array_size(JsonbContainer *array)
{
	if (array == NULL || !JsonContainerIsArray(array))
		return 0;
	return JsonContainerSize(array);
}

/* Object element at index of an array, or NULL when it is not an object. */
JsonbContainer *
hs_json_object_at(JsonbContainer *array, int index)
{
	JsonbValue *element = getIthJsonbValueFromContainer(array, index);
	JsonbContainer *container = hs_json_container(element);

	if (container == NULL || !JsonContainerIsObject(container))
		return NULL;
	return container;
}

/* Append a JSON array of strings, each quoted with escape_json(). */
void
hs_append_json_string_array(StringInfo buf, char **items, int count)
{
	appendStringInfoChar(buf, '[');
	for (int i = 0; i < count; i++)
	{
		if (i > 0)
			appendStringInfoChar(buf, ',');
		escape_json(buf, items[i]);
	}
	appendStringInfoChar(buf, ']');
}
