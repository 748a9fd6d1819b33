#!/usr/bin/env python3
"""Local HubSpot-compatible CRM API server for hubsync's tests and demo.

The server imitates the parts of HubSpot's CRM v3 objects API and v4
associations API that hubsync uses, for contacts, companies, line items and
invoices. It generates deterministic portals ("demo", "small", "empty").

It reproduces the behaviour a sync engine must cope with:
- cursor paging on lists and offset paging on search, with the 10,000-result cap;
- ties in timestamps, ordered by a hash of the id rather than by id;
- a search index that lags behind writes;
- merges that change ids, and archiving that does not bump last-modified;
- rate limits with HubSpot's 429 bodies;
- injectable faults: error statuses, resets, hangs, truncated or malformed bodies.

A control API under /_mock/ (no auth, never rate limited) lets tests reset
data, change configuration, install faults, edit records and read request
statistics. test/hubspot_ctl.py is its command-line client.

Usage:
    python3 test/hubspot_server.py --port 0 --port-file /tmp/hs.port --portal small

The server binds 127.0.0.1 only and uses only the Python standard library.
"""

import argparse
import base64
import binascii
import gzip
import itertools
import json
import logging
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from bisect import bisect_left
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple, Optional
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

LOG = logging.getLogger("hubspot_server")

BIND_HOST = "127.0.0.1"
DEFAULT_PORT = 18080
DEFAULT_TOKEN = "pat-na1-hubsync-test"

# HubSpot's documented limits.
LIST_MAX_LIMIT = 100
LIST_HISTORY_MAX_LIMIT = 50
SEARCH_MAX_LIMIT = 200
SEARCH_MAX_RESULTS = 10_000
SEARCH_MAX_BODY_CHARS = 3000
SEARCH_MAX_GROUPS = 5
SEARCH_MAX_FILTERS_PER_GROUP = 6
SEARCH_MAX_FILTERS = 18
BATCH_READ_MAX_INPUTS = 100
ASSOC_BATCH_MAX_INPUTS = 1000
ASSOC_GET_MAX_LIMIT = 500

# Limits that --realistic turns on (a Professional private app).
REALISTIC_LIMITS = {"ten_secondly": 190, "search_per_second": 5, "daily": 625_000}

# Allowances reported in the rate-limit headers while a limit is off, so that
# clients pacing themselves by X-HubSpot-RateLimit-Remaining do not slow down.
UNLIMITED_TEN_SECONDLY = 100_000
UNLIMITED_DAILY = 100_000_000

SEARCH_CACHE_SIZE = 32
MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# Object types, properties and association types
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectType:
    name: str                 # plural path name, e.g. "line_items"
    singular: str             # singular path name, e.g. "line_item"
    type_id: str              # HubSpot objectTypeId, e.g. "0-8"
    label: str                # upper-case name used in HubSpot messages
    modified_property: str    # the last-modified property
    first_id: int             # first record id of this type
    default_properties: tuple  # returned when a request names no properties


OBJECT_TYPES = {
    t.name: t
    for t in (
        ObjectType("contacts", "contact", "0-1", "CONTACT", "lastmodifieddate",
                   2_000_001, ("email", "firstname", "lastname")),
        ObjectType("companies", "company", "0-2", "COMPANY", "hs_lastmodifieddate",
                   1_000_001, ("domain", "name")),
        ObjectType("line_items", "line_item", "0-8", "LINE_ITEM", "hs_lastmodifieddate",
                   4_000_001, ("amount", "price", "quantity")),
        ObjectType("invoices", "invoice", "0-53", "INVOICE", "hs_lastmodifieddate",
                   3_000_001, ()),
    )
}

TYPE_ALIASES = {
    alias: t.name
    for t in OBJECT_TYPES.values()
    for alias in (t.name, t.singular, t.type_id)
}

# Property name -> HubSpot property type. The system properties are added below.
PROPERTY_SCHEMAS = {
    "contacts": {
        "email": "string", "firstname": "string", "lastname": "string",
        "phone": "string", "company": "string", "jobtitle": "string",
        "lifecyclestage": "enumeration", "hs_merged_object_ids": "enumeration",
        "hs_analytics_num_visits": "number", "notes_last_updated": "datetime",
    },
    "companies": {
        "name": "string", "domain": "string", "phone": "string", "city": "string",
        "country": "string", "industry": "enumeration",
        "hs_merged_object_ids": "enumeration", "hs_analytics_num_page_views": "number",
    },
    "invoices": {
        "hs_number": "string", "hs_invoice_status": "enumeration",
        "hs_currency": "enumeration", "hs_amount_billed": "number",
        "hs_balance_due": "number", "hs_invoice_date": "datetime",
        "hs_due_date": "datetime", "hs_title": "string", "hs_comments": "string",
    },
    "line_items": {
        "name": "string", "hs_sku": "string", "quantity": "number", "price": "number",
        "amount": "number", "hs_product_id": "string", "discount": "number",
        "hs_line_item_currency_code": "enumeration",
    },
}

# Enumeration properties match case-sensitively in search filters; other
# string values match case-insensitively, as HubSpot documents.
ENUM_PROPERTIES = {
    "hs_invoice_status", "hs_currency", "lifecyclestage", "industry",
    "hs_line_item_currency_code",
}


def created_properties(otype):
    """Return the create-time property names of a type (invoices carry two)."""
    return ("createdate", "hs_createdate") if otype == "invoices" else ("createdate",)


def system_properties(otype):
    """Return the properties every record always has and every response includes."""
    return ("hs_object_id", "createdate", OBJECT_TYPES[otype].modified_property)


def read_only_properties(otype):
    return set(system_properties(otype)) | set(created_properties(otype)) | {
        "hs_merged_object_ids"}


def base_schema(otype):
    """Return the property schema of a type, system properties included."""
    schema = dict(PROPERTY_SCHEMAS[otype])
    schema["hs_object_id"] = "number"
    for name in created_properties(otype):
        schema[name] = "datetime"
    schema[OBJECT_TYPES[otype].modified_property] = "datetime"
    return schema


@dataclass(frozen=True)
class AssociationType:
    from_type: str
    to_type: str
    type_id: int
    category: str
    label: Optional[str]
    inverse_type_id: int
    v3_name: str              # the "type" string of v3 embedded associations


ASSOCIATION_TYPES = (
    AssociationType("invoices", "line_items", 409, "HUBSPOT_DEFINED", None, 410,
                    "invoice_to_line_item"),
    AssociationType("line_items", "invoices", 410, "HUBSPOT_DEFINED", None, 409,
                    "line_item_to_invoice"),
    AssociationType("invoices", "contacts", 177, "HUBSPOT_DEFINED", None, 178,
                    "invoice_to_contact"),
    AssociationType("contacts", "invoices", 178, "HUBSPOT_DEFINED", None, 177,
                    "contact_to_invoice"),
    AssociationType("invoices", "companies", 179, "HUBSPOT_DEFINED", None, 180,
                    "invoice_to_company"),
    AssociationType("companies", "invoices", 180, "HUBSPOT_DEFINED", None, 179,
                    "company_to_invoice"),
    AssociationType("contacts", "companies", 279, "HUBSPOT_DEFINED", None, 280,
                    "contact_to_company_unlabeled"),
    AssociationType("companies", "contacts", 280, "HUBSPOT_DEFINED", None, 279,
                    "company_to_contact_unlabeled"),
    AssociationType("contacts", "companies", 1, "HUBSPOT_DEFINED", "Primary", 2,
                    "contact_to_company"),
    AssociationType("companies", "contacts", 2, "HUBSPOT_DEFINED", "Primary", 1,
                    "company_to_contact"),
    AssociationType("contacts", "companies", 28, "USER_DEFINED", "Billing contact", 28,
                    "billing_contact"),
    AssociationType("companies", "contacts", 28, "USER_DEFINED", "Billing contact", 28,
                    "billing_contact"),
)

ASSOCIATION_INDEX = {(a.from_type, a.to_type, a.type_id): a for a in ASSOCIATION_TYPES}
ASSOCIATION_PAIRS = sorted({(a.from_type, a.to_type) for a in ASSOCIATION_TYPES})
# The unlabeled type of each pair, used by the v4 "default" association endpoint.
DEFAULT_ASSOCIATION = {
    (a.from_type, a.to_type): a.type_id
    for a in ASSOCIATION_TYPES
    if a.category == "HUBSPOT_DEFINED" and a.label is None
}
# A contact has at most one primary company.
PRIMARY_COMPANY_TYPE = 1
PRIMARY_CONTACT_TYPE = 2


def association_sort_key(atype):
    """Order type rows as HubSpot shows them: HubSpot-defined first, then by id."""
    return (atype.category != "HUBSPOT_DEFINED", atype.type_id)


def resolve_type(name):
    """Return the canonical plural name for a type alias, or None."""
    return TYPE_ALIASES.get(name.lower()) if name else None


# ---------------------------------------------------------------------------
# Small helpers: time, cursors, hashing, value conversion
# ---------------------------------------------------------------------------

def now_ms():
    return time.time_ns() // 1_000_000


def iso_from_ms(ms):
    """Format epoch milliseconds as HubSpot does: 2024-09-11T13:27:39.356Z."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def ms_from_date_value(value):
    """Parse a filter date value (epoch-ms string or ISO 8601) into epoch ms.

    Raises ValueError for anything else. A naive ISO value is taken as UTC.
    """
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


def tie_hash(record_id):
    """Return a fixed 64-bit mix of a record id (splitmix64 finaliser).

    Search orders records that tie on the sort property by this value, so a
    client cannot rely on id order within equal timestamps. It must not be
    Python's hash(), which is the identity for ints.
    """
    z = (record_id + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def encode_cursor(value):
    """Encode a cursor so clients treat it as opaque (HubSpot's is the next id)."""
    raw = f"hs:{value}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text):
    """Decode a cursor from encode_cursor; raise ValueError if it is not one."""
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError) as exc:
        raise ValueError(text) from exc
    if not raw.startswith("hs:"):
        raise ValueError(text)
    return int(raw[3:])


NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


@lru_cache(maxsize=65536)
def parse_number(text):
    """Return text as a float when it is a plain decimal number, else None."""
    if NUMBER_RE.fullmatch(text):
        return float(text)
    return None


def property_value_to_string(name, value):
    """Convert a written property value to HubSpot's string form.

    Raises ApiError for values that are not scalars.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise ApiError(400, "VALIDATION_ERROR",
                   f"Property values were not valid: {name} must be a string, "
                   f"number, boolean or null")


def has_value(value):
    """Return whether a property counts as set; HubSpot treats "" as unset."""
    return value is not None and value != ""


# ---------------------------------------------------------------------------
# Errors and responses
# ---------------------------------------------------------------------------

class ApiError(Exception):
    """An API error, sent to the client as HubSpot's standard error JSON."""

    def __init__(self, status, category, message, **extra):
        super().__init__(message)
        self.status = status
        self.category = category
        self.message = message
        self.extra = extra

    def body(self, correlation_id):
        body = {"status": "error", "message": self.message,
                "correlationId": correlation_id, "category": self.category}
        body.update(self.extra)
        return body


def not_found(otype, record_id):
    return ApiError(404, "OBJECT_NOT_FOUND",
                    "Object not found.  objectId are usually numeric.",
                    context={"id": [str(record_id)]})


def validation_error(message, **extra):
    return ApiError(400, "VALIDATION_ERROR", message, **extra)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=utf-8"
    headers: list = field(default_factory=list)
    # "send" writes the response; "truncate" writes half the body then closes;
    # "reset" closes the socket with an RST; "close" closes without a response.
    action: str = "send"
    # The JSON object behind body, kept so body faults can alter it.
    payload: object = None


JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_response(status, payload, headers=None):
    body = JSON_ENCODER.encode(payload).encode("utf-8") if payload is not None else b""
    return Response(status, body, headers=list(headers or []), payload=payload)


def empty_response(status):
    return Response(status, b"", content_type="")


# HubSpot-style categories and messages for injected error statuses.
FAULT_STATUS_ERRORS = {
    400: ("VALIDATION_ERROR", "Invalid input JSON on line 1, column 1: unexpected token"),
    401: ("INVALID_AUTHENTICATION", "The OAuth token used to make this call expired "
          "0 second(s) ago."),
    403: ("MISSING_SCOPES", "This app hasn't been granted all required scopes to make "
          "this call."),
    404: ("OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric."),
    409: ("CONFLICT", "Conflicting write in progress."),
    423: ("LOCKED", "The resource is locked; wait at least 2 seconds before retrying."),
    429: ("RATE_LIMITS", "You have reached your ten_secondly_rolling limit."),
    477: ("MIGRATION_IN_PROGRESS", "The portal is migrating between data centers."),
    500: ("INTERNAL_ERROR", "internal error"),
    502: ("BAD_GATEWAY", "Bad gateway: the upstream service did not respond in time."),
    503: ("SERVICE_UNAVAILABLE", "Service temporarily unavailable."),
    504: ("GATEWAY_TIMEOUT", "Gateway timeout: the request took too long to process."),
    524: ("TIMEOUT", "The origin did not answer within 100 seconds."),
}

RATE_LIMIT_BODIES = {
    "TEN_SECONDLY_ROLLING": {
        "message": "You have reached your ten_secondly_rolling limit.",
        "policyName": "TEN_SECONDLY_ROLLING",
    },
    "SECONDLY": {
        "message": "You have reached your secondly limit.",
        "policyName": "SECONDLY",
        "groupName": "publicapi:hapikey-secondly:12345",
    },
    "DAILY": {
        "message": "You have reached your daily limit.",
        "policyName": "DAILY",
    },
}

MISSING_AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 "
    "authentication and you can find more details in the HubSpot developer docs.")
