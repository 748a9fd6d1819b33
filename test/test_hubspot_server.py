#!/usr/bin/env python3
"""Self-check of test/hubspot_server.py and test/hubspot_ctl.py.

Starts the server in this process on a free 127.0.0.1 port and talks to it
over HTTP. Run:  python3 test/test_hubspot_server.py   (takes a few seconds)
"""

import gzip
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hubspot_server  # noqa: E402

TOKEN = hubspot_server.DEFAULT_TOKEN
SERVER = None
PORT = None


def setUpModule():
    global SERVER, PORT
    SERVER = hubspot_server.create_server(port=0, portal="small")
    PORT = SERVER.server_address[1]
    threading.Thread(target=SERVER.serve_forever, daemon=True).start()


def tearDownModule():
    SERVER.shutdown()
    SERVER.server_close()


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def header(self, name):
        return self.headers.get(name)


def request(method, path, body=None, token=TOKEN, headers=None, connection=None,
            timeout=10):
    """Send one request (on a new connection unless one is given) and read the reply."""
    own = connection is None
    if own:
        connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    all_headers = {"Content-Type": "application/json"}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    try:
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        if own:
            connection.close()


def control(verb, payload=None):
    method = "GET" if verb.split("?")[0] in ("stats", "dump", "dump_associations",
                                             "health") else "POST"
    reply = request(method, "/_mock/" + verb, None if method == "GET" else (payload or {}),
                    token=None)
    if reply.status >= 400:
        raise AssertionError(f"control {verb} failed: {reply.status} {reply.body!r}")
    return reply


def search(otype, body):
    return request("POST", f"/crm/v3/objects/{otype}/search", body)


def dump(otype, archived=False):
    reply = control(f"dump?type={otype}" + ("&archived=true" if archived else ""))
    return [json.loads(line) for line in reply.body.decode().splitlines()]


class ServerTestCase(unittest.TestCase):
    def setUp(self):
        control("reset", {"portal": "small", "seed": 1})

    def first_id(self, otype):
        return dump(otype)[0]["id"]


class ProtocolTest(ServerTestCase):
    def test_keep_alive_reuses_connection(self):
        connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
        first = request("GET", "/crm/v3/objects/contacts", connection=connection)
        sock = connection.sock
        second = request("GET", "/crm/v3/objects/contacts", connection=connection)
        self.assertEqual(first.status, 200)
        self.assertEqual(second.status, 200)
        self.assertIs(connection.sock, sock)
        connection.close()

    def test_gzip_when_accepted(self):
        reply = request("GET", "/crm/v3/objects/contacts",
                        headers={"Accept-Encoding": "gzip"})
        self.assertEqual(reply.header("Content-Encoding"), "gzip")
        self.assertEqual(int(reply.header("Content-Length")), len(reply.body))
        self.assertEqual(len(json.loads(gzip.decompress(reply.body))["results"]), 10)

    def test_headers_on_search_and_non_search(self):
        listed = request("GET", "/crm/v3/objects/contacts")
        searched = search("contacts", {})
        self.assertTrue(listed.header("X-HubSpot-Correlation-Id"))
        self.assertTrue(searched.header("X-HubSpot-Correlation-Id"))
        for name in ("Max", "Remaining", "Interval-Milliseconds", "Daily", "Daily-Remaining"):
            self.assertIsNotNone(listed.header(f"X-HubSpot-RateLimit-{name}"), name)
            self.assertIsNone(searched.header(f"X-HubSpot-RateLimit-{name}"), name)

    def test_type_aliases(self):
        for alias in ("contacts", "contact", "0-1"):
            reply = request("GET", f"/crm/v3/objects/{alias}?limit=1")
            self.assertEqual(reply.status, 200, alias)
            self.assertEqual(reply.json["results"][0]["id"], self.first_id("contacts"))
        for alias in ("line_item", "0-8", "invoice", "0-53", "company", "0-2"):
            self.assertEqual(search(alias, {}).status, 200, alias)
        self.assertEqual(request("GET", "/crm/v3/objects/deals").status, 400)

    def test_missing_and_wrong_token(self):
        missing = request("GET", "/crm/v3/objects/contacts", token=None)
        wrong = request("GET", "/crm/v3/objects/contacts", token="pat-na1-wrong")
        self.assertEqual(missing.status, 401)
        self.assertEqual(wrong.status, 401)
        self.assertEqual(missing.json["category"], "INVALID_AUTHENTICATION")
        self.assertEqual(wrong.json["category"], "INVALID_AUTHENTICATION")
        self.assertTrue(missing.json["message"].startswith("Authentication credentials"))
        self.assertNotEqual(missing.json["message"], wrong.json["message"])
        self.assertEqual(missing.json["correlationId"],
                         missing.header("X-HubSpot-Correlation-Id"))

    def test_token_config(self):
        control("config", {"token": "pat-na1-rotated"})
        self.assertEqual(request("GET", "/crm/v3/objects/contacts").status, 401)
        self.assertEqual(request("GET", "/crm/v3/objects/contacts",
                                 token="pat-na1-rotated").status, 200)

    def test_missing_scope(self):
        control("config", {"missing_scopes": ["crm.objects.invoices.read"]})
        reply = search("invoices", {})
        self.assertEqual(reply.status, 403)
        self.assertEqual(reply.json["category"], "MISSING_SCOPES")
        self.assertEqual(reply.json["errors"][0]["context"]["requiredGranularScopes"],
                         ["crm.objects.invoices.read"])
        self.assertEqual(search("contacts", {}).status, 200)


