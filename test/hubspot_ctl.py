#!/usr/bin/env python3
"""Command-line client for the control API of test/hubspot_server.py.

Shell scripts and psql's \\! use it to drive the local HubSpot test server:

    python3 test/hubspot_ctl.py [--url URL] VERB [JSON]

VERB is a path under /_mock/ (reset, config, faults, edit, create, archive,
restore, merge, gdpr_delete, associate, dissociate, bulk_stamp,
edit_on_search, stats/clear). JSON is posted as the body; config '{}'
prints the current configuration. For the read verbs
(stats, dump, dump_associations, health) the JSON object's keys become query
parameters of a GET, e.g.  dump '{"type":"contacts"}'.

The response body is printed to stdout. The exit code is 0 for HTTP status
below 400, 1 for HTTP errors and 2 when the request could not be sent.
The URL defaults to $HUBSPOT_MOCK_URL, else http://127.0.0.1:18080, and must
point at this machine (the mock server binds 127.0.0.1 only).
"""

import argparse
import http.client
import json
import os
import sys
import time
from urllib.parse import urlencode, urlsplit

DEFAULT_URL = "http://127.0.0.1:18080"
GET_VERBS = {"stats", "dump", "dump_associations", "health"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class CtlError(Exception):
    """A request that could not be built or sent; the message gives the reason."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Send one request to the control API (/_mock/) of the local HubSpot "
                    "test server.")
    parser.add_argument("--url", default=os.environ.get("HUBSPOT_MOCK_URL", DEFAULT_URL),
                        help="server base URL (default $HUBSPOT_MOCK_URL or %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the response (default 30)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="retry a refused connection for up to this many seconds, "
                             "e.g. while the server starts (default 0)")
    parser.add_argument("verb", help="control path under /_mock/, e.g. reset or stats")
    parser.add_argument("json", nargs="?", default=None,
                        help="JSON object: the POST body, or the query of a GET verb")
    return parser.parse_args(argv)


def server_address(url):
    """Return (host, port) of a loopback http URL; raise CtlError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise CtlError(f"invalid server URL {url!r}; expected http://127.0.0.1:PORT")
    if parts.hostname not in LOOPBACK_HOSTS:
        raise CtlError(f"server URL {url!r} is not on this machine; the test server "
                       "listens on 127.0.0.1 only")
    return parts.hostname, parts.port or 80


def build_request(verb, raw_json):
    """Return (method, path, body bytes or None) for a verb and its JSON argument."""
    verb = verb.strip("/")
    try:
        payload = json.loads(raw_json) if raw_json else {}
    except json.JSONDecodeError as exc:
        raise CtlError(f"invalid JSON argument: {exc}") from exc
    if verb in GET_VERBS:
        if not isinstance(payload, dict):
            raise CtlError(f"the argument of {verb} must be a JSON object of query "
                           "parameters")
        query = urlencode({k: str(v).lower() if isinstance(v, bool) else v
                           for k, v in payload.items()})
        return "GET", f"/_mock/{verb}" + (f"?{query}" if query else ""), None
    return "POST", "/_mock/" + verb, json.dumps(payload).encode("utf-8")


def send(host, port, method, path, body, timeout, wait_seconds):
    """Send the request and return (status, body bytes), retrying refusals while waiting."""
    deadline = time.monotonic() + wait_seconds
    while True:
        # http.client talks to the host directly; urllib would honour proxy
        # variables and could send the request to another machine.
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except ConnectionRefusedError as exc:
            if time.monotonic() >= deadline:
                raise CtlError(f"connection to {host}:{port} refused; is the server "
                               "running?") from exc
            time.sleep(0.1)
        except OSError as exc:
            raise CtlError(f"request {method} {path} to {host}:{port} failed: {exc}") from exc
        finally:
            connection.close()


def main(argv=None):
    args = parse_args(argv)
    try:
        host, port = server_address(args.url)
        method, path, body = build_request(args.verb, args.json)
        status, data = send(host, port, method, path, body, args.timeout, args.wait)
    except CtlError as exc:
        print(f"hubspot_ctl: {exc}", file=sys.stderr)
        return 2
    text = data.decode("utf-8", errors="replace")
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    if status >= 400:
        print(f"hubspot_ctl: {method} {path} failed with HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