WRONG_TOKEN_MESSAGE = "The OAuth token used to make this call expired 0 second(s) ago."

HTML_ERROR_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n")

MALFORMED_BODY = b'{"results": [{"id": "12", "properties": {oops <!-- upstream closed -->'


# ---------------------------------------------------------------------------
# Records and the data store
# ---------------------------------------------------------------------------

class RecordState(NamedTuple):
    """One immutable version of a record; props is never mutated once stored."""
    props: dict
    created_ms: int
    modified_ms: int
    archived_ms: Optional[int]


class Record:
    __slots__ = ("id", "state", "versions")

    def __init__(self, record_id, state):
        self.id = record_id
        self.state = state
        # (written_ms, state) pairs, oldest first; search reads the newest
        # version written at or before now - index_lag_ms.
        self.versions = []


def state_visible_at(record, visible_ms):
    """Return the record's version visible to search at visible_ms, or None."""
    versions = record.versions
    if versions[-1][0] <= visible_ms:
        return versions[-1][1]
    for written_ms, state in reversed(versions):
        if written_ms <= visible_ms:
            return state
    return None


class SearchCacheEntry(NamedTuple):
    generation: int
    visible_ms: int
    matches: list


class Store:
    """Records, merge aliases and associations of one portal.

    The caller holds MockApp.lock around every call. Every data mutation, from
    the public API or the control API, goes through the methods here.
    """

    def __init__(self, config):
        self.config = config
        self.records = {name: {} for name in OBJECT_TYPES}   # id -> Record, ascending
        self.ids = {name: [] for name in OBJECT_TYPES}       # ascending ids, for bisect
        self.aliases = {name: {} for name in OBJECT_TYPES}   # merged-away id -> id
        self.next_id = {t.name: t.first_id for t in OBJECT_TYPES.values()}
        self.schema = {name: base_schema(name) for name in OBJECT_TYPES}
        # (from_type, to_type) -> {from_id: {to_id: set of type ids}}
        self.links = {pair: {} for pair in ASSOCIATION_PAIRS}
        self.generation = {name: 0 for name in OBJECT_TYPES}
        self.last_write_ms = {name: 0 for name in OBJECT_TYPES}
        self.search_cache = OrderedDict()

    # -- building ----------------------------------------------------------

    def allocate_id(self, otype):
        record_id = self.next_id[otype]
        self.next_id[otype] += 1
        return record_id

    def make_props(self, otype, record_id, properties, created_ms, modified_ms):
        props = dict(properties)
        props["hs_object_id"] = str(record_id)
        for name in created_properties(otype):
            props[name] = iso_from_ms(created_ms)
        props[OBJECT_TYPES[otype].modified_property] = iso_from_ms(modified_ms)
        return props

    def insert_generated(self, otype, record_id, properties, created_ms, modified_ms):
        """Add a generated record, visible to search from the start."""
        props = self.make_props(otype, record_id, properties, created_ms, modified_ms)
        record = Record(record_id, RecordState(props, created_ms, modified_ms, None))
        record.versions.append((0, record.state))
        self.records[otype][record_id] = record
        self.ids[otype].append(record_id)
        self.next_id[otype] = max(self.next_id[otype], record_id + 1)
        return record

    def _publish(self, otype, record, state):
        """Make state the record's current version and keep what search needs."""
        written_ms = now_ms()
        record.state = state
        versions = record.versions
        versions.append((written_ms, state))
        lag = self.config["index_lag_ms"] or 0
        if lag <= 0:
            del versions[:-1]
        else:
            # Keep the newest version search can already see, and all later ones.
            cutoff = written_ms - lag
            keep_from = len(versions) - 1
            while keep_from > 0 and versions[keep_from][0] > cutoff:
                keep_from -= 1
            del versions[:keep_from]
        self.generation[otype] += 1
        self.last_write_ms[otype] = written_ms

    # -- lookups -----------------------------------------------------------

    def find(self, otype, record_id):
        """Return the record for an id (following merges), live or archived."""
        try:
            rid = int(str(record_id).strip())
        except ValueError:
            return None
        rid = self.aliases[otype].get(rid, rid)
        return self.records[otype].get(rid)

    def find_by_property(self, otype, name, value):
        """Return the first record whose property equals value (case-insensitive)."""
        wanted = str(value).casefold()
        for record in self.records[otype].values():
            current = record.state.props.get(name)
            if current is not None and current.casefold() == wanted:
                return record
        return None

    def lookup(self, otype, key, id_property=None, archived=False):
        """Return the record that a GET or batch read key names, or None."""
        if id_property and id_property != "hs_object_id":
            record = self.find_by_property(otype, id_property, key)
        else:
            record = self.find(otype, key)
        if record is None:
            return None
        if (record.state.archived_ms is not None) != archived:
            return None
        return record

    def live_record(self, otype, record_id):
        """Return the live record for an id or raise 404."""
        record = self.find(otype, record_id)
        if record is None or record.state.archived_ms is not None:
            raise not_found(otype, record_id)
        return record

    def is_live(self, otype, record_id):
        record = self.records[otype].get(record_id)
        return record is not None and record.state.archived_ms is None

    def list_page(self, otype, start_id, limit, archived):
        """Return (records, next_id) for a list page in ascending id order."""
        ids = self.ids[otype]
        records = self.records[otype]
        page = []
        for index in range(bisect_left(ids, start_id), len(ids)):
            record = records[ids[index]]
            if (record.state.archived_ms is not None) != archived:
                continue
            if len(page) == limit:
                return page, record.id
            page.append(record)
        return page, None

    # -- mutations ---------------------------------------------------------

    def create(self, otype, properties, created_ms=None, modified_ms=None):
        now = now_ms()
        modified = now if modified_ms is None else modified_ms
        created = min(now, modified) if created_ms is None else created_ms
        record_id = self.allocate_id(otype)
        props = self.make_props(otype, record_id, properties, created, modified)
        record = Record(record_id, RecordState(props, created, modified, None))
        self.records[otype][record_id] = record
        self.ids[otype].append(record_id)  # ids only grow, so the list stays sorted
        self._publish(otype, record, record.state)
        return record

    def update(self, otype, record_id, changes, modified_ms=None):
        """Apply property changes and bump last-modified (to now by default)."""
        record = self.live_record(otype, record_id)
        modified = now_ms() if modified_ms is None else modified_ms
        props = dict(record.state.props)
        props.update(changes)
        props[OBJECT_TYPES[otype].modified_property] = iso_from_ms(modified)
        state = RecordState(props, record.state.created_ms, modified, None)
        self._publish(otype, record, state)
        return record

    def archive(self, otype, record_id):
        """Archive a record; last-modified stays as it was, as in HubSpot."""
        record = self.find(otype, record_id)
        if record is None:
            raise not_found(otype, record_id)
        if record.state.archived_ms is None:
            self._publish(otype, record, record.state._replace(archived_ms=now_ms()))
        return record

    def restore(self, otype, record_id):
        """Restore an archived record and bump its last-modified to now."""
        record = self.find(otype, record_id)
        if record is None or record.state.archived_ms is None:
            raise ApiError(404, "OBJECT_NOT_FOUND",
                           f"No archived {otype} record with id {record_id}")
        modified = now_ms()
        props = dict(record.state.props)
        props[OBJECT_TYPES[otype].modified_property] = iso_from_ms(modified)
        self._publish(otype, record,
                      RecordState(props, record.state.created_ms, modified, None))
        return record

    def merge(self, otype, primary_id, secondary_id):
        """Merge two records into a new one, as HubSpot does for contacts and companies.

        The new record takes the primary's values where set, lists every absorbed
        id in hs_merged_object_ids and inherits both records' associations. Both
        old ids then resolve to it, and the old records leave every listing.
        """
        primary = self.live_record(otype, primary_id)
        secondary = self.live_record(otype, secondary_id)
        if primary is secondary:
            raise validation_error("Cannot merge an object with itself")

        props = {}
        for source in (secondary, primary):  # primary values win
            for name, value in source.state.props.items():
                if has_value(value):
                    props[name] = value
        merged_ids = {str(primary.id), str(secondary.id)}
        for source in (primary, secondary):
            previous = source.state.props.get("hs_merged_object_ids")
            if previous:
                merged_ids.update(part for part in previous.split(";") if part)
        for name in system_properties(otype) + created_properties(otype):
            props.pop(name, None)
        props["hs_merged_object_ids"] = ";".join(sorted(merged_ids, key=int))
        created = min(primary.state.created_ms, secondary.state.created_ms)
        merged = self.create(otype, props, created_ms=created)

        for from_type, to_type in ASSOCIATION_PAIRS:
            if from_type != otype:
                continue
            table = self.links[(from_type, to_type)]
            for source in (primary, secondary):
                for to_id, type_ids in sorted(table.get(source.id, {}).items()):
                    for type_id in sorted(type_ids):
                        # The primary keeps its primary company; the secondary's is dropped.
                        if (source is secondary and otype == "contacts"
                                and type_id == PRIMARY_COMPANY_TYPE
                                and self._has_type(otype, merged.id, to_type, type_id)):
                            continue
                        self.link(otype, merged.id, to_type, to_id, type_id)

        for source in (primary, secondary):
            self._remove_record(otype, source.id)
            self.aliases[otype][source.id] = merged.id
        for old_id, target in self.aliases[otype].items():
            if target in (primary.id, secondary.id):
                self.aliases[otype][old_id] = merged.id
        return merged

    def gdpr_delete(self, otype, record_id):
        """Delete a record for good: no list, archive, search or alias keeps it."""
        record = self.find(otype, record_id)
        if record is None:
            raise not_found(otype, record_id)
        self._remove_record(otype, record.id)
        aliases = self.aliases[otype]
        for old_id in [old for old, target in aliases.items() if target == record.id]:
            del aliases[old_id]

    def _remove_record(self, otype, record_id):
        for from_type, to_type in ASSOCIATION_PAIRS:
            if from_type == otype:
                for to_id in list(self.links[(from_type, to_type)].get(record_id, {})):
                    self.unlink(from_type, record_id, to_type, to_id)
        del self.records[otype][record_id]
        ids = self.ids[otype]
        del ids[bisect_left(ids, record_id)]
        self.generation[otype] += 1

    def bulk_stamp(self, otype, count, modified_ms, make_properties, spread_ms=0):
        """Stamp count records with last-modified times, creating any missing ones.

        Record i (from 0) gets modified_ms + i * spread_ms, so spread_ms 0 gives
        them all exactly one millisecond.  Live records are reused in ascending
        id order; make_properties(record_id) supplies the properties of records
        that have to be created.
        """
        reused = 0
        for record in list(self.records[otype].values()):
            if reused == count:
                break
            if record.state.archived_ms is None:
                self.update(otype, record.id, {}, modified_ms + reused * spread_ms)
                reused += 1
        created = 0
        while reused + created < count:
            stamp = modified_ms + (reused + created) * spread_ms
            properties = make_properties(self.next_id[otype])
            self.create(otype, properties, created_ms=min(now_ms(), stamp),
                        modified_ms=stamp)
            created += 1
        return reused, created

    # -- associations ------------------------------------------------------

    def association_type(self, from_type, to_type, type_id):
        atype = ASSOCIATION_INDEX.get((from_type, to_type, type_id))
        if atype is None:
            raise validation_error(
                f"Association type {type_id} is not defined from {from_type} to {to_type}")
        return atype

    def _has_type(self, from_type, from_id, to_type, type_id):
        targets = self.links[(from_type, to_type)].get(from_id, {})
        return any(type_id in type_ids for type_ids in targets.values())

    def link(self, from_type, from_id, to_type, to_id, type_id):
        """Add one association type row in both directions."""
        atype = self.association_type(from_type, to_type, type_id)
        if (from_type, type_id) == ("contacts", PRIMARY_COMPANY_TYPE):
            self._drop_primary_company(from_id, keep=to_id)
        elif (from_type, type_id) == ("companies", PRIMARY_CONTACT_TYPE):
            self._drop_primary_company(to_id, keep=from_id)
        forward = self.links[(from_type, to_type)].setdefault(from_id, {})
        forward.setdefault(to_id, set()).add(type_id)
        backward = self.links[(to_type, from_type)].setdefault(to_id, {})
        backward.setdefault(from_id, set()).add(atype.inverse_type_id)

    def _drop_primary_company(self, contact_id, keep):
        """Remove a contact's primary flag from every company except keep."""
        for company_id, type_ids in list(
                self.links[("contacts", "companies")].get(contact_id, {}).items()):
            if company_id != keep and PRIMARY_COMPANY_TYPE in type_ids:
                self.unlink("contacts", contact_id, "companies", company_id,
                            PRIMARY_COMPANY_TYPE)

    def unlink(self, from_type, from_id, to_type, to_id, type_id=None):
        """Remove one type row (or all rows when type_id is None), both directions."""
        forward = self.links[(from_type, to_type)].get(from_id, {})
        type_ids = forward.get(to_id)
        if not type_ids:
            return
        removed = set(type_ids) if type_id is None else {type_id} & type_ids
        inverse = {self.association_type(from_type, to_type, t).inverse_type_id
                   for t in removed}
        type_ids -= removed
        if not type_ids:
            del forward[to_id]
        backward = self.links[(to_type, from_type)].get(to_id, {})
        back_ids = backward.get(from_id, set())
        back_ids -= inverse
        if not back_ids:
            backward.pop(from_id, None)

    def associations(self, from_type, from_id, to_type):
        """Return [(to_id, [AssociationType])] ascending by to_id, live records only.

        Associations of archived records are kept (a restore brings them back)
        but hidden, on either end.
        """
        if (from_type, to_type) not in self.links or not self.is_live(from_type, from_id):
            return []
        targets = self.links[(from_type, to_type)].get(from_id, {})
        rows = []
        for to_id in sorted(targets):
            if not self.is_live(to_type, to_id):
                continue
            types = sorted((ASSOCIATION_INDEX[(from_type, to_type, t)]
                            for t in targets[to_id]), key=association_sort_key)
            rows.append((to_id, types))
        return rows

    # -- search ------------------------------------------------------------

    def search(self, otype, query, visible_ms):
        """Return the [(id, state)] matching a SearchQuery, in response order."""
        key = (otype, query.cache_key)
        generation = self.generation[otype]
        last_write = self.last_write_ms[otype]
        entry = self.search_cache.get(key)
        if entry is not None and entry.generation == generation and (
                entry.visible_ms == visible_ms
                or (entry.visible_ms >= last_write and visible_ms >= last_write)):
            self.search_cache.move_to_end(key)
            return entry.matches

        matches = []
        for record in self.records[otype].values():
            state = state_visible_at(record, visible_ms)
            if state is None or state.archived_ms is not None:
                continue
            if query.matches(record.id, state):
                matches.append((record.id, state))
        matches = query.order(matches)

        self.search_cache[key] = SearchCacheEntry(generation, visible_ms, matches)
        self.search_cache.move_to_end(key)
        while len(self.search_cache) > SEARCH_CACHE_SIZE:
            self.search_cache.popitem(last=False)
        return matches