class RecordShapeTest(ServerTestCase):
    def test_small_portal_counts(self):
        self.assertEqual(len(dump("companies")), 12)
        self.assertEqual(len(dump("contacts")), 30)
        self.assertEqual(len(dump("invoices")), 20)
        lines = dump("line_items")
        self.assertGreaterEqual(len(lines), 20)
        self.assertLessEqual(len(lines), 60)

    def test_id_ranges(self):
        for otype, low in (("companies", 1000001), ("contacts", 2000001),
                           ("invoices", 3000001), ("line_items", 4000001)):
            ids = [int(r["id"]) for r in dump(otype)]
            self.assertEqual(ids, sorted(ids), otype)
            self.assertGreaterEqual(ids[0], low, otype)
            self.assertLess(ids[-1], low + 1_000_000, otype)

    def test_object_json_shape(self):
        record = request("GET", "/crm/v3/objects/contacts?limit=1").json["results"][0]
        self.assertEqual(set(record), {"id", "properties", "createdAt", "updatedAt",
                                       "archived"})
        props = record["properties"]
        self.assertEqual(props["hs_object_id"], record["id"])
        self.assertEqual(props["lastmodifieddate"], record["updatedAt"])
        self.assertEqual(props["createdate"], record["createdAt"])
        self.assertRegex(record["updatedAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        invoice = request("GET", "/crm/v3/objects/invoices?limit=1").json["results"][0]
        self.assertIn("hs_lastmodifieddate", invoice["properties"])
        self.assertNotIn("lastmodifieddate", invoice["properties"])

    def test_missing_values_null_or_absent_by_parity(self):
        records = dump("contacts")
        no_phone = [r["id"] for r in records if r["properties"].get("phone") is None]
        even = [i for i in no_phone if int(i) % 2 == 0]
        odd = [i for i in no_phone if int(i) % 2 == 1]
        self.assertTrue(even and odd)
        reply = request("POST", "/crm/v3/objects/contacts/batch/read",
                        {"properties": ["phone", "no_such_property"],
                         "inputs": [{"id": even[0]}, {"id": odd[0]}]})
        by_id = {r["id"]: r["properties"] for r in reply.json["results"]}
        self.assertIn("phone", by_id[even[0]])
        self.assertIsNone(by_id[even[0]]["phone"])
        self.assertNotIn("phone", by_id[odd[0]])
        self.assertNotIn("no_such_property", by_id[even[0]])

    def test_awkward_values_present(self):
        contacts = {r["properties"].get("lastname"): r for r in dump("contacts")}
        self.assertIn("O'Brien", contacts)
        self.assertEqual(contacts["Müller"]["properties"]["firstname"], "Zoë")
        self.assertTrue(any("email" not in r["properties"] for r in dump("contacts")))
        phones = [r["properties"].get("phone", "absent") for r in dump("contacts")]
        self.assertIn("", phones)
        self.assertIn(None, phones)
        self.assertIn("absent", phones)
        companies = [r["properties"]["name"] for r in dump("companies")]
        self.assertIn('"Big" Co', companies)
        self.assertEqual(companies.count("Acme Corporation"), 2)
        invoices = dump("invoices")
        self.assertEqual(len(invoices[0]["properties"]["hs_comments"]), 5000)
        numbers = [r["properties"]["hs_number"] for r in invoices]
        self.assertEqual(len(numbers) - len(set(numbers)), 1)
        dates = [r["properties"]["hs_invoice_date"] for r in invoices]
        self.assertTrue(any(len(d) == 10 and d.isdigit() for d in dates))
        due = [r["properties"]["hs_due_date"] for r in invoices]
        self.assertTrue(any(len(d) == 13 and d.isdigit() for d in due))
        self.assertIn("0", [r["properties"]["quantity"] for r in dump("line_items")])

    def test_same_seed_same_data(self):
        before = control("dump?type=invoices").body
        control("reset", {"portal": "small", "seed": 1})
        self.assertEqual(control("dump?type=invoices").body, before)
        control("reset", {"portal": "small", "seed": 2})
        self.assertNotEqual(control("dump?type=invoices").body, before)


class ListTest(ServerTestCase):
    def test_paging_ascending_ids(self):
        seen, after, pages = [], None, 0
        while True:
            path = "/crm/v3/objects/contacts?limit=7" + (f"&after={after}" if after else "")
            reply = request("GET", path).json
            seen.extend(int(r["id"]) for r in reply["results"])
            pages += 1
            if "paging" not in reply:
                break
            self.assertIn("link", reply["paging"]["next"])
            after = reply["paging"]["next"]["after"]
        self.assertEqual(pages, 5)
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(len(seen), 30)

    def test_cursor_is_not_an_id(self):
        reply = request("GET", "/crm/v3/objects/contacts?limit=1").json
        self.assertFalse(reply["paging"]["next"]["after"].isdigit())
        self.assertEqual(request("GET", "/crm/v3/objects/contacts?after=2000002").status, 400)

    def test_default_and_max_limit(self):
        self.assertEqual(len(request("GET", "/crm/v3/objects/contacts").json["results"]), 10)
        control("bulk_stamp", {"type": "contacts", "count": 150, "modified_at": 1_700_000_000_000})
        capped = request("GET", "/crm/v3/objects/contacts?limit=500")
        self.assertEqual(len(capped.json["results"]), 100)
        control("config", {"list_limit_over_max": "error"})
        self.assertEqual(request("GET", "/crm/v3/objects/contacts?limit=101").status, 400)

    def test_history_limit(self):
        path = "/crm/v3/objects/contacts?propertiesWithHistory=email&limit="
        self.assertEqual(request("GET", path + "51").status, 400)
        self.assertEqual(request("GET", path + "50").status, 200)

    def test_archived_list(self):
        contact_id = self.first_id("contacts")
        self.assertEqual(request("DELETE", f"/crm/v3/objects/contacts/{contact_id}").status,
                         204)
        archived = request("GET", "/crm/v3/objects/contacts?archived=true").json["results"]
        self.assertEqual([r["id"] for r in archived], [contact_id])
        self.assertTrue(archived[0]["archived"])
        self.assertIn("archivedAt", archived[0])
        self.assertNotIn("total", request("GET", "/crm/v3/objects/contacts?archived=true").json)

    def test_embedded_associations(self):
        invoice = dump("invoices")[0]["id"]
        reply = request("GET", f"/crm/v3/objects/invoices/{invoice}?associations=line_items")
        embedded = reply.json["associations"]["line_items"]["results"]
        self.assertTrue(embedded)
        self.assertEqual(embedded[0]["type"], "invoice_to_line_item")


class SearchTest(ServerTestCase):
    def test_paging_offsets_and_total(self):
        ids, after = [], "0"
        while True:
            reply = search("contacts", {"limit": 8, "after": after}).json
            self.assertEqual(reply["total"], 30)
            ids.extend(r["id"] for r in reply["results"])
            if "paging" not in reply:
                break
            after = reply["paging"]["next"]["after"]
            self.assertEqual(after, str(len(ids)))
        self.assertEqual(ids, [r["id"] for r in dump("contacts")])  # creation order

    def test_page_limits(self):
        self.assertEqual(search("contacts", {}).json["results"].__len__(), 10)
        self.assertEqual(search("contacts", {"limit": 200}).status, 200)
        self.assertEqual(search("contacts", {"limit": 201}).status, 400)

    def test_ten_thousand_cap(self):
        stamp = 1_720_000_000_000
        control("bulk_stamp", {"type": "companies", "count": 10050, "modified_at": stamp})
        body = {"filterGroups": [{"filters": [
            {"propertyName": "hs_lastmodifieddate", "operator": "EQ", "value": str(stamp)}]}],
            "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
            "limit": 200}
        last_ok = search("companies", dict(body, after="9800"))
        self.assertEqual(last_ok.status, 200)
        self.assertEqual(last_ok.json["total"], 10050)
        past_cap = search("companies", dict(body, after="9900"))
        self.assertEqual(past_cap.status, 400)
        self.assertEqual(past_cap.json["category"], "VALIDATION_ERROR")
        self.assertEqual(search("companies", dict(body, after="10000", limit=1)).status, 400)
        self.assertEqual(control("stats").json["max_search_after"], 10000)

    def test_ties_ordered_by_hash_not_id(self):
        stamp = 1_710_000_000_000
        control("bulk_stamp", {"type": "contacts", "count": 30, "modified_at": stamp})
        body = {"sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "limit": 100}
        ids = [int(r["id"]) for r in search("contacts", body).json["results"]]
        self.assertEqual(len(ids), 30)
        self.assertNotEqual(ids, sorted(ids))
        self.assertEqual(ids, [int(r["id"]) for r in search("contacts", body).json["results"]])
        by_id = dict(body, sorts=[{"propertyName": "hs_object_id", "direction": "ASCENDING"}])
        ids_by_id = [int(r["id"]) for r in search("contacts", by_id).json["results"]]
        self.assertEqual(ids_by_id, sorted(ids))

    def test_descending_sort(self):
        body = {"sorts": [{"propertyName": "lastmodifieddate", "direction": "DESCENDING"}],
                "properties": ["lastmodifieddate"], "limit": 100}
        stamps = [r["updatedAt"] for r in search("contacts", body).json["results"]]
        self.assertEqual(stamps, sorted(stamps, reverse=True))

    def test_date_filters_accept_ms_and_iso(self):
        record = dump("invoices")[5]
        iso = record["properties"]["hs_lastmodifieddate"]
        ms = hubspot_server.ms_from_date_value(iso)
        for value in (str(ms), iso):
            reply = search("invoices", {"filterGroups": [{"filters": [
                {"propertyName": "hs_lastmodifieddate", "operator": "EQ", "value": value}]}]})
            self.assertIn(record["id"], [r["id"] for r in reply.json["results"]], value)
        between = search("invoices", {"filterGroups": [{"filters": [
            {"propertyName": "hs_lastmodifieddate", "operator": "BETWEEN",
             "value": str(ms), "highValue": str(ms)}]}]})
        self.assertIn(record["id"], [r["id"] for r in between.json["results"]])

    def test_operators(self):
        def total(otype, *filters, groups=None):
            body = {"filterGroups": groups or [{"filters": list(filters)}]}
            reply = search(otype, body)
            self.assertEqual(reply.status, 200, reply.body)
            return reply.json["total"]

        invoices = [r["properties"] for r in dump("invoices")]
        paid = sum(p["hs_invoice_status"] == "paid" for p in invoices)
        self.assertEqual(total("invoices", {"propertyName": "hs_invoice_status",
                                            "operator": "EQ", "value": "paid"}), paid)
        self.assertEqual(total("invoices", {"propertyName": "hs_invoice_status",
                                            "operator": "EQ", "value": "PAID"}), 0)
        self.assertEqual(total("invoices", {"propertyName": "hs_invoice_status",
                                            "operator": "IN", "values": ["paid", "open"]}),
                         sum(p["hs_invoice_status"] in ("paid", "open") for p in invoices))
        self.assertEqual(total("invoices", {"propertyName": "hs_invoice_status",
                                            "operator": "NOT_IN", "values": ["paid"]}),
                         20 - paid)
        self.assertEqual(total("contacts", {"propertyName": "lastname", "operator": "EQ",
                                            "value": "o'brien"}), 1)
        self.assertEqual(total("contacts", {"propertyName": "email",
                                            "operator": "NOT_HAS_PROPERTY"}), 1)
        self.assertEqual(total("contacts", {"propertyName": "email",
                                            "operator": "HAS_PROPERTY"}), 29)
        self.assertEqual(total("contacts", {"propertyName": "email",
                                            "operator": "CONTAINS_TOKEN", "value": "zoe*"}), 1)
        billed = sum(float(p["hs_amount_billed"]) > 100 for p in invoices)
        self.assertEqual(total("invoices", {"propertyName": "hs_amount_billed",
                                            "operator": "GT", "value": "100"}), billed)
        first_id = int(self.first_id("contacts"))
        self.assertEqual(total("contacts", {"propertyName": "hs_object_id", "operator": "GT",
                                            "value": str(first_id)}), 29)
        either = [{"filters": [{"propertyName": "hs_object_id", "operator": "EQ",
                                "value": str(first_id)}]},
                  {"filters": [{"propertyName": "lastname", "operator": "EQ",
                                "value": "O'Brien"}]}]
        self.assertEqual(total("contacts", groups=either), 2)

    def test_filter_count_and_body_limits(self):
        any_id = {"propertyName": "hs_object_id", "operator": "GT", "value": "0"}
        self.assertEqual(search("contacts", {"filterGroups": [{"filters": [any_id] * 6}] * 3})
                         .status, 200)
        self.assertEqual(search("contacts", {"filterGroups": [{"filters": [any_id]}] * 6})
                         .status, 400)
        self.assertEqual(search("contacts", {"filterGroups": [{"filters": [any_id] * 7}]})
                         .status, 400)
        self.assertEqual(search("contacts", {"filterGroups": [{"filters": [any_id] * 5}] * 4})
                         .status, 400)
        self.assertEqual(search("contacts", {"query": "x" * 3000}).status, 400)

    def test_archived_never_returned(self):
        contact_id = self.first_id("contacts")
        request("DELETE", f"/crm/v3/objects/contacts/{contact_id}")
        reply = search("contacts", {"limit": 100}).json
        self.assertEqual(reply["total"], 29)
        self.assertNotIn(contact_id, [r["id"] for r in reply["results"]])

    def test_index_lag(self):
        control("config", {"index_lag_ms": 400})
        contact = dump("contacts")[3]
        before = contact["properties"]["lastmodifieddate"]
        control("edit", {"type": "contacts", "id": contact["id"],
                         "properties": {"jobtitle": "Lagging"}})
        created = control("create", {"type": "contacts",
                                     "properties": {"email": "new@example.com"}}).json["id"]
        body = {"filterGroups": [{"filters": [{"propertyName": "hs_object_id",
                                               "operator": "IN",
                                               "values": [contact["id"], created]}]}],
                "properties": ["jobtitle"]}
        stale = search("contacts", body).json["results"]
        self.assertEqual([r["id"] for r in stale], [contact["id"]])
        self.assertEqual(stale[0]["properties"]["lastmodifieddate"], before)
        self.assertNotEqual(stale[0]["properties"].get("jobtitle"), "Lagging")
        fresh_get = request("GET", f"/crm/v3/objects/contacts/{contact['id']}?properties=jobtitle")
        self.assertEqual(fresh_get.json["properties"]["jobtitle"], "Lagging")
        time.sleep(0.45)
        fresh = {r["id"]: r for r in search("contacts", body).json["results"]}
        self.assertEqual(set(fresh), {contact["id"], created})
        self.assertEqual(fresh[contact["id"]]["properties"]["jobtitle"], "Lagging")

    def test_edit_on_search(self):
        target = dump("contacts")[-1]["id"]
        control("edit_on_search", {"type": "contacts", "after_search_requests": 2,
                                   "ids": [target], "properties": {"jobtitle": "Moved"}})
        body = {"sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "properties": ["jobtitle"], "limit": 10}
        search("contacts", body)
        self.assertNotEqual(request("GET", f"/crm/v3/objects/contacts/{target}?properties="
                                           "jobtitle").json["properties"].get("jobtitle"),
                            "Moved")
        search("contacts", dict(body, after="10"))
        moved = request("GET", f"/crm/v3/objects/contacts/{target}?properties=jobtitle").json
        self.assertEqual(moved["properties"]["jobtitle"], "Moved")
        last = search("contacts", dict(body, after="20")).json["results"][-1]
        self.assertEqual(last["id"], target)


class BatchReadTest(ServerTestCase):
    def test_all_found_not_in_input_order(self):
        ids = [r["id"] for r in dump("contacts")[:6]]
        reply = request("POST", "/crm/v3/objects/contacts/batch/read",
                        {"properties": ["email"], "inputs": [{"id": i} for i in ids]})
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.json["status"], "COMPLETE")
        returned = [r["id"] for r in reply.json["results"]]
        self.assertEqual(sorted(returned), sorted(ids))
        self.assertNotEqual(returned, ids)

    def test_some_missing_gives_207(self):
        existing = self.first_id("contacts")
        reply = request("POST", "/crm/v3/objects/contacts/batch/read",
                        {"inputs": [{"id": existing}, {"id": "2999999"}]})
        self.assertEqual(reply.status, 207)
        self.assertEqual(reply.json["numErrors"], 1)
        self.assertEqual(reply.json["errors"][0]["context"]["ids"], ["2999999"])
        self.assertEqual([r["id"] for r in reply.json["results"]], [existing])

    def test_none_found_gives_404(self):
        reply = request("POST", "/crm/v3/objects/contacts/batch/read",
                        {"inputs": [{"id": "2999998"}, {"id": "2999999"}]})
        self.assertEqual(reply.status, 404)

    def test_more_than_100_inputs(self):
        reply = request("POST", "/crm/v3/objects/contacts/batch/read",
                        {"inputs": [{"id": str(2000001 + i)} for i in range(101)]})
        self.assertEqual(reply.status, 400)
        self.assertEqual(reply.json["category"], "VALIDATION_ERROR")

    def test_id_property_email(self):
        reply = request("POST", "/crm/v3/objects/contacts/batch/read",
                        {"idProperty": "email", "inputs": [{"id": "ZOE.MULLER@example.com"}]})
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.json["results"][0]["properties"]["email"],
                         "zoe.muller@example.com")


class MergeAndDeleteTest(ServerTestCase):
    def invoice_linked_to_contact(self):
        rows = control("dump_associations?from_type=invoices&to_type=contacts").body
        row = json.loads(rows.decode().splitlines()[0])
        return str(row["from_id"]), str(row["to_id"])

    def test_merge_creates_new_record(self):
        invoice_id, contact_id = self.invoice_linked_to_contact()
        other = next(r["id"] for r in dump("contacts") if r["id"] != contact_id)
        reply = request("POST", "/crm/v3/objects/contacts/merge",
                        {"primaryObjectId": contact_id, "objectIdToMerge": other})
        self.assertEqual(reply.status, 200)
        new_id = reply.json["id"]
        self.assertGreater(int(new_id), int(max(contact_id, other)))
        merged = request("GET", f"/crm/v3/objects/contacts/{new_id}"
                                "?properties=hs_merged_object_ids").json
        self.assertEqual(merged["properties"]["hs_merged_object_ids"].split(";"),
                         sorted([contact_id, other], key=int))
        for old in (contact_id, other):
            self.assertEqual(request("GET", f"/crm/v3/objects/contacts/{old}").json["id"],
                             new_id)
        batch = request("POST", "/crm/v3/objects/contacts/batch/read",
                        {"inputs": [{"id": contact_id}]}).json
        self.assertEqual(batch["results"][0]["id"], new_id)
        live = [r["id"] for r in dump("contacts")]
        self.assertNotIn(contact_id, live)
        self.assertNotIn(other, live)
        self.assertEqual(dump("contacts", archived=True), [])
        listed = search("contacts", {"limit": 100}).json["results"]
        self.assertNotIn(contact_id, [r["id"] for r in listed])
        links = request("GET", f"/crm/v4/objects/invoices/{invoice_id}/associations/contacts")
        self.assertIn(int(new_id), [r["toObjectId"] for r in links.json["results"]])

    def test_second_merge_keeps_earlier_ids(self):
        ids = [r["id"] for r in dump("companies")[:3]]
        first = control("merge", {"type": "companies", "primary": ids[0],
                                  "secondary": ids[1]}).json["id"]
        second = control("merge", {"type": "companies", "primary": first,
                                   "secondary": ids[2]}).json["id"]
        record = request("GET", f"/crm/v3/objects/companies/{ids[0]}"
                                "?properties=hs_merged_object_ids").json
        self.assertEqual(record["id"], second)
        self.assertEqual(set(record["properties"]["hs_merged_object_ids"].split(";")),
                         {ids[0], ids[1], ids[2], first})

    def test_archive_keeps_last_modified_and_restore_bumps_it(self):
        contact = dump("contacts")[0]
        request("DELETE", f"/crm/v3/objects/contacts/{contact['id']}")
        archived = dump("contacts", archived=True)[0]
        self.assertEqual(archived["updatedAt"], contact["updatedAt"])
        self.assertEqual(request("GET", f"/crm/v3/objects/contacts/{contact['id']}").status,
                         404)
        control("restore", {"type": "contacts", "id": contact["id"]})
        restored = request("GET", f"/crm/v3/objects/contacts/{contact['id']}").json
        self.assertGreater(restored["updatedAt"], contact["updatedAt"])

    def test_gdpr_delete_removes_everywhere(self):
        contact_id = self.first_id("contacts")
        reply = request("POST", "/crm/v3/objects/contacts/gdpr-delete",
                        {"objectId": contact_id})
        self.assertEqual(reply.status, 204)
        self.assertNotIn(contact_id, [r["id"] for r in dump("contacts")])
        self.assertEqual(dump("contacts", archived=True), [])
        self.assertEqual(request("GET", f"/crm/v3/objects/contacts/{contact_id}").status, 404)
        self.assertEqual(search("contacts", {}).json["total"], 29)

    def test_patch_bumps_last_modified(self):
        contact = dump("contacts")[0]
        reply = request("PATCH", f"/crm/v3/objects/contacts/{contact['id']}",
                        {"properties": {"jobtitle": "CTO"}})
        self.assertEqual(reply.status, 200)
        self.assertGreater(reply.json["updatedAt"], contact["updatedAt"])
        self.assertEqual(reply.json["properties"]["lastmodifieddate"], reply.json["updatedAt"])
        unknown = request("PATCH", f"/crm/v3/objects/contacts/{contact['id']}",
                          {"properties": {"no_such_property": "x"}})
        self.assertEqual(unknown.status, 400)


class AssociationTest(ServerTestCase):
    def test_batch_read_pages_per_record(self):
        control("config", {"assoc_page_size": 2})
        invoices = [r["id"] for r in dump("invoices")]
        expected = {}
        for line in control("dump_associations?from_type=invoices&to_type=line_items") \
                .body.decode().splitlines():
            row = json.loads(line)
            expected.setdefault(str(row["from_id"]), []).append(row["to_id"])
        collected = {}
        pending = [{"id": i} for i in invoices]
        rounds = 0
        while pending:
            rounds += 1
            reply = request("POST", "/crm/v4/associations/invoices/line_items/batch/read",
                            {"inputs": pending}).json
            self.assertEqual(reply["status"], "COMPLETE")
            pending = []
            for result in reply["results"]:
                from_id = result["from"]["id"]
                for row in result["to"]:
                    self.assertIsInstance(row["toObjectId"], int)
                    self.assertEqual(row["associationTypes"],
                                     [{"category": "HUBSPOT_DEFINED", "typeId": 409,
                                       "label": None}])
                    collected.setdefault(from_id, []).append(row["toObjectId"])
                if "paging" in result:
                    pending.append({"id": from_id, "after": result["paging"]["next"]["after"]})
        self.assertEqual(collected, expected)
        self.assertGreater(rounds, 1)

    def test_records_without_associations_omitted(self):
        contact_without = None
        with_company = {json.loads(line)["from_id"] for line in control(
            "dump_associations?from_type=contacts&to_type=companies").body.decode().splitlines()}
        for record in dump("contacts"):
            if int(record["id"]) not in with_company:
                contact_without = record["id"]
                break
        self.assertIsNotNone(contact_without)
        reply = request("POST", "/crm/v4/associations/contacts/companies/batch/read",
                        {"inputs": [{"id": contact_without}]}).json
        self.assertEqual(reply["results"], [])

    def test_several_type_rows_per_pair(self):
        rows = [json.loads(line) for line in control(
            "dump_associations?from_type=contacts&to_type=companies").body.decode().splitlines()]
        billing = [r for r in rows if r["type_id"] == 28]
        self.assertTrue(billing)
        self.assertEqual(billing[0]["category"], "USER_DEFINED")
        self.assertEqual(billing[0]["label"], "Billing contact")
        primary = {(r["from_id"], r["to_id"]) for r in rows if r["type_id"] == 1}
        unlabeled = {(r["from_id"], r["to_id"]) for r in rows if r["type_id"] == 279}
        self.assertTrue(primary <= unlabeled)
        self.assertTrue(len(unlabeled) > len(primary))
        back = [json.loads(line) for line in control(
            "dump_associations?from_type=companies&to_type=contacts").body.decode().splitlines()]
        self.assertEqual(sorted((r["to_id"], r["from_id"]) for r in back if r["type_id"] == 2),
                         sorted(primary))

    def test_put_and_delete_do_not_bump_last_modified(self):
        invoice = dump("invoices")[0]
        line_item = control("create", {"type": "line_items",
                                       "properties": {"name": "Extra"}}).json["id"]
        body = [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 409}]
        path = f"/crm/v4/objects/invoices/{invoice['id']}/associations/line_items/{line_item}"
        self.assertEqual(request("PUT", path, body).status, 201)
        linked = request("GET", f"/crm/v4/objects/line_items/{line_item}/associations/invoices")
        self.assertEqual(linked.json["results"][0]["toObjectId"], int(invoice["id"]))
        self.assertEqual(linked.json["results"][0]["associationTypes"][0]["typeId"], 410)
        self.assertEqual(request("GET", f"/crm/v3/objects/invoices/{invoice['id']}")
                         .json["updatedAt"], invoice["updatedAt"])
        self.assertEqual(request("DELETE", path, body).status, 204)
        unlinked = request("GET", f"/crm/v4/objects/line_items/{line_item}/associations/invoices")
        self.assertEqual(unlinked.json["results"], [])
        wrong = [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 410}]
        self.assertEqual(request("PUT", path, wrong).status, 400)

    def test_batch_input_limit(self):
        reply = request("POST", "/crm/v4/associations/invoices/line_items/batch/read",
                        {"inputs": [{"id": str(i)} for i in range(1001)]})
        self.assertEqual(reply.status, 400)


class FaultTest(ServerTestCase):
    def set_faults(self, *faults):
        control("faults", {"faults": list(faults)})

    def test_status_fault_with_skip_and_count(self):
        self.set_faults({"path": "/objects/contacts$", "skip": 1, "count": 2, "kind": "status",
                         "status": 503})
        statuses = [request("GET", "/crm/v3/objects/contacts").status for _ in range(4)]
        self.assertEqual(statuses, [200, 503, 503, 200])
        self.set_faults({"path": "contacts", "kind": "status", "status": 503})
        reply = request("GET", "/crm/v3/objects/contacts")
        self.assertEqual(reply.json["category"], "SERVICE_UNAVAILABLE")
        self.assertEqual(reply.json["status"], "error")

    def test_method_filter(self):
        self.set_faults({"path": "contacts", "method": "POST", "kind": "status", "status": 500})
        self.assertEqual(request("GET", "/crm/v3/objects/contacts").status, 200)
        self.assertEqual(search("contacts", {}).status, 500)

    def test_html_fault(self):
        self.set_faults({"path": "search", "kind": "html", "status": 502})
        reply = search("contacts", {})
        self.assertEqual(reply.status, 502)
        self.assertTrue(reply.header("Content-Type").startswith("text/html"))
        self.assertIn(b"<html>", reply.body)

    def test_reset_fault(self):
        self.set_faults({"path": "contacts", "kind": "reset"})
        with self.assertRaises(ConnectionError):
            request("GET", "/crm/v3/objects/contacts")
        self.assertEqual(request("GET", "/crm/v3/objects/contacts").status, 200)

    def test_hang_does_not_block_others(self):
        self.set_faults({"path": "search", "kind": "hang", "ms": 800})
        result = {}
        worker = threading.Thread(target=lambda: result.update(reply=search("contacts", {})))
        started = time.monotonic()
        worker.start()
        time.sleep(0.1)
        self.assertEqual(request("GET", "/crm/v3/objects/contacts").status, 200)
        self.assertLess(time.monotonic() - started, 0.6)
        worker.join(5)
        self.assertEqual(result["reply"].status, 200)
        self.assertGreaterEqual(time.monotonic() - started, 0.8)

    def test_hang_forever_released_by_new_faults(self):
        self.set_faults({"path": "search", "kind": "hang", "ms": 0})
        errors = []

        def hung_search():
            try:
                search("contacts", {})
            except (ConnectionError, http.client.HTTPException) as exc:
                errors.append(exc)

        worker = threading.Thread(target=hung_search)
        worker.start()
        time.sleep(0.2)
        self.assertTrue(worker.is_alive())
        self.set_faults()
        worker.join(5)
        self.assertFalse(worker.is_alive())
        self.assertEqual(len(errors), 1)

    def test_truncate_fault(self):
        self.set_faults({"path": "contacts", "kind": "truncate"})
        with self.assertRaises(http.client.IncompleteRead):
            request("GET", "/crm/v3/objects/contacts")

    def test_malformed_fault(self):
        self.set_faults({"path": "contacts", "kind": "malformed"})
        reply = request("GET", "/crm/v3/objects/contacts")
        self.assertEqual(reply.status, 200)
        self.assertTrue(reply.header("Content-Type").startswith("application/json"))
        self.assertTrue(reply.body.startswith(b'{"results": ['))
        with self.assertRaises(ValueError):
            json.loads(reply.body)

    def test_nul_fault(self):
        self.set_faults({"path": "search", "kind": "nul"})
        reply = search("contacts", {"properties": ["email"]})
        self.assertEqual(reply.status, 200)
        self.assertIn(b"\\u0000", reply.body)
        first = reply.json["results"][0]["properties"]
        self.assertIn("\x00", next(v for v in first.values() if isinstance(v, str)))

    def test_rate429_fault_per_policy(self):
        for policy in ("TEN_SECONDLY_ROLLING", "SECONDLY", "DAILY"):
            self.set_faults({"path": "contacts", "kind": "rate429", "policy": policy})
            reply = request("GET", "/crm/v3/objects/contacts")
            self.assertEqual(reply.status, 429, policy)
            self.assertEqual(reply.json["policyName"], policy)
            self.assertEqual(reply.json["errorType"], "RATE_LIMIT")
        self.assertEqual(control("stats").json["rate_limited"],
                         {"TEN_SECONDLY_ROLLING": 1, "SECONDLY": 1, "DAILY": 1})