# ---------------------------------------------------------------------------
# Search queries
# ---------------------------------------------------------------------------

SEARCH_OPERATORS = {
    "EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN",
    "HAS_PROPERTY", "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN",
}
TOKEN_RE = re.compile(r"\w+")


def property_accessor(otype, name):
    """Return (kind, getter) for a property; getter(record_id, state) -> value.

    kind is "id" (int), "date" (epoch ms int) or "text" (str or None).
    """
    if name == "hs_object_id":
        return "id", lambda rid, state: rid
    if name in created_properties(otype):
        return "date", lambda rid, state: state.created_ms
    if name == OBJECT_TYPES[otype].modified_property:
        return "date", lambda rid, state: state.modified_ms
    return "text", lambda rid, state: state.props.get(name)


def text_sort_key(value):
    number = parse_number(value)
    return (0, number, "") if number is not None else (1, 0.0, value.casefold())


class TextOperand:
    """A filter value for a text property, compared as HubSpot does.

    Numbers compare numerically when both sides parse; other strings compare
    case-insensitively, except enumeration values, which are case-sensitive.
    """

    def __init__(self, value, case_sensitive):
        self.raw = property_value_to_string("filter value", value)
        self.case_sensitive = case_sensitive
        self.number = parse_number(self.raw)
        self.text = self.raw if case_sensitive else self.raw.casefold()

    def compare(self, value):
        """Return -1, 0 or 1 as value is below, equal to or above this operand."""
        if self.number is not None:
            number = parse_number(value)
            if number is not None:
                return (number > self.number) - (number < self.number)
        text = value if self.case_sensitive else value.casefold()
        return (text > self.text) - (text < self.text)


def compile_filter(otype, spec):
    """Compile one search filter into a predicate(record_id, state) -> bool.

    Raises ApiError (400) for an invalid filter.
    """
    if not isinstance(spec, dict):
        raise validation_error("Each filter must be an object")
    name = spec.get("propertyName")
    operator = spec.get("operator")
    if not isinstance(name, str) or not name:
        raise validation_error("A filter is missing propertyName")
    if operator not in SEARCH_OPERATORS:
        raise validation_error(f"Unknown filter operator {operator!r} on {name}")
    kind, get = property_accessor(otype, name)

    if operator == "HAS_PROPERTY":
        return lambda rid, state: has_value(get(rid, state)) if kind == "text" else True
    if operator == "NOT_HAS_PROPERTY":
        return lambda rid, state: not has_value(get(rid, state)) if kind == "text" else False
    if operator in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
        contains = token_matcher(spec.get("value"), name)
        if kind != "text":
            contains_text = contains
            contains = lambda value: contains_text(str(value))  # noqa: E731
        if operator == "CONTAINS_TOKEN":
            return lambda rid, state: has_value(get(rid, state)) and contains(get(rid, state))
        return lambda rid, state: not (has_value(get(rid, state))
                                       and contains(get(rid, state)))

    def operand(value):
        if value is None:
            raise validation_error(f"Filter {operator} on {name} needs a value")
        if kind == "text":
            return TextOperand(value, name in ENUM_PROPERTIES)
        try:
            return ms_from_date_value(value) if kind == "date" else int(str(value))
        except ValueError as exc:
            raise validation_error(
                f"Invalid value {value!r} for {name} in a {operator} filter") from exc

    def compare(value, op):
        if kind == "text":
            return op.compare(value)
        return (value > op) - (value < op)

    if operator in ("IN", "NOT_IN"):
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise validation_error(f"Filter {operator} on {name} needs a values list")
        operands = [operand(value) for value in values]

        def is_in(rid, state):
            value = get(rid, state)
            if kind == "text" and not has_value(value):
                return False
            return any(compare(value, op) == 0 for op in operands)

        if operator == "IN":
            return is_in
        return lambda rid, state: not is_in(rid, state)

    if operator == "BETWEEN":
        low, high = operand(spec.get("value")), operand(spec.get("highValue"))

        def between(rid, state):
            value = get(rid, state)
            if kind == "text" and not has_value(value):
                return False
            return compare(value, low) >= 0 and compare(value, high) <= 0

        return between

    op = operand(spec.get("value"))
    accept = {
        "EQ": lambda c: c == 0, "NEQ": lambda c: c != 0,
        "LT": lambda c: c < 0, "LTE": lambda c: c <= 0,
        "GT": lambda c: c > 0, "GTE": lambda c: c >= 0,
    }[operator]
    # NOTE: NEQ matching records without a value is a guess; HubSpot does not document it.
    unset_result = operator == "NEQ"

    def compare_filter(rid, state):
        value = get(rid, state)
        if kind == "text" and not has_value(value):
            return unset_result
        return accept(compare(value, op))

    return compare_filter


def token_matcher(value, name):
    """Return a function that tests a text against a CONTAINS_TOKEN value.

    A value of word characters must equal one word of the text. A "*" in the
    value is a wildcard within a word. Any other value matches as a substring.
    NOTE: this approximates HubSpot's tokenizer, which is not documented.
    """
    if value is None or str(value) == "":
        raise validation_error(f"Filter CONTAINS_TOKEN on {name} needs a value")
    needle = str(value).casefold()
    if "*" in needle:
        pattern = re.compile(".*".join(re.escape(part) for part in needle.split("*")))
        return lambda text: (any(pattern.fullmatch(t) for t in TOKEN_RE.findall(text.casefold()))
                             or bool(pattern.fullmatch(text.casefold())))
    if TOKEN_RE.fullmatch(needle):
        return lambda text: needle in TOKEN_RE.findall(text.casefold())
    return lambda text: needle in text.casefold()


class SearchQuery:
    """A validated search request body."""

    def __init__(self, otype, body):
        self.otype = otype
        groups = body.get("filterGroups") or []
        if not isinstance(groups, list):
            raise validation_error("filterGroups must be a list")
        if len(groups) > SEARCH_MAX_GROUPS:
            raise validation_error(
                f"Too many filter groups: {len(groups)} (maximum {SEARCH_MAX_GROUPS})")
        self.groups = []
        total_filters = 0
        for group in groups:
            filters = group.get("filters", []) if isinstance(group, dict) else None
            if not isinstance(filters, list):
                raise validation_error("Each filter group needs a filters list")
            if len(filters) > SEARCH_MAX_FILTERS_PER_GROUP:
                raise validation_error(
                    f"Too many filters in a group: {len(filters)} "
                    f"(maximum {SEARCH_MAX_FILTERS_PER_GROUP})")
            total_filters += len(filters)
            self.groups.append([compile_filter(otype, f) for f in filters])
        if total_filters > SEARCH_MAX_FILTERS:
            raise validation_error(
                f"Too many filters: {total_filters} (maximum {SEARCH_MAX_FILTERS})")

        self.sort_name, self.descending = self._parse_sort(body.get("sorts"))
        self.query_text = body.get("query")
        if self.query_text is not None and not isinstance(self.query_text, str):
            raise validation_error("query must be a string")
        self.limit = self._parse_int(body.get("limit", 10), "limit")
        if not 0 <= self.limit <= SEARCH_MAX_LIMIT:
            raise validation_error(
                f"limit must be between 0 and {SEARCH_MAX_LIMIT}; got {self.limit}")
        after = body.get("after")
        self.after = 0 if after in (None, "") else self._parse_int(after, "after")
        if self.after < 0:
            raise validation_error(f"after must not be negative; got {self.after}")
        # HubSpot returns 400 for any page reaching past the 10,000th result.
        if self.after >= SEARCH_MAX_RESULTS or self.after + self.limit > SEARCH_MAX_RESULTS:
            raise validation_error(
                f"Search results are capped at {SEARCH_MAX_RESULTS}: after ({self.after}) "
                f"+ limit ({self.limit}) exceeds it. Narrow the filters instead.")
        properties = body.get("properties")
        if isinstance(properties, str):
            properties = [p for p in properties.split(",") if p]
        if properties is not None and not isinstance(properties, list):
            raise validation_error("properties must be a list of names")
        self.properties = properties
        self.cache_key = JSON_ENCODER.encode(
            [groups, [self.sort_name, self.descending], self.query_text])

    @staticmethod
    def _parse_int(value, name):
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise validation_error(f"{name} must be an integer; got {value!r}") from exc

    @staticmethod
    def _parse_sort(sorts):
        """Return (property, descending) of the first sort, or (None, False)."""
        if not sorts:
            return None, False
        if not isinstance(sorts, list):
            raise validation_error("sorts must be a list")
        first = sorts[0]  # HubSpot honours only the first sort
        if isinstance(first, str):
            return (first[1:], True) if first.startswith("-") else (first, False)
        if not isinstance(first, dict) or not first.get("propertyName"):
            raise validation_error("A sort needs a propertyName")
        direction = first.get("direction", "ASCENDING")
        if direction not in ("ASCENDING", "DESCENDING"):
            raise validation_error(f"Unknown sort direction {direction!r}")
        return first["propertyName"], direction == "DESCENDING"

    def matches(self, record_id, state):
        if self.groups and not any(
                all(predicate(record_id, state) for predicate in group)
                for group in self.groups):
            return False
        if self.query_text:
            needle = self.query_text.casefold()
            return any(isinstance(v, str) and needle in v.casefold()
                       for v in state.props.values())
        return True

    def order(self, matches):
        """Sort matches; ties on the sort property are ordered by tie_hash(id).

        Without a sort the matches keep creation order, which is id order.
        """
        if self.sort_name is None:
            return matches
        kind, get = property_accessor(self.otype, self.sort_name)
        matches.sort(key=lambda m: tie_hash(m[0]))
        if kind != "text":
            # Python's sort is stable with reverse=True too, so ties keep hash order.
            matches.sort(key=lambda m: get(m[0], m[1]), reverse=self.descending)
            return matches
        with_value = [m for m in matches if has_value(get(m[0], m[1]))]
        without_value = [m for m in matches if not has_value(get(m[0], m[1]))]
        with_value.sort(key=lambda m: text_sort_key(get(m[0], m[1])),
                        reverse=self.descending)
        return with_value + without_value  # records without a value come last


# ---------------------------------------------------------------------------
# Portal generation
# ---------------------------------------------------------------------------

class PortalSize(NamedTuple):
    companies: int
    contacts: int
    invoices: int
    max_line_items: int


PORTAL_SIZES = {
    "demo": PortalSize(600, 2000, 1124, 5),
    "small": PortalSize(12, 30, 20, 3),
    "empty": PortalSize(0, 0, 0, 0),
}

PORTAL_START_MS = int(datetime(2023, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
PORTAL_END_MS = int(datetime(2025, 6, 30, tzinfo=timezone.utc).timestamp() * 1000)
DAY_MS = 86_400_000

FIRST_NAMES = (
    "Alice", "Bruno", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines",
    "Jonas", "Kira", "Liam", "Maya", "Noah", "Olga", "Pavel", "Quinn", "Rosa",
    "Sven", "Tara", "Umar", "Vera", "Wes", "Yusuf", "Zara")
LAST_NAMES = (
    "Anders", "Brown", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Hughes", "Ito",
    "Jensen", "Khan", "Lopez", "Martin", "Nakamura", "Okafor", "Petrov", "Quist",
    "Rossi", "Schmidt", "Taylor", "Ueda", "Varga", "Walsh", "Young", "Zimmer")
COMPANY_FIRST_WORDS = (
    "Northwind", "Bluefin", "Granite", "Silverline", "Redwood", "Brightpath",
    "Cobalt", "Evergreen", "Helix", "Ironbark", "Juniper", "Keystone", "Lumen",
    "Meridian", "Nimbus", "Orchid", "Pinnacle", "Quartz", "Riverbend", "Summit",
    "Tidewater", "Umbra", "Vertex", "Willow")
COMPANY_SECOND_WORDS = (
    "Analytics", "Logistics", "Foods", "Systems", "Health", "Capital", "Robotics",
    "Media", "Energy", "Labs", "Outfitters", "Partners")
COMPANY_SUFFIXES = ("Inc", "LLC", "Ltd", "GmbH", "SA", "BV", "Co")
CITIES = (
    ("Boston", "United States"), ("Austin", "United States"), ("London", "United Kingdom"),
    ("Berlin", "Germany"), ("Toronto", "Canada"), ("Paris", "France"),
    ("Madrid", "Spain"), ("Sydney", "Australia"), ("Tokyo", "Japan"),
    ("Dublin", "Ireland"), ("Amsterdam", "Netherlands"))
INDUSTRIES = (
    "COMPUTER_SOFTWARE", "RETAIL", "FINANCIAL_SERVICES", "HOSPITAL_HEALTH_CARE",
    "LOGISTICS_AND_SUPPLY_CHAIN", "FOOD_PRODUCTION", "MARKETING_AND_ADVERTISING")
JOB_TITLES = (
    "CEO", "CFO", "Head of Sales", "Account Manager", "Engineer", "Buyer",
    "Office Manager", "Controller", "Marketing Lead", "Operations Director")
LIFECYCLE_STAGES = (
    ("subscriber", 5), ("lead", 20), ("marketingqualifiedlead", 10),
    ("salesqualifiedlead", 10), ("opportunity", 15), ("customer", 35),
    ("evangelist", 3), ("other", 2))
INVOICE_STATUSES = (("draft", 12), ("open", 23), ("paid", 55), ("voided", 10))
CURRENCIES = (("USD", 50), ("EUR", 20), ("GBP", 15), ("CAD", 10), ("JPY", 5))
PRODUCTS = (  # name, sku, unit price in cents
    ("Consulting hour", "SKU-CONS-01", 15000), ("Onboarding package", "SKU-ONB-02", 99000),
    ("Support plan (monthly)", "SKU-SUP-03", 4999), ("Widget", "SKU-WID-04", 1999),
    ("Gadget Pro", "SKU-GAD-05", 12950), ("Training seat", "SKU-TRN-06", 45000),
    ("Shipping", "SKU-SHP-07", 1250), ("Licence (annual)", "SKU-LIC-08", 120000))

LONG_COMMENT = ("Résumé of the work delivered this quarter. " * 200)[:5000]


def weighted_choice(rng, pairs):
    return rng.choices([value for value, _ in pairs], [weight for _, weight in pairs])[0]


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


def month_year(ms):
    """Format a month without strftime, whose month names depend on the locale."""
    moment = time.gmtime(ms // 1000)
    return f"{MONTHS[moment.tm_mon - 1]} {moment.tm_year}"


def money(cents):
    return f"{cents // 100}.{cents % 100:02d}"


class PortalBuilder:
    """Fill a Store with one deterministic portal (same name and seed, same data).

    Awkward values sit at fixed positions (counted in creation order) so tests
    can find them in both "demo" and "small".
    """

    MERGED_CONTACT_POSITION = 8
    MERGED_COMPANY_POSITION = 11

    def __init__(self, store, portal, seed):
        if portal not in PORTAL_SIZES:
            raise ValueError(f"unknown portal {portal!r}; use one of {sorted(PORTAL_SIZES)}")
        self.store = store
        self.size = PORTAL_SIZES[portal]
        self.rng = random.Random(f"hubspot-mock/{portal}/{seed}")
        self.company_ids = []
        self.company_names = []
        self.company_domains = []
        self.contact_ids = []
        self.primary_company = {}  # contact position -> company position

    def build(self):
        self.build_companies()
        self.build_contacts()
        self.build_invoices()

    # -- timestamps and ids ------------------------------------------------

    def creation_times(self, count, end_ms=PORTAL_END_MS):
        return sorted(self.rng.randint(PORTAL_START_MS, end_ms) for _ in range(count))

    def modification_times(self, created):
        """Spread last-modified times; a few dozen records share a ms with another."""
        rng = self.rng
        modified = [c if rng.random() < 0.15 else rng.randint(c, PORTAL_END_MS)
                    for c in created]
        count = len(modified)
        if count < 2:
            return modified
        for _ in range(max(1, count // 80)):
            a, b = rng.sample(range(count), 2)
            modified[a] = modified[b] = max(modified[a], modified[b])
        if count >= 100:
            a, b, c = rng.sample(range(count), 3)
            modified[a] = modified[b] = modified[c] = max(modified[a], modified[b],
                                                          modified[c])
        return modified

    def assign_ids(self, otype, count, merged_position):
        """Return (ids, aliases); the merged position absorbed two earlier ids."""
        ids, aliases = [], {}
        for position in range(count):
            if position == merged_position:
                aliases[position] = [self.store.allocate_id(otype),
                                     self.store.allocate_id(otype)]
            ids.append(self.store.allocate_id(otype))
        return ids, aliases

    def insert(self, otype, ids, merged, props_list, created, modified):
        for position, record_id in enumerate(ids):
            props = props_list[position]
            if position in merged:
                props["hs_merged_object_ids"] = ";".join(str(i) for i in merged[position])
                for old_id in merged[position]:
                    self.store.aliases[otype][old_id] = record_id
            self.store.insert_generated(otype, record_id, props, created[position],
                                        modified[position])

    # -- companies ---------------------------------------------------------

    def build_companies(self):
        rng, count = self.rng, self.size.companies
        names = [f"{a} {b} {s}" for a in COMPANY_FIRST_WORDS
                 for b in COMPANY_SECOND_WORDS for s in COMPANY_SUFFIXES]
        rng.shuffle(names)
        props_list = []
        for position in range(count):
            name = names[position]
            city, country = rng.choice(CITIES)
            props = {"name": name, "domain": slug(name) + ".example", "city": city,
                     "country": country,
                     "hs_analytics_num_page_views": str(rng.randint(0, 5000))}
            if rng.random() < 0.9:
                props["phone"] = f"+1 555 {rng.randint(100, 999)} {rng.randint(0, 9999):04d}"
            if rng.random() < 0.85:
                props["industry"] = rng.choice(INDUSTRIES)
            props_list.append(props)
        self.apply_company_oddities(props_list)
        created = self.creation_times(count)
        modified = self.modification_times(created)
        ids, merged = self.assign_ids("companies", count, self.MERGED_COMPANY_POSITION)
        self.insert("companies", ids, merged, props_list, created, modified)
        self.company_ids = ids
        self.company_names = [p.get("name") for p in props_list]
        self.company_domains = [p.get("domain") or "example.com" for p in props_list]

    @staticmethod
    def apply_company_oddities(props_list):
        oddities = {
            1: {"name": '"Big" Co', "domain": "big-co.example"},
            2: {"name": "Müller & Söhne AG", "city": "São Paulo", "country": "Brazil"},
            3: {"city": "Łódź", "country": "Poland"},
            4: {"name": "Rocket 🚀 Labs", "domain": "rocket-labs.example"},
            5: {"name": "Acme Corporation", "domain": "acme.example"},
            6: {"name": "Back\\Slash Systems", "domain": "backslash.example"},
            7: {"domain": ""},          # empty string, not null
            8: {"phone": None},         # stored null
            9: {"name": "Acme Corporation", "domain": "acme-eu.example"},  # same name as 5
        }
        for position, changes in oddities.items():
            if position < len(props_list):
                props_list[position].update(changes)
        if len(props_list) > 10:
            props_list[10].pop("phone", None)  # absent

    # -- contacts ----------------------------------------------------------

    def company_positions_for_contact(self, position):
        """Return the company positions of a contact, the primary one first."""
        rng, companies = self.rng, self.size.companies
        if companies == 0:
            return []
        roll = rng.random()
        if position == 9:
            return []  # a contact without a company
        two_companies = position == 12 or (position > 12 and roll < 0.04)
        if two_companies and companies > 1:
            first = rng.randrange(companies)
            second = (first + 1 + rng.randrange(companies - 1)) % companies
            return [first, second]
        # Position 10 carries a "Billing contact" label, so it needs a company.
        if position > 12 and roll < 0.09:
            return []
        return [rng.randrange(companies)]

    def build_contacts(self):
        rng, count = self.rng, self.size.contacts
        props_list, companies_of = [], []
        emails = set()

        for position in range(count):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            company_positions = self.company_positions_for_contact(position)
            companies_of.append(company_positions)
            domain = (self.company_domains[company_positions[0]]
                      if company_positions else "example.com")
            email = f"{first}.{last}@{domain}".lower()
            if email in emails:
                email = f"{first}.{last}{position}@{domain}".lower()
            emails.add(email)
            props = {"email": email, "firstname": first, "lastname": last,
                     "jobtitle": rng.choice(JOB_TITLES),
                     "lifecyclestage": weighted_choice(rng, LIFECYCLE_STAGES),
                     "hs_analytics_num_visits": str(rng.randint(0, 300))}
            if company_positions:
                props["company"] = self.company_names[company_positions[0]]
            if rng.random() < 0.8:
                props["phone"] = f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"
            props_list.append(props)
        self.apply_contact_oddities(props_list)

        created = self.creation_times(count)
        modified = self.modification_times(created)
        for position in range(count):
            if rng.random() < 0.6:
                visited = rng.randint(created[position], modified[position])
                props_list[position]["notes_last_updated"] = iso_from_ms(visited)

        ids, merged = self.assign_ids("contacts", count, self.MERGED_CONTACT_POSITION)
        self.insert("contacts", ids, merged, props_list, created, modified)
        self.contact_ids = ids
        self.link_contacts_to_companies(companies_of)

    @staticmethod
    def apply_contact_oddities(props_list):
        oddities = {
            0: {"firstname": "Zoë", "lastname": "Müller", "email": "zoe.muller@example.com"},
            1: {"firstname": "Seán", "lastname": "O'Brien", "email": "sean.obrien@example.com"},
            3: {"jobtitle": 'Head of "Growth" 🚀'},
            4: {"phone": ""},           # empty string, not null
            5: {"phone": None},         # stored null
            7: {"jobtitle": "C:\\Users\\admin\\sales"},
        }
        for position, changes in oddities.items():
            if position < len(props_list):
                props_list[position].update(changes)
        if len(props_list) > 6:
            props_list[2].pop("email", None)  # a contact without email
            props_list[6].pop("phone", None)  # absent

    def link_contacts_to_companies(self, companies_of):
        store = self.store
        for position, company_positions in enumerate(companies_of):
            contact_id = self.contact_ids[position]
            for rank, company_position in enumerate(company_positions):
                company_id = self.company_ids[company_position]
                store.link("contacts", contact_id, "companies", company_id, 279)
                if rank == 0:
                    store.link("contacts", contact_id, "companies", company_id,
                               PRIMARY_COMPANY_TYPE)
                    self.primary_company[position] = company_position
            # A handful of pairs also carry the user-defined "Billing contact" label.
            if company_positions and (position % 333 == 10 or position == 12):
                company_id = self.company_ids[company_positions[-1]]
                store.link("contacts", contact_id, "companies", company_id, 28)

    # -- invoices and line items -------------------------------------------

    def build_invoices(self):
        rng, count = self.rng, self.size.invoices
        created = self.creation_times(count, end_ms=PORTAL_END_MS - 60_000)
        modified = self.modification_times(created)
        ids, _ = self.assign_ids("invoices", count, merged_position=None)
        line_items = []  # (created_ms, invoice position, props)
        props_list, links = [], []
        for position in range(count):
            status = weighted_choice(rng, INVOICE_STATUSES)
            currency = weighted_choice(rng, CURRENCIES)
            lines = self.invoice_lines(position, currency, created[position])
            line_items.extend(line[:3] for line in lines)
            billed = sum(line[3] for line in lines)
            props_list.append(self.invoice_props(position, status, currency, billed,
                                                 created[position]))
            links.append(self.invoice_parties(status))
        if count > 2:
            props_list[2]["hs_number"] = props_list[1]["hs_number"]  # shared number
        for position in range(count):
            props = props_list[position]
            self.store.insert_generated("invoices", ids[position], props,
                                        created[position], modified[position])
        self.insert_line_items(line_items, ids)
        for position, (contact_position, company_position) in enumerate(links):
            if contact_position is not None:
                self.store.link("invoices", ids[position], "contacts",
                                self.contact_ids[contact_position], 177)
            if company_position is not None:
                self.store.link("invoices", ids[position], "companies",
                                self.company_ids[company_position], 179)

    def invoice_lines(self, position, currency, invoice_created):
        """Return [(created_ms, invoice position, props, amount in cents)]."""
        rng = self.rng
        lines = []
        line_created = invoice_created
        for index in range(rng.randint(1, self.size.max_line_items)):
            product = rng.randrange(len(PRODUCTS))
            name, sku, price_cents = PRODUCTS[product]
            quantity = rng.randint(1, 10)
            if position == 0 and index == 0:
                quantity = 0  # a line item with quantity "0"
            if position == 3 and index == 0:
                name = 'Café crème – 12" tin'
            line_created += rng.randint(200, 4000)
            props = {
                "name": name, "hs_sku": sku, "quantity": str(quantity),
                "price": money(price_cents), "amount": money(quantity * price_cents),
                "hs_product_id": str(9101 + product),
                "discount": "5.00" if rng.random() < 0.2 else "0",
                "hs_line_item_currency_code": currency,
            }
            lines.append((line_created, position, props, quantity * price_cents))
        return lines

    def invoice_props(self, position, status, currency, billed_cents, created_ms):
        rng = self.rng
        invoice_day = created_ms - created_ms % DAY_MS
        due_day = invoice_day + rng.choice((14, 30, 45)) * DAY_MS
        if status in ("paid", "voided"):
            balance = "0"
        elif status == "open" and rng.random() < 0.3:
            balance = money(billed_cents // 2)
        else:
            balance = money(billed_cents)

        props = {
            "hs_number": f"INV-{1000 + position:06d}",
            "hs_invoice_status": status, "hs_currency": currency,
            "hs_amount_billed": money(billed_cents), "hs_balance_due": balance,
            "hs_invoice_date": iso_from_ms(invoice_day),
            "hs_due_date": iso_from_ms(due_day),
            "hs_title": f"Invoice {month_year(created_ms)}",
        }
        if rng.random() < 0.5:
            props["hs_comments"] = "Thank you for your business."

        # Sloppy dates: epoch seconds and epoch ms strings instead of ISO.
        if position == 4 or position % 211 == 50:
            props["hs_invoice_date"] = str(invoice_day // 1000)
        if position == 5 or position % 223 == 60:
            props["hs_due_date"] = str(due_day)

        fixed = {
            0: {"hs_comments": LONG_COMMENT},
            3: {"hs_title": 'Rush order 🚀 for "Big" Co – O\'Brien'},
            6: {"hs_comments": "Path C:\\invoices\\2024\\\nline two\ttabbed"},
            7: {"hs_comments": ""},
        }
        props.update(fixed.get(position, {}))
        return props

    def invoice_parties(self, status):
        """Return (contact position, company position) for an invoice; drafts may lack them."""
        rng = self.rng
        if not self.contact_ids:
            return None, None
        if status == "draft" and rng.random() < 0.5:
            return None, None
        contact_position = rng.randrange(len(self.contact_ids))
        company_position = self.primary_company.get(contact_position)
        if company_position is None and status != "draft" and self.company_ids \
                and rng.random() < 0.7:
            company_position = rng.randrange(len(self.company_ids))
        return contact_position, company_position

    def insert_line_items(self, line_items, invoice_ids):
        line_items.sort(key=lambda item: item[0])
        created = [item[0] for item in line_items]
        modified = self.modification_times(created)
        for index, (created_ms, invoice_position, props) in enumerate(line_items):
            record_id = self.store.allocate_id("line_items")
            self.store.insert_generated("line_items", record_id, props, created_ms,
                                        modified[index])
            self.store.link("invoices", invoice_ids[invoice_position], "line_items",
                            record_id, 409)


def bulk_properties(otype, record_id):
    """Return plain properties for records that bulk_stamp has to create."""
    if otype == "contacts":
        return {"email": f"bulk{record_id}@example.com", "firstname": "Bulk",
                "lastname": f"Contact {record_id}", "lifecyclestage": "lead"}
    if otype == "companies":
        return {"name": f"Bulk Company {record_id}", "domain": f"bulk-{record_id}.example"}
    if otype == "invoices":
        return {"hs_number": f"INV-B{record_id}", "hs_invoice_status": "draft",
                "hs_currency": "USD", "hs_amount_billed": "0.00", "hs_balance_due": "0.00"}
    return {"name": "Bulk item", "quantity": "1", "price": "1.00", "amount": "1.00",
            "hs_line_item_currency_code": "USD"}


def build_store(config, portal, seed):
    store = Store(config)
    PortalBuilder(store, portal, seed).build()
    return store


# ---------------------------------------------------------------------------
# Rate limits, faults and statistics
# ---------------------------------------------------------------------------

class RateLimiter:
    """Rolling windows for HubSpot's ten-secondly and search limits, plus a daily counter."""

    def __init__(self):
        self.ten_second_window = deque()   # monotonic times of admitted non-search requests
        self.search_window = deque()       # monotonic times of admitted search requests
        self.daily_used = 0

    @staticmethod
    def _prune(window, now, span):
        while window and window[0] <= now - span:
            window.popleft()

    def admit(self, is_search, config):
        """Count a request; return the exceeded policy name, or None if admitted."""
        now = time.monotonic()
        self._prune(self.ten_second_window, now, 10.0)
        self._prune(self.search_window, now, 1.0)
        if config["daily"] is not None and self.daily_used >= config["daily"]:
            return "DAILY"
        if is_search:
            window, limit, policy = self.search_window, config["search_per_second"], "SECONDLY"
        else:
            window, limit, policy = (self.ten_second_window, config["ten_secondly"],
                                     "TEN_SECONDLY_ROLLING")
        if limit is not None and len(window) >= limit:
            return policy
        window.append(now)
        self.daily_used += 1
        return None

    def headers(self, config):
        """Return the X-HubSpot-RateLimit-* headers of a non-search response."""
        self._prune(self.ten_second_window, time.monotonic(), 10.0)
        maximum = config["ten_secondly"]
        maximum = UNLIMITED_TEN_SECONDLY if maximum is None else maximum
        daily = config["daily"]
        daily = UNLIMITED_DAILY if daily is None else daily
        return [
            ("X-HubSpot-RateLimit-Max", str(maximum)),
            ("X-HubSpot-RateLimit-Remaining",
             str(max(0, maximum - len(self.ten_second_window)))),
            ("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
            ("X-HubSpot-RateLimit-Daily", str(daily)),
            ("X-HubSpot-RateLimit-Daily-Remaining", str(max(0, daily - self.daily_used))),
        ]


FAULT_KINDS = {"status", "html", "reset", "hang", "truncate", "malformed", "nul", "rate429"}
# Faults whose response replaces the request's; the endpoint does not run.
RESPONSE_FAULTS = {"status", "html", "reset", "rate429"}


class Fault:
    """One entry of the fault list installed through /_mock/faults."""

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("each fault must be an object")
        self.kind = spec.get("kind")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of "
                             f"{sorted(FAULT_KINDS)}")
        try:
            self.path = re.compile(spec.get("path", ""))
        except re.error as exc:
            raise ValueError(f"invalid fault path regex {spec.get('path')!r}: {exc}") from exc
        self.method = spec.get("method")
        self.method = self.method.upper() if self.method else None
        self.skip = int(spec.get("skip", 0))
        self.count = int(spec.get("count", 1))   # a negative count never runs out
        self.status = int(spec.get("status", 502 if self.kind == "html" else 503))
        self.ms = int(spec.get("ms", 5000))
        self.policy = spec.get("policy", "TEN_SECONDLY_ROLLING")
        if self.kind == "rate429" and self.policy not in RATE_LIMIT_BODIES:
            raise ValueError(f"unknown rate429 policy {self.policy!r}; use one of "
                             f"{sorted(RATE_LIMIT_BODIES)}")
        self.message = spec.get("message")
        self.retry_after = spec.get("retry_after")
        self.matched = 0
        self.injected = 0

    def matches(self, method, path):
        return (self.method is None or self.method == method) and bool(self.path.search(path))

    def describe(self):
        return {"kind": self.kind, "path": self.path.pattern, "method": self.method,
                "skip": self.skip, "count": self.count, "matched": self.matched,
                "injected": self.injected}


def pick_fault(faults, method, path):
    """Return the fault to inject into this request, or None.

    Every matching fault counts the request towards its skip, whichever fault
    fires, so "skip": N always means the first N requests to that path.
    """
    chosen = None
    for fault in faults:
        if not fault.matches(method, path):
            continue
        fault.matched += 1
        exhausted = 0 <= fault.count <= fault.injected
        if chosen is None and fault.matched > fault.skip and not exhausted:
            chosen = fault
    if chosen is not None:
        chosen.injected += 1
    return chosen


class Route(NamedTuple):
    kind: str
    otype: Optional[str] = None
    record_id: Optional[str] = None
    to_type: Optional[str] = None
    to_id: Optional[str] = None


def by_method(method, kinds, otype=None, **fields):
    kind = kinds.get(method)
    if kind is None:
        return Route("method_not_allowed")
    return Route(kind, otype, **fields)


def match_route(method, path):
    """Map a request path to a Route; unknown object types give kind "bad_type"."""
    parts = [unquote(part) for part in path.strip("/").split("/")]
    prefix, rest = parts[:3], parts[3:]

    if prefix == ["crm", "v3", "objects"] and rest:
        otype = resolve_type(rest[0])
        if otype is None:
            return Route("bad_type", record_id=rest[0])
        tail = rest[1:]
        if not tail:
            return by_method(method, {"GET": "list", "POST": "create"}, otype)
        if tail == ["search"] and method == "POST":
            return Route("search", otype)
        if tail == ["batch", "read"]:
            return by_method(method, {"POST": "batch_read"}, otype)
        if tail == ["merge"] and method == "POST":
            return Route("merge", otype)
        if tail == ["gdpr-delete"] and method == "POST":
            return Route("gdpr_delete", otype)
        if len(tail) == 1:
            return by_method(method, {"GET": "get", "PATCH": "update", "DELETE": "archive"},
                             otype, record_id=tail[0])

    if prefix == ["crm", "v4", "objects"] and len(rest) >= 4 and rest[2] == "associations":
        otype = resolve_type(rest[0])
        record_id, tail = rest[1], rest[3:]
        if tail and tail[0] == "default" and len(tail) == 3:
            to_type = resolve_type(tail[1])
            if otype is None or to_type is None:
                return Route("bad_type", record_id=rest[0] if otype is None else tail[1])
            return by_method(method, {"PUT": "assoc_put_default"}, otype,
                             record_id=record_id, to_type=to_type, to_id=tail[2])
        to_type = resolve_type(tail[0])
        if otype is None or to_type is None:
            return Route("bad_type", record_id=rest[0] if otype is None else tail[0])
        if len(tail) == 1:
            return by_method(method, {"GET": "assoc_get"}, otype, record_id=record_id,
                             to_type=to_type)
        if len(tail) == 2:
            return by_method(method, {"PUT": "assoc_put", "DELETE": "assoc_delete"}, otype,
                             record_id=record_id, to_type=to_type, to_id=tail[1])

    if prefix == ["crm", "v4", "associations"] and len(rest) == 4 \
            and rest[2:] == ["batch", "read"]:
        otype, to_type = resolve_type(rest[0]), resolve_type(rest[1])
        if otype is None or to_type is None:
            return Route("bad_type", record_id=rest[0] if otype is None else rest[1])
        return by_method(method, {"POST": "assoc_batch"}, otype, to_type=to_type)

    if prefix == ["crm", "v3", "properties"] and len(rest) == 1:
        otype = resolve_type(rest[0])
        if otype is None:
            return Route("bad_type", record_id=rest[0])
        return by_method(method, {"GET": "properties"}, otype)

    return Route("unknown")


READ_KINDS = {"list", "get", "batch_read", "search", "assoc_get", "assoc_batch",
              "properties"}


def required_scopes(route):
    """Return the granular scopes a route needs."""
    access = "read" if route.kind in READ_KINDS else "write"
    types = [t for t in (route.otype, route.to_type) if t]
    return [f"crm.objects.{t}.{access}" for t in types]


def first_value(query, name, default=None):
    values = query.get(name)
    return values[0] if values else default


def list_values(query, name):
    """Return a list parameter given as repeats and/or comma-separated values."""
    result = []
    for value in query.get(name, []):
        result.extend(part.strip() for part in value.split(",") if part.strip())
    return result


def parse_bool(query, name):
    value = first_value(query, name, "false").lower()
    if value not in ("true", "false"):
        raise validation_error(f"{name} must be true or false; got {value!r}")
    return value == "true"


def parse_json_body(body):
    """Parse a request body as JSON (empty means {}); raise ApiError if invalid."""
    if not body.strip():
        return {}
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise validation_error(f"Invalid input JSON: {exc}") from exc


def describe_request(route, query, body):
    """Return the statistics fields of an API request, without validating it."""
    info = {"type": route.otype, "kind": route.kind, "after": first_value(query, "after"),
            "limit": first_value(query, "limit"), "filters": None, "sort": None}
    if info["limit"] is not None:
        try:
            info["limit"] = int(info["limit"])
        except ValueError:
            pass
    if route.kind in ("search", "batch_read", "assoc_batch"):
        try:
            payload = json.loads(body.decode("utf-8")) if body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        if isinstance(payload, dict):
            if route.kind == "search":
                info["after"] = payload.get("after")
                info["limit"] = payload.get("limit")
                info["filters"] = payload.get("filterGroups")
                sorts = payload.get("sorts")
                info["sort"] = sorts[0] if isinstance(sorts, list) and sorts else None
                info["properties"] = payload.get("properties")
            else:
                inputs = payload.get("inputs")
                info["inputs"] = len(inputs) if isinstance(inputs, list) else None
                if route.kind == "batch_read":
                    info["properties"] = payload.get("properties")
    return info


# ---------------------------------------------------------------------------
# The application: API endpoints, control endpoints, request bookkeeping
# ---------------------------------------------------------------------------

CONFIG_KEYS = {
    "index_lag_ms", "ten_secondly", "search_per_second", "daily", "retry_after_seconds",
    "list_limit_over_max", "assoc_page_size", "missing_scopes", "token",
}


def default_config(token, realistic):
    config = {
        "index_lag_ms": 0, "ten_secondly": None, "search_per_second": None, "daily": None,
        "retry_after_seconds": None, "list_limit_over_max": "cap", "assoc_page_size": 500,
        "missing_scopes": [], "token": token,
    }
    if realistic:
        config.update(REALISTIC_LIMITS)
    return config


def validate_config_change(changes):
    """Raise ValueError unless every key and value of a config change is valid."""
    unknown = set(changes) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; use {sorted(CONFIG_KEYS)}")
    for key in ("index_lag_ms", "ten_secondly", "search_per_second", "daily",
                "retry_after_seconds"):
        value = changes.get(key)
        if key in changes and value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{key} must be a non-negative integer or null; got {value!r}")
    if "list_limit_over_max" in changes and changes["list_limit_over_max"] not in (
            "cap", "error"):
        raise ValueError("list_limit_over_max must be \"cap\" or \"error\"")
    if "assoc_page_size" in changes:
        value = changes["assoc_page_size"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"assoc_page_size must be a positive integer; got {value!r}")
    if "missing_scopes" in changes and not (
            isinstance(changes["missing_scopes"], list)
            and all(isinstance(s, str) for s in changes["missing_scopes"])):
        raise ValueError("missing_scopes must be a list of scope names")
    if "token" in changes and (not isinstance(changes["token"], str) or not changes["token"]):
        raise ValueError("token must be a non-empty string")


class ControlError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class MockApp:
    """All server state behind one lock, and the request handling on top of it."""

    def __init__(self, portal="demo", seed=1, token=DEFAULT_TOKEN, realistic=False,
                 log_path=None):
        self.lock = threading.RLock()
        self.startup_portal = portal
        self.startup_seed = seed
        self.startup_token = token
        self.realistic = realistic
        self.port = None
        self.request_log = None
        if log_path:
            self.request_log = open(log_path, "a", encoding="utf-8", buffering=1)
        self.request_log_lock = threading.Lock()
        self.hang_release = threading.Event()
        self.reset(portal, seed)

    # -- state -------------------------------------------------------------

    def reset(self, portal, seed):
        """Load fresh data and clear config, faults, schedules and statistics."""
        with self.lock:
            self.config = default_config(self.startup_token, self.realistic)
            self.store = build_store(self.config, portal, seed)
            self.portal = portal
            self.seed = seed
            self.faults = []
            self.release_hangs()
            self.search_schedules = []
            self.limiter = RateLimiter()
            self.clear_stats()

    def release_hangs(self):
        """Wake every request stuck in a "hang" fault."""
        self.hang_release.set()
        self.hang_release = threading.Event()

    def clear_stats(self):
        self.stats_requests = []
        self.stats_counts = {}
        self.stats_rate_limited = {}
        self.max_search_after = 0

    def close(self):
        self.release_hangs()
        if self.request_log:
            self.request_log.close()
            self.request_log = None

    # -- entry point -------------------------------------------------------

    def handle(self, method, target, body, headers):
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/_mock" or url.path.startswith("/_mock/"):
            return self.handle_control(method, url.path, query, body)
        return self.handle_api(method, url.path, query, body, headers)

    def log_request(self, method, target, status, elapsed_ms):
        """Write one request line; the query is kept but never any header."""
        if self.request_log is None:
            return
        stamp = iso_from_ms(now_ms())
        line = f"{stamp} {method} {target} {status} {elapsed_ms:.1f}ms\n"
        with self.request_log_lock:
            if self.request_log is not None:
                self.request_log.write(line)

    # -- public API --------------------------------------------------------

    def handle_api(self, method, path, query, body, headers):
        correlation_id = str(uuid.uuid4())
        route = match_route(method, path)
        is_search = route.kind == "search"
        info = describe_request(route, query, body)
        info.update(method=method, path=path,
                    connection=headers.get("X-Mock-Connection"),
                    gzip=accepts_gzip(headers.get("Accept-Encoding")))

        with self.lock:
            fault = pick_fault(self.faults, method, path)
            release = self.hang_release
        if fault is not None and fault.kind == "hang":
            # Sleep without the lock so other requests go on.
            if fault.ms > 0:
                release.wait(fault.ms / 1000)
            else:
                release.wait()
                response = Response(0, action="close")
                with self.lock:
                    self.record_stats(info, response)
                return response

        with self.lock:
            if fault is not None and fault.kind in RESPONSE_FAULTS:
                response = self.fault_response(fault, correlation_id)
            else:
                response = self.dispatch(route, method, query, body, headers,
                                         correlation_id)
                if fault is None and is_search and response.status == 200:
                    self.run_search_schedules(route.otype)
            if fault is not None and fault.kind in ("truncate", "malformed", "nul"):
                response = self.apply_body_fault(fault, response)
            if response.action != "reset":
                response.headers.append(("X-HubSpot-Correlation-Id", correlation_id))
                if not is_search:
                    response.headers.extend(self.limiter.headers(self.config))
            self.record_stats(info, response)
        return response

    def dispatch(self, route, method, query, body, headers, correlation_id):
        """Check auth, limits and scopes, then run the endpoint."""
        try:
            self.check_auth(headers)
            policy = self.limiter.admit(route.kind == "search", self.config)
            if policy is not None:
                return self.rate_limited_response(policy, correlation_id)
            self.check_scopes(route)
            handler = getattr(self, "api_" + route.kind)
            return handler(route, query, body)
        except ApiError as err:
            return json_response(err.status, err.body(correlation_id))

    def check_auth(self, headers):
        authorization = headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "INVALID_AUTHENTICATION", MISSING_AUTH_MESSAGE)
        if token.strip() != self.config["token"]:
            raise ApiError(401, "INVALID_AUTHENTICATION", WRONG_TOKEN_MESSAGE)

    def check_scopes(self, route):
        missing = [s for s in required_scopes(route) if s in self.config["missing_scopes"]]
        if missing:
            raise ApiError(
                403, "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call. "
                "Read more about required scopes in the HubSpot developer docs.",
                errors=[{"message": "One or more of the following scopes are required.",
                         "context": {"requiredGranularScopes": missing}}],
                links={})

    def rate_limited_response(self, policy, correlation_id):
        payload = {"status": "error", "errorType": "RATE_LIMIT",
                   "correlationId": correlation_id, "requestId": str(uuid.uuid4())}
        payload.update(RATE_LIMIT_BODIES[policy])
        headers = []
        if self.config["retry_after_seconds"] is not None:
            headers.append(("Retry-After", str(self.config["retry_after_seconds"])))
        return json_response(429, payload, headers)

    # -- faults ------------------------------------------------------------

    def fault_response(self, fault, correlation_id):
        if fault.kind == "reset":
            return Response(0, action="reset")
        if fault.kind == "rate429":
            return self.rate_limited_response(fault.policy, correlation_id)
        if fault.kind == "html":
            reason = BaseHTTPRequestHandler.responses.get(fault.status, ("Error",))[0]
            page = HTML_ERROR_PAGE.format(status=fault.status, reason=reason)
            return Response(fault.status, page.encode("utf-8"),
                            content_type="text/html; charset=UTF-8")
        category, message = FAULT_STATUS_ERRORS.get(fault.status, ("ERROR", "error"))
        payload = {"status": "error", "message": fault.message or message,
                   "correlationId": correlation_id, "category": category}
        # HubSpot documents every field but these as optional, so only every
        # other injection adds errors, context and links.
        if fault.injected % 2 == 0:
            payload.update(errors=[], context={}, links={})
        if fault.status == 403:
            payload["errors"] = [{"message": "One or more of the following scopes are "
                                  "required.",
                                  "context": {"requiredGranularScopes": [
                                      "crm.objects.contacts.read"]}}]
        headers = []
        retry_after = fault.retry_after
        if retry_after is None and fault.status in (423, 477):
            retry_after = 2 if fault.status == 423 else 1
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        return json_response(fault.status, payload, headers)

    def apply_body_fault(self, fault, response):
        if fault.kind == "truncate":
            response.action = "truncate"
        elif fault.kind == "malformed":
            response = Response(200, MALFORMED_BODY)
        elif fault.kind == "nul":
            payload = response.payload
            insert_nul(payload)
            response = json_response(response.status, payload, response.headers)
        return response

    # -- statistics --------------------------------------------------------

    def record_stats(self, info, response):
        entry = dict(info)
        entry["status"] = response.status or None
        self.stats_requests.append(entry)
        kind = info["kind"]
        self.stats_counts[kind] = self.stats_counts.get(kind, 0) + 1
        if response.status == 429 and isinstance(response.payload, dict):
            policy = response.payload.get("policyName")
            if policy:
                self.stats_rate_limited[policy] = self.stats_rate_limited.get(policy, 0) + 1
        if kind == "search":
            try:
                after = int(info["after"] or 0)
            except (TypeError, ValueError):
                after = 0
            self.max_search_after = max(self.max_search_after, after)

    def run_search_schedules(self, otype):
        """Count an answered search and apply any edit scheduled for this count."""
        for schedule in list(self.search_schedules):
            if schedule["type"] != otype:
                continue
            schedule["seen"] += 1
            if schedule["seen"] < schedule["after_search_requests"]:
                continue
            self.search_schedules.remove(schedule)
            for record_id in schedule["ids"]:
                try:
                    self.store.update(otype, record_id, schedule["properties"])
                except ApiError:
                    LOG.warning("edit_on_search: %s %s not found; skipped", otype, record_id)

    # -- serialization -----------------------------------------------------

    def wanted_properties(self, otype, names):
        """Return the requested known property names, or the type's defaults."""
        if not names:
            return OBJECT_TYPES[otype].default_properties
        schema = self.store.schema[otype]
        return tuple(name for name in names if isinstance(name, str) and name in schema)

    def history_properties(self, otype, names):
        """Return the known names of propertiesWithHistory; none when not requested."""
        return self.wanted_properties(otype, names) if names else ()

    def serialize(self, otype, record_id, state, wanted, history=(), associations=()):
        """Return the API JSON of one record version.

        wanted None returns every stored property (the dump format). A requested
        property without a value is sent as null for even ids and left out for
        odd ids, because HubSpot does both.
        """
        props = state.props
        if wanted is None:
            out = dict(sorted(props.items()))
        else:
            out = {name: props[name] for name in system_properties(otype)}
            send_null = record_id % 2 == 0
            for name in wanted:
                value = props.get(name)
                if value is not None:
                    out[name] = value
                elif send_null:
                    out[name] = None
            out = dict(sorted(out.items()))
        result = {"id": str(record_id), "properties": out,
                  "createdAt": props["createdate"],
                  "updatedAt": props[OBJECT_TYPES[otype].modified_property],
                  "archived": state.archived_ms is not None}
        if state.archived_ms is not None:
            result["archivedAt"] = iso_from_ms(state.archived_ms)
        if history:
            result["propertiesWithHistory"] = {
                name: [{"value": props[name], "timestamp": result["updatedAt"],
                        "sourceType": "API"}]
                for name in history if props.get(name) is not None}
        embedded = {}
        for to_type in associations:
            rows = self.store.associations(otype, record_id, to_type)
            if rows:
                embedded[to_type] = {"results": [
                    {"id": str(to_id), "type": atype.v3_name}
                    for to_id, types in rows for atype in types]}
        if embedded:
            result["associations"] = embedded
        return result

    def record_json(self, otype, record, wanted=None):
        return self.serialize(otype, record.id, record.state, wanted)

    def link_url(self, path, params):
        return f"http://{BIND_HOST}:{self.port}{path}?{urlencode(params)}"

    # -- object endpoints --------------------------------------------------

    def api_list(self, route, query, body):
        otype = route.otype
        limit = self.list_limit(query)
        archived = parse_bool(query, "archived")
        after = first_value(query, "after")
        try:
            start_id = decode_cursor(after) if after else 0
        except ValueError as exc:
            raise validation_error(f"Invalid after cursor {after!r}") from exc
        wanted = self.wanted_properties(otype, list_values(query, "properties"))
        history = self.history_properties(otype, list_values(query, "propertiesWithHistory"))
        if history and limit > LIST_HISTORY_MAX_LIMIT:
            raise validation_error(
                f"limit must be at most {LIST_HISTORY_MAX_LIMIT} when "
                f"propertiesWithHistory is used; got {limit}")
        associations = [t for t in map(resolve_type, list_values(query, "associations")) if t]
        records, next_id = self.store.list_page(otype, start_id, limit, archived)
        payload = {"results": [
            self.serialize(otype, r.id, r.state, wanted, history, associations)
            for r in records]}
        if next_id is not None:
            cursor = encode_cursor(next_id)
            params = {"limit": limit, "after": cursor}
            if archived:
                params["archived"] = "true"
            payload["paging"] = {"next": {
                "after": cursor,
                "link": self.link_url(f"/crm/v3/objects/{otype}", params)}}
        return json_response(200, payload)

    def list_limit(self, query):
        raw = first_value(query, "limit", "10")
        try:
            limit = int(raw)
        except ValueError as exc:
            raise validation_error(f"limit must be an integer; got {raw!r}") from exc
        if limit < 1:
            raise validation_error(f"limit must be at least 1; got {limit}")
        if limit > LIST_MAX_LIMIT:
            if self.config["list_limit_over_max"] == "error":
                raise validation_error(
                    f"limit must be at most {LIST_MAX_LIMIT}; got {limit}")
            limit = LIST_MAX_LIMIT
        return limit

    def api_get(self, route, query, body):
        otype = route.otype
        record = self.store.lookup(otype, route.record_id, first_value(query, "idProperty"),
                                   parse_bool(query, "archived"))
        if record is None:
            raise not_found(otype, route.record_id)
        wanted = self.wanted_properties(otype, list_values(query, "properties"))
        history = self.history_properties(otype, list_values(query, "propertiesWithHistory"))
        associations = [t for t in map(resolve_type, list_values(query, "associations")) if t]
        return json_response(200, self.serialize(otype, record.id, record.state, wanted,
                                                 history, associations))

    def api_batch_read(self, route, query, body):
        otype = route.otype
        started = iso_from_ms(now_ms())
        payload = parse_json_body(body)
        inputs = payload.get("inputs")
        if not isinstance(inputs, list):
            raise validation_error("inputs must be a list of {\"id\": ...} objects")
        if len(inputs) > BATCH_READ_MAX_INPUTS:
            raise validation_error(
                f"Too many inputs: {len(inputs)} (maximum {BATCH_READ_MAX_INPUTS})",
                context={"inputs": [str(len(inputs))]})
        archived = parse_bool(query, "archived")
        id_property = payload.get("idProperty")
        wanted = self.wanted_properties(otype, payload.get("properties"))
        history = self.history_properties(otype, payload.get("propertiesWithHistory"))

        found, missing = {}, []
        for item in inputs:
            key = item.get("id") if isinstance(item, dict) else None
            record = self.store.lookup(otype, key, id_property, archived) \
                if key is not None else None
            if record is None:
                missing.append(str(key))
            else:
                found[record.id] = record
        if inputs and not found:
            raise ApiError(404, "OBJECT_NOT_FOUND",
                           f"Could not get some {OBJECT_TYPES[otype].label} objects, they "
                           "may be deleted or not exist. Check that ids are valid.",
                           context={"ids": missing})

        # HubSpot does not keep input order; this order is by hash, never input order.
        records = sorted(found.values(), key=lambda r: tie_hash(r.id))
        input_order = [r.id for r in found.values()]
        if len(records) > 1 and [r.id for r in records] == input_order:
            records.reverse()
        result = {"status": "COMPLETE",
                  "results": [self.serialize(otype, r.id, r.state, wanted, history)
                              for r in records],
                  "startedAt": started, "completedAt": iso_from_ms(now_ms())}
        if not missing:
            return json_response(200, result)
        result["numErrors"] = 1
        result["errors"] = [{
            "status": "error", "category": "OBJECT_NOT_FOUND",
            "message": f"Could not get some {OBJECT_TYPES[otype].label} objects, they may "
                       "be deleted or not exist. Check that ids are valid.",
            "context": {"ids": missing}}]
        return json_response(207, result)

    def api_search(self, route, query, body):
        otype = route.otype
        text = body.decode("utf-8", errors="replace")
        if len(text) > SEARCH_MAX_BODY_CHARS:
            raise validation_error(
                f"The request body has {len(text)} characters; search accepts at most "
                f"{SEARCH_MAX_BODY_CHARS}")
        payload = parse_json_body(body)
        if not isinstance(payload, dict):
            raise validation_error("The search body must be a JSON object")
        search = SearchQuery(otype, payload)
        visible_ms = now_ms() - (self.config["index_lag_ms"] or 0)
        matches = self.store.search(otype, search, visible_ms)
        wanted = self.wanted_properties(otype, search.properties)
        end = search.after + search.limit
        result = {"total": len(matches), "results": [
            self.serialize(otype, record_id, state, wanted)
            for record_id, state in matches[search.after:end]]}
        if search.limit > 0 and end < len(matches):
            result["paging"] = {"next": {"after": str(end)}}
        return json_response(200, result)

    def written_properties(self, otype, properties, public):
        """Validate and convert the properties of a write.

        The public API rejects unknown and read-only properties, as HubSpot
        does; the control API adds unknown names to the type's schema.
        """
        if not isinstance(properties, dict):
            raise validation_error("properties must be an object")
        schema = self.store.schema[otype]
        changes = {}
        for name, value in properties.items():
            if name in system_properties(otype) or name in created_properties(otype):
                raise validation_error(
                    f"Property values were not valid: {name} is a read-only property",
                    errors=[{"message": f"{name} is a read only property; its value "
                             "cannot be set.", "code": "READ_ONLY_VALUE",
                             "context": {"propertyName": [name]}}])
            if public and name not in schema:
                raise validation_error(
                    f"Property values were not valid: property \"{name}\" does not exist",
                    errors=[{"message": f"Property \"{name}\" does not exist",
                             "code": "PROPERTY_DOESNT_EXIST",
                             "context": {"propertyName": [name]}}])
            if public and name in read_only_properties(otype):
                raise validation_error(f"Property values were not valid: {name} is read-only")
            changes[name] = property_value_to_string(name, value)
            schema.setdefault(name, "string")
        return changes

    def api_create(self, route, query, body):
        otype = route.otype
        payload = parse_json_body(body)
        changes = self.written_properties(otype, payload.get("properties", {}), public=True)
        links = []
        for item in payload.get("associations") or []:
            try:
                to_id = str(item["to"]["id"])
                types = item["types"]
            except (KeyError, TypeError) as exc:
                raise validation_error("Each association needs to.id and types") from exc
            for spec in types:
                links.append((to_id, int(spec.get("associationTypeId", 0))))
        targets = []
        for to_id, type_id in links:
            matches = [a for a in ASSOCIATION_TYPES
                       if a.from_type == otype and a.type_id == type_id]
            if not matches:
                raise validation_error(
                    f"Association type {type_id} is not defined from {otype}")
            target = self.store.live_record(matches[0].to_type, to_id)
            targets.append((matches[0].to_type, target.id, type_id))
        record = self.store.create(otype, changes)
        for to_type, to_id, type_id in targets:
            self.store.link(otype, record.id, to_type, to_id, type_id)
        return json_response(201, self.record_json(otype, record))

    def api_update(self, route, query, body):
        otype = route.otype
        payload = parse_json_body(body)
        changes = self.written_properties(otype, payload.get("properties", {}), public=True)
        record = self.store.update(otype, route.record_id, changes)
        return json_response(200, self.record_json(otype, record))

    def api_archive(self, route, query, body):
        self.store.archive(route.otype, route.record_id)
        return empty_response(204)

    def api_merge(self, route, query, body):
        otype = route.otype
        if otype not in ("contacts", "companies"):
            raise validation_error(f"Merging is not supported for {otype}")
        payload = parse_json_body(body)
        primary, secondary = payload.get("primaryObjectId"), payload.get("objectIdToMerge")
        if primary is None or secondary is None:
            raise validation_error("primaryObjectId and objectIdToMerge are required")
        merged = self.store.merge(otype, primary, secondary)
        return json_response(200, self.record_json(otype, merged))

    def api_gdpr_delete(self, route, query, body):
        if route.otype != "contacts":
            raise validation_error("GDPR delete is only supported for contacts")
        payload = parse_json_body(body)
        key, id_property = payload.get("objectId"), payload.get("idProperty")
        if key is None:
            raise validation_error("objectId is required")
        if id_property and id_property != "hs_object_id":
            record = self.store.find_by_property("contacts", id_property, key)
            if record is None:
                return empty_response(204)  # HubSpot blocklists an unknown email instead
            key = record.id
        self.store.gdpr_delete("contacts", key)
        return empty_response(204)

    def api_properties(self, route, query, body):
        otype = route.otype
        field_types = {"string": "text", "number": "number", "datetime": "date",
                       "enumeration": "select"}
        results = [{"name": name, "label": name, "type": kind,
                    "fieldType": field_types.get(kind, "text"),
                    "groupName": f"{OBJECT_TYPES[otype].singular}information",
                    "hasUniqueValue": name == "hs_object_id", "hidden": False,
                    "calculated": name in read_only_properties(otype), "options": []}
                   for name, kind in sorted(self.store.schema[otype].items())]
        return json_response(200, {"results": results})

    def api_bad_type(self, route, query, body):
        raise validation_error(f"Unable to infer object type from: {route.record_id}")

    def api_unknown(self, route, query, body):
        raise ApiError(404, "OBJECT_NOT_FOUND", "No endpoint matches this path")

    def api_method_not_allowed(self, route, query, body):
        raise ApiError(405, "METHOD_NOT_ALLOWED", "This method is not allowed on this path")

    # -- association endpoints ---------------------------------------------

    def association_row(self, to_id, types):
        return {"toObjectId": to_id, "associationTypes": [
            {"category": a.category, "typeId": a.type_id, "label": a.label} for a in types]}

    def assoc_page(self, rows, after, page_size):
        """Return (page rows, next cursor or None); the cursor is the last to_id."""
        if after:
            try:
                last_id = decode_cursor(after)
            except ValueError as exc:
                raise validation_error(f"Invalid after cursor {after!r}") from exc
            rows = [row for row in rows if row[0] > last_id]
        page = rows[:page_size]
        next_cursor = encode_cursor(page[-1][0]) if len(rows) > page_size else None
        return page, next_cursor

    def api_assoc_get(self, route, query, body):
        otype, to_type = route.otype, route.to_type
        record = self.store.find(otype, route.record_id)
        if record is None or record.state.archived_ms is not None:
            raise not_found(otype, route.record_id)
        raw = first_value(query, "limit", str(ASSOC_GET_MAX_LIMIT))
        try:
            limit = min(int(raw), ASSOC_GET_MAX_LIMIT)
        except ValueError as exc:
            raise validation_error(f"limit must be an integer; got {raw!r}") from exc
        if limit < 1:
            raise validation_error(f"limit must be at least 1; got {limit}")
        rows = self.store.associations(otype, record.id, to_type)
        page, next_cursor = self.assoc_page(rows, first_value(query, "after"), limit)
        payload = {"results": [self.association_row(to_id, types) for to_id, types in page]}
        if next_cursor:
            path = f"/crm/v4/objects/{otype}/{record.id}/associations/{to_type}"
            payload["paging"] = {"next": {
                "after": next_cursor,
                "link": self.link_url(path, {"limit": limit, "after": next_cursor})}}
        return json_response(200, payload)

    def api_assoc_batch(self, route, query, body):
        otype, to_type = route.otype, route.to_type
        started = iso_from_ms(now_ms())
        payload = parse_json_body(body)
        inputs = payload.get("inputs")
        if not isinstance(inputs, list):
            raise validation_error("inputs must be a list of {\"id\": ...} objects")
        if len(inputs) > ASSOC_BATCH_MAX_INPUTS:
            raise validation_error(
                f"Too many inputs: {len(inputs)} (maximum {ASSOC_BATCH_MAX_INPUTS})")
        page_size = self.config["assoc_page_size"]
        results = []
        for item in inputs:
            key = item.get("id") if isinstance(item, dict) else None
            try:
                from_id = int(str(key))
            except ValueError:
                continue
            rows = self.store.associations(otype, from_id, to_type)
            if not rows:
                continue  # records without associations are left out
            page, next_cursor = self.assoc_page(rows, item.get("after"), page_size)
            entry = {"from": {"id": str(from_id)},
                     "to": [self.association_row(to_id, types) for to_id, types in page]}
            if next_cursor:
                entry["paging"] = {"next": {"after": next_cursor}}
            results.append(entry)
        return json_response(200, {"status": "COMPLETE", "results": results,
                                   "startedAt": started,
                                   "completedAt": iso_from_ms(now_ms())})

    def assoc_endpoints(self, route):
        from_record = self.store.live_record(route.otype, route.record_id)
        to_record = self.store.live_record(route.to_type, route.to_id)
        return from_record.id, to_record.id

    def association_specs(self, route, body, required):
        payload = parse_json_body(body) if body.strip() else []
        if not isinstance(payload, list) or (required and not payload):
            raise validation_error(
                "The body must be a list of {associationCategory, associationTypeId}")
        type_ids = []
        for spec in payload:
            try:
                type_id = int(spec["associationTypeId"])
            except (KeyError, TypeError, ValueError) as exc:
                raise validation_error("Each association needs associationTypeId") from exc
            atype = self.store.association_type(route.otype, route.to_type, type_id)
            category = spec.get("associationCategory", atype.category)
            if category != atype.category:
                raise validation_error(
                    f"Association type {type_id} has category {atype.category}, "
                    f"not {category}")
            type_ids.append(type_id)
        return type_ids

    def assoc_put_response(self, route, from_id, to_id):
        labels = []
        for target_id, types in self.store.associations(route.otype, from_id, route.to_type):
            if target_id == to_id:
                labels.extend(a.label for a in types if a.label)
        return json_response(201, {
            "fromObjectTypeId": OBJECT_TYPES[route.otype].type_id, "fromObjectId": from_id,
            "toObjectTypeId": OBJECT_TYPES[route.to_type].type_id, "toObjectId": to_id,
            "labels": labels})

    def api_assoc_put(self, route, query, body):
        type_ids = self.association_specs(route, body, required=True)
        from_id, to_id = self.assoc_endpoints(route)
        for type_id in type_ids:
            self.store.link(route.otype, from_id, route.to_type, to_id, type_id)
        return self.assoc_put_response(route, from_id, to_id)

    def api_assoc_put_default(self, route, query, body):
        type_id = DEFAULT_ASSOCIATION.get((route.otype, route.to_type))
        if type_id is None:
            raise validation_error(
                f"No default association from {route.otype} to {route.to_type}")
        from_id, to_id = self.assoc_endpoints(route)
        self.store.link(route.otype, from_id, route.to_type, to_id, type_id)
        return self.assoc_put_response(route, from_id, to_id)

    def api_assoc_delete(self, route, query, body):
        """Remove the listed types, or every type between the pair when no body is sent."""
        type_ids = self.association_specs(route, body, required=False)
        from_id, to_id = self.assoc_endpoints(route)
        if not type_ids:
            self.store.unlink(route.otype, from_id, route.to_type, to_id)
        for type_id in type_ids:
            self.store.unlink(route.otype, from_id, route.to_type, to_id, type_id)
        return empty_response(204)

    # -- control API -------------------------------------------------------

    def handle_control(self, method, path, query, body):
        verb = path[len("/_mock/"):].strip("/")
        handler = CONTROL_VERBS.get((method, verb))
        if handler is None:
            return json_response(404, {"status": "error",
                                       "message": f"No control endpoint {method} {path}"})
        try:
            payload = parse_json_body(body) if method == "POST" else {}
            if not isinstance(payload, dict):
                raise ControlError(400, "The body must be a JSON object")
            with self.lock:
                return handler(self, payload, query)
        except (ControlError, ApiError) as err:
            status, message = err.status, err.message
        except (TypeError, ValueError) as err:
            status, message = 400, f"Invalid request: {err}"
        LOG.warning("control request %s %s failed with %d: %s", method, path, status, message)
        return json_response(status, {"status": "error", "message": message})

    @staticmethod
    def control_type(payload, key="type"):
        name = payload.get(key)
        otype = resolve_type(str(name)) if name is not None else None
        if otype is None:
            raise ControlError(400, f"{key} must name an object type "
                                    f"({', '.join(OBJECT_TYPES)}); got {name!r}")
        return otype

    @staticmethod
    def control_field(payload, key):
        if key not in payload:
            raise ControlError(400, f"{key} is required")
        return payload[key]

    def control_reset(self, payload, query):
        portal = payload.get("portal", self.startup_portal)
        if portal not in PORTAL_SIZES:
            raise ControlError(400, f"unknown portal {portal!r}; use one of "
                                    f"{sorted(PORTAL_SIZES)}")
        seed = payload.get("seed", self.startup_seed)
        self.reset(portal, seed)
        return json_response(200, {"ok": True, "portal": portal, "seed": seed})

    def control_config(self, payload, query):
        validate_config_change(payload)
        self.config.update(payload)
        self.store.search_cache.clear()
        return json_response(200, self.config)

    def control_get_config(self, payload, query):
        return json_response(200, self.config)

    def control_faults(self, payload, query):
        specs = payload.get("faults", [])
        if not isinstance(specs, list):
            raise ControlError(400, "faults must be a list")
        self.faults = [Fault(spec) for spec in specs]
        self.release_hangs()
        return json_response(200, {"faults": [f.describe() for f in self.faults]})

    def control_edit(self, payload, query):
        otype = self.control_type(payload)
        record_id = self.control_field(payload, "id")
        changes = self.written_properties(otype, payload.get("properties", {}), public=False)
        modified = payload.get("modified_at")
        record = self.store.update(otype, record_id, changes,
                                   None if modified is None else int(modified))
        return json_response(200, self.record_json(otype, record))

    def control_create(self, payload, query):
        otype = self.control_type(payload)
        changes = self.written_properties(otype, payload.get("properties", {}), public=False)
        links = []
        for item in payload.get("associations") or []:
            to_type = self.control_type(item, "to_type")
            target = self.store.live_record(to_type, self.control_field(item, "to_id"))
            type_id = int(item.get("type_id") or DEFAULT_ASSOCIATION.get((otype, to_type), 0))
            self.store.association_type(otype, to_type, type_id)
            links.append((to_type, target.id, type_id))
        created, modified = payload.get("created_at"), payload.get("modified_at")
        record = self.store.create(otype, changes, None if created is None else int(created),
                                   None if modified is None else int(modified))
        for to_type, to_id, type_id in links:
            self.store.link(otype, record.id, to_type, to_id, type_id)
        return json_response(200, {"id": str(record.id)})

    def control_archive(self, payload, query):
        otype = self.control_type(payload)
        record = self.store.archive(otype, self.control_field(payload, "id"))
        return json_response(200, self.record_json(otype, record))

    def control_restore(self, payload, query):
        otype = self.control_type(payload)
        record = self.store.restore(otype, self.control_field(payload, "id"))
        return json_response(200, self.record_json(otype, record))

    def control_merge(self, payload, query):
        otype = self.control_type(payload)
        if otype not in ("contacts", "companies"):
            raise ControlError(400, "merging is only supported for contacts and companies")
        merged = self.store.merge(otype, self.control_field(payload, "primary"),
                                  self.control_field(payload, "secondary"))
        return json_response(200, {"id": str(merged.id)})

    def control_gdpr_delete(self, payload, query):
        otype = self.control_type(payload) if "type" in payload else "contacts"
        self.store.gdpr_delete(otype, self.control_field(payload, "id"))
        return json_response(200, {"ok": True})

    def control_link_args(self, payload):
        from_type = self.control_type(payload, "from_type")
        to_type = self.control_type(payload, "to_type")
        from_record = self.store.find(from_type, self.control_field(payload, "from_id"))
        to_record = self.store.find(to_type, self.control_field(payload, "to_id"))
        if from_record is None or to_record is None:
            raise ControlError(404, "from_id or to_id does not name an existing record")
        type_id = payload.get("type_id")
        if type_id is None:
            type_id = DEFAULT_ASSOCIATION.get((from_type, to_type))
        return from_type, from_record.id, to_type, to_record.id, type_id

    def control_associate(self, payload, query):
        from_type, from_id, to_type, to_id, type_id = self.control_link_args(payload)
        if type_id is None:
            raise ControlError(400, f"type_id is required from {from_type} to {to_type}")
        self.store.link(from_type, from_id, to_type, to_id, int(type_id))
        return json_response(200, {"ok": True})

    def control_dissociate(self, payload, query):
        from_type, from_id, to_type, to_id, _ = self.control_link_args(payload)
        type_id = payload.get("type_id")
        self.store.unlink(from_type, from_id, to_type, to_id,
                          None if type_id is None else int(type_id))
        return json_response(200, {"ok": True})

    def control_bulk_stamp(self, payload, query):
        otype = self.control_type(payload)
        count = int(self.control_field(payload, "count"))
        modified = int(payload.get("modified_at", now_ms()))
        started = time.perf_counter()
        spread = int(payload.get("spread_ms", 0))
        reused, created = self.store.bulk_stamp(
            otype, count, modified, lambda record_id: bulk_properties(otype, record_id),
            spread)
        LOG.info("bulk_stamp %s: %d reused, %d created at %d in %.2fs", otype, reused,
                 created, modified, time.perf_counter() - started)
        return json_response(200, {"reused": reused, "created": created,
                                   "modified_at": modified})

    def control_edit_on_search(self, payload, query):
        otype = self.control_type(payload)
        schedule = {"type": otype,
                    "after_search_requests": int(self.control_field(
                        payload, "after_search_requests")),
                    "ids": [str(i) for i in self.control_field(payload, "ids")],
                    "properties": self.written_properties(
                        otype, payload.get("properties", {}), public=False),
                    "seen": 0}
        self.search_schedules.append(schedule)
        return json_response(200, {"ok": True, "pending": len(self.search_schedules)})

    def control_stats(self, payload, query):
        return json_response(200, {"requests": self.stats_requests,
                                   "counts": self.stats_counts,
                                   "rate_limited": self.stats_rate_limited,
                                   "max_search_after": self.max_search_after,
                                   "faults": [f.describe() for f in self.faults]})

    def control_stats_clear(self, payload, query):
        self.clear_stats()
        return json_response(200, {"ok": True})

    def control_dump(self, payload, query):
        otype = self.control_type({"type": first_value(query, "type")})
        archived = parse_bool(query, "archived")
        lines = [JSON_ENCODER.encode(self.record_json(otype, record))
                 for record in self.store.records[otype].values()
                 if (record.state.archived_ms is not None) == archived]
        body = "".join(line + "\n" for line in lines).encode("utf-8")
        return Response(200, body, content_type="application/x-ndjson; charset=utf-8")

    def control_dump_associations(self, payload, query):
        from_type = self.control_type({"type": first_value(query, "from_type")})
        to_type = self.control_type({"type": first_value(query, "to_type")})
        lines = []
        for from_id in sorted(self.store.links.get((from_type, to_type), {})):
            for to_id, types in self.store.associations(from_type, from_id, to_type):
                for atype in types:
                    lines.append(JSON_ENCODER.encode({
                        "from_id": from_id, "to_id": to_id, "type_id": atype.type_id,
                        "category": atype.category, "label": atype.label}))
        body = "".join(line + "\n" for line in lines).encode("utf-8")
        return Response(200, body, content_type="application/x-ndjson; charset=utf-8")

    def control_health(self, payload, query):
        return json_response(200, {"ok": True, "portal": self.portal})


CONTROL_VERBS = {
    ("POST", "reset"): MockApp.control_reset,
    ("POST", "config"): MockApp.control_config,
    ("GET", "config"): MockApp.control_get_config,
    ("POST", "faults"): MockApp.control_faults,
    ("POST", "edit"): MockApp.control_edit,
    ("POST", "create"): MockApp.control_create,
    ("POST", "archive"): MockApp.control_archive,
    ("POST", "restore"): MockApp.control_restore,
    ("POST", "merge"): MockApp.control_merge,
    ("POST", "gdpr_delete"): MockApp.control_gdpr_delete,
    ("POST", "associate"): MockApp.control_associate,
    ("POST", "dissociate"): MockApp.control_dissociate,
    ("POST", "bulk_stamp"): MockApp.control_bulk_stamp,
    ("POST", "edit_on_search"): MockApp.control_edit_on_search,
    ("GET", "stats"): MockApp.control_stats,
    ("POST", "stats/clear"): MockApp.control_stats_clear,
    ("GET", "dump"): MockApp.control_dump,
    ("GET", "dump_associations"): MockApp.control_dump_associations,
    ("GET", "health"): MockApp.control_health,
}


def insert_nul(payload):
    """Insert a NUL character into the first string property of the first result."""
    if not isinstance(payload, dict):
        return
    target = payload
    results = payload.get("results")
    if isinstance(results, list) and results and isinstance(results[0], dict):
        target = results[0]
    props = target.get("properties")
    if not isinstance(props, dict):
        return
    for name, value in props.items():
        if isinstance(value, str):
            props[name] = value[:1] + "\u0000" + value[1:]
            return


# ---------------------------------------------------------------------------
# HTTP layer
# ---------------------------------------------------------------------------

def accepts_gzip(header_value):
    for part in (header_value or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


CONNECTION_NUMBERS = itertools.count(1)


class MockRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive; every response sends Content-Length
    server_version = "hubspot-mock/1.0"
    timeout = 120                   # seconds before an idle keep-alive connection closes

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def do_PATCH(self):
        self.handle_request("PATCH")

    def do_PUT(self):
        self.handle_request("PUT")

    def do_DELETE(self):
        self.handle_request("DELETE")

    def setup(self):
        super().setup()
        # A number per TCP connection, so the statistics show keep-alive reuse.
        self.connection_number = next(CONNECTION_NUMBERS)
        # Without this, a small header write followed by the body waits for the
        # client's delayed ACK (about 40 ms per response on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        """Silence the default stderr line per request; MockApp.log_request writes them."""

    def handle_request(self, method):
        started = time.perf_counter()
        app = self.server.app
        try:
            body = self.read_body()
        except (ValueError, OSError) as exc:
            LOG.warning("unreadable request body on %s %s: %s", method, self.path, exc)
            self.close_connection = True
            response = json_response(400, {"status": "error",
                                           "message": f"Unreadable request body: {exc}"})
        else:
            self.headers["X-Mock-Connection"] = str(self.connection_number)
            try:
                response = app.handle(method, self.path, body, self.headers)
            except Exception:  # noqa: BLE001 - a bug must not kill the connection silently
                LOG.exception("internal error on %s %s", method, self.path)
                response = json_response(500, {"status": "error", "category": "INTERNAL_ERROR",
                                               "message": "internal error in the mock server"})
        try:
            self.send(response)
        except (BrokenPipeError, ConnectionResetError) as exc:
            LOG.debug("client went away during %s %s: %s", method, self.path, exc)
            self.close_connection = True
        app.log_request(method, self.path, response.status,
                        (time.perf_counter() - started) * 1000)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, response):
        if response.action == "reset":
            self.reset_connection()
            return
        if response.action == "close":
            self.close_connection = True
            return
        body = response.body
        headers = list(response.headers)
        if body and accepts_gzip(self.headers.get("Accept-Encoding")):
            body = gzip.compress(body, compresslevel=5)
            headers.append(("Content-Encoding", "gzip"))
        if response.content_type:
            headers.insert(0, ("Content-Type", response.content_type))
        headers.append(("Content-Length", str(len(body))))
        if response.action == "truncate":
            body = body[:len(body) // 2]  # Content-Length still announces the whole body
            self.close_connection = True
        if self.close_connection:
            headers.append(("Connection", "close"))
        reason = self.responses.get(response.status, ("Error",))[0]
        lines = [f"{self.protocol_version} {response.status} {reason}",
                 f"Server: {self.version_string()}", f"Date: {self.date_time_string()}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # One write for head and body, so no small segment waits for a delayed ACK.
        self.wfile.write(head + body)

    def reset_connection(self):
        """Close the socket so the client sees a connection reset (RST), not a response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # The rfile wrapper holds a reference that would keep the socket open.
            self.rfile.close()
            self.connection.close()
        except OSError as exc:
            LOG.debug("reset of a closed connection: %s", exc)


class MockHTTPServer(ThreadingHTTPServer):
    daemon_threads = True   # hung requests must not keep the process alive

    def __init__(self, port, app):
        self.app = app
        super().__init__((BIND_HOST, port), MockRequestHandler)
        app.port = self.server_address[1]

    def server_close(self):
        super().server_close()
        self.app.close()


def create_server(port=0, portal="demo", seed=1, token=DEFAULT_TOKEN, realistic=False,
                  log_path=None):
    """Build the app and bind it to 127.0.0.1:port (0 picks a free port)."""
    app = MockApp(portal=portal, seed=seed, token=token, realistic=realistic,
                  log_path=log_path)
    return MockHTTPServer(port, app)


def write_port_file(path, port):
    """Write the port atomically so a reader never sees a partial file."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(f"{port}\n")
    os.replace(temporary, path)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a "
                             "free one)")
    parser.add_argument("--port-file", help="write the chosen port to this file once listening")
    parser.add_argument("--token", default=DEFAULT_TOKEN,
                        help=f"the only valid bearer token (default {DEFAULT_TOKEN})")
    parser.add_argument("--portal", choices=sorted(PORTAL_SIZES), default="demo",
                        help="generated data set (default demo)")
    parser.add_argument("--seed", type=int, default=1,
                        help="random seed of the generated data (default 1)")
    parser.add_argument("--log", help="append one line per request (method, path, status, "
                                      "ms) to this file")
    parser.add_argument("--realistic", action="store_true",
                        help="enforce HubSpot's limits: 190 requests per 10 s, 5 searches "
                             "per second, 625,000 per day")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s hubspot_server %(levelname)s %(message)s")
    started = time.perf_counter()
    server = create_server(args.port, args.portal, args.seed, args.token, args.realistic,
                           args.log)
    port = server.server_address[1]
    if args.port_file:
        write_port_file(args.port_file, port)
    LOG.info("listening on http://%s:%d (portal %s, seed %d%s) after %.2fs", BIND_HOST,
             port, args.portal, args.seed, ", realistic limits" if args.realistic else "",
             time.perf_counter() - started)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        LOG.info("stopped")
    return 0


def stop_on_sigterm(signum, frame):
    """Turn SIGTERM into the same clean stop as Ctrl-C."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    sys.exit(main())