class RateLimitTest(ServerTestCase):
    def test_ten_secondly(self):
        control("config", {"ten_secondly": 3, "retry_after_seconds": 7})
        replies = [request("GET", "/crm/v3/objects/contacts") for _ in range(4)]
        self.assertEqual([r.status for r in replies], [200, 200, 200, 429])
        self.assertEqual(replies[1].header("X-HubSpot-RateLimit-Remaining"), "1")
        body = replies[3].json
        self.assertEqual(body["policyName"], "TEN_SECONDLY_ROLLING")
        self.assertEqual(body["message"], "You have reached your ten_secondly_rolling limit.")
        self.assertTrue(body["requestId"])
        self.assertEqual(replies[3].header("Retry-After"), "7")
        self.assertEqual(search("contacts", {}).status, 200)  # search has its own limit

    def test_search_per_second(self):
        control("config", {"search_per_second": 2})
        statuses = [search("contacts", {}).status for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 429])
        reply = search("contacts", {})
        self.assertEqual(reply.json["policyName"], "SECONDLY")
        self.assertEqual(reply.json["message"], "You have reached your secondly limit.")
        self.assertIn("groupName", reply.json)
        self.assertIsNone(reply.header("Retry-After"))
        time.sleep(1.05)
        self.assertEqual(search("contacts", {}).status, 200)

    def test_daily(self):
        control("config", {"daily": 3})
        statuses = [request("GET", "/crm/v3/objects/contacts").status for _ in range(2)]
        statuses.append(search("contacts", {}).status)
        reply = request("GET", "/crm/v3/objects/contacts")
        self.assertEqual(statuses, [200, 200, 200])
        self.assertEqual(reply.status, 429)
        self.assertEqual(reply.json["policyName"], "DAILY")
        self.assertEqual(control("stats").json["rate_limited"], {"DAILY": 1})

    def test_control_api_never_limited(self):
        control("config", {"ten_secondly": 1})
        for _ in range(5):
            control("health")


class ControlTest(ServerTestCase):
    def test_stats_record_requests(self):
        control("stats/clear")
        body = {"filterGroups": [{"filters": [{"propertyName": "hs_object_id",
                                               "operator": "GT", "value": "0"}]}],
                "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                "limit": 5, "after": "5"}
        search("contacts", body)
        request("GET", "/crm/v3/objects/companies?limit=3")
        stats = control("stats").json
        self.assertEqual(stats["counts"], {"search": 1, "list": 1})
        searched, listed = stats["requests"]
        self.assertEqual(searched["filters"], body["filterGroups"])
        self.assertEqual(searched["sort"], body["sorts"][0])
        self.assertEqual(searched["after"], "5")
        self.assertEqual(searched["limit"], 5)
        self.assertEqual(searched["type"], "contacts")
        self.assertEqual(listed["kind"], "list")
        self.assertEqual(listed["limit"], 3)
        self.assertEqual(listed["status"], 200)

    def test_bulk_stamp_is_fast(self):
        control("reset", {"portal": "demo", "seed": 1})
        started = time.perf_counter()
        reply = control("bulk_stamp", {"type": "companies", "count": 10050,
                                       "modified_at": 1_735_000_000_000}).json
        self.assertLess(time.perf_counter() - started, 3.0)
        self.assertEqual(reply["reused"] + reply["created"], 10050)
        self.assertEqual(len(dump("companies")), 10050)

    def test_create_with_associations(self):
        invoice = dump("invoices")[0]["id"]
        created = control("create", {"type": "line_items", "properties": {"name": "Add-on"},
                                     "associations": [{"to_type": "invoices",
                                                       "to_id": invoice, "type_id": 410}]})
        rows = [json.loads(line) for line in control(
            "dump_associations?from_type=invoices&to_type=line_items").body.decode().splitlines()]
        self.assertIn((int(invoice), int(created.json["id"])),
                      [(r["from_id"], r["to_id"]) for r in rows])

    def test_bad_control_requests(self):
        self.assertEqual(request("POST", "/_mock/config", {"no_such_key": 1}).status, 400)
        self.assertEqual(request("POST", "/_mock/faults",
                                 {"faults": [{"kind": "explode"}]}).status, 400)
        self.assertEqual(request("POST", "/_mock/edit", {"type": "contacts", "id": "1",
                                                         "properties": {}}).status, 404)


class DemoPortalTest(ServerTestCase):
    def test_counts_and_full_search_read(self):
        control("reset", {"portal": "demo", "seed": 1})
        started = time.perf_counter()
        totals = {}
        for otype in ("companies", "contacts", "invoices", "line_items"):
            after, seen = "0", 0
            while True:
                reply = search(otype, {"limit": 200, "after": after, "sorts": [
                    {"propertyName": "hs_object_id", "direction": "ASCENDING"}]}).json
                seen += len(reply["results"])
                if "paging" not in reply:
                    break
                after = reply["paging"]["next"]["after"]
            totals[otype] = seen
        self.assertLess(time.perf_counter() - started, 5.0)
        self.assertEqual(totals["companies"], 600)
        self.assertEqual(totals["contacts"], 2000)
        self.assertEqual(totals["invoices"], 1124)
        self.assertGreater(totals["line_items"], 3000)
        self.assertLess(totals["line_items"], 3800)


class CtlTest(ServerTestCase):
    CTL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hubspot_ctl.py")

    def run_ctl(self, *args):
        env = dict(os.environ, HUBSPOT_MOCK_URL=f"http://127.0.0.1:{PORT}")
        return subprocess.run([sys.executable, self.CTL, *args], env=env,
                              capture_output=True, text=True, timeout=20)

    def test_health_and_dump(self):
        health = self.run_ctl("health")
        self.assertEqual(health.returncode, 0, health.stderr)
        self.assertEqual(json.loads(health.stdout), {"ok": True, "portal": "small"})
        dumped = self.run_ctl("dump", '{"type": "companies"}')
        self.assertEqual(len(dumped.stdout.splitlines()), 12)

    def test_error_exit_code(self):
        failed = self.run_ctl("edit", '{"type": "contacts", "id": "1", "properties": {}}')
        self.assertEqual(failed.returncode, 1)
        self.assertEqual(self.run_ctl("reset", "{not json").returncode, 2)
        remote = self.run_ctl("--url", "http://192.0.2.1:80", "health")
        self.assertEqual(remote.returncode, 2)


if __name__ == "__main__":
    unittest.main()
