"""A small Opsgenie Alert API v2 over real HTTP, built from Opsgenie's documentation (docs.opsgenie.com
"Alert API"), as strict as the real one.

`Authorization: GenieKey <key>` on every call (401 "Could not authenticate" without a known key,
403 for a key that may not write); JSON bodies. Create (`POST /v2/alerts`): message required, at
most 130 characters; alias at most 512; description at most 15000; priority P1..P5; at most 20
tags of at most 50 characters; details a map of strings; an open alert with the same alias is
deduplicated (its count goes up, no new alert). Close and notes (`POST
/v2/alerts/{identifier}/close|notes?identifierType=id|alias|tiny`); a note needs `note`. Every
accepted request is asynchronous: 202 `{"result": "Request will be processed", "took",
"requestId"}`; a bad one is a 422 `{"message", "took", "requestId"}`; 429 when throttled.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from tests.http_server import serving

PRIORITIES = {"P1", "P2", "P3", "P4", "P5"}


@dataclass
class OgAlert:
    alias: str
    message: str
    priority: str
    body: dict[str, Any]
    status: str = "open"
    count: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass
class FakeOpsgenie:
    url: str = ""
    keys: set[str] = field(default_factory=set)
    read_only_keys: set[str] = field(default_factory=set)
    alerts: list[OgAlert] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, list[str]], dict[str, str], bytes]] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # requestId -> what processing it did
    answer_next: list[int] = field(default_factory=list)
    slow_once: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open_alert(self, alias: str) -> OgAlert | None:
        return next((a for a in self.alerts if a.alias == alias and a.status == "open"), None)


def _create_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        return "Message can not be empty."
    if len(message) > 130:
        return "Message can not be longer than 130 characters."
    alias = body.get("alias")
    if alias is not None and (not isinstance(alias, str) or len(alias) > 512):
        return "Alias can not be longer than 512 characters."
    if len(str(body.get("description") or "")) > 15000:
        return "Description can not be longer than 15000 characters."
    if "priority" in body and body["priority"] not in PRIORITIES:
        return f"Priority should be one of {sorted(PRIORITIES)}"
    tags = body.get("tags", [])
    if not isinstance(tags, list) or len(tags) > 20 or any(not isinstance(t, str) or len(t) > 50 for t in tags):
        return "Tags can be at most 20, each at most 50 characters."
    details = body.get("details", {})
    if not isinstance(details, dict) or any(not isinstance(v, str) for v in details.values()):
        return "Details should be a map of strings."
    return None


def _handler(api: FakeOpsgenie) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any], request_id: str = "") -> None:
            request_id = request_id or str(uuid.uuid4())
            data = json.dumps({**body, "took": 0.01, "requestId": request_id}).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            with api.lock:
                api.requests.append((self.command, parts.path, query, headers, raw))
                forced = api.answer_next.pop(0) if api.answer_next else None
                slow, api.slow_once = api.slow_once, 0.0
            if forced is not None:
                self._send(forced, {"message": "Too many requests" if forced == 429 else "Internal error"})
                return
            code, body, outcome = self._route(parts.path, query, headers, raw)
            request_id = str(uuid.uuid4())
            if outcome:  # recorded before the answer, so a client that has it can read it
                with api.lock:
                    api.outcomes[request_id] = outcome
            if slow:  # handled (and recorded now, not into a later test); the answer comes too late
                time.sleep(slow)
            self._send(code, body, request_id)

        def _route(
            self, path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes
        ) -> tuple[int, dict[str, Any], str]:
            auth = headers.get("authorization", "")
            key = auth[len("GenieKey "):] if auth.startswith("GenieKey ") else None
            if key not in api.keys and key not in api.read_only_keys:
                return 401, {"message": "Could not authenticate"}, ""
            if self.command != "POST":
                return 404, {"message": "Not found"}, ""
            if key in api.read_only_keys:
                return 403, {"message": "You are not authorized to take this action."}, ""
            if not headers.get("content-type", "").startswith("application/json"):
                return 415, {"message": "Content-Type must be application/json"}, ""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return 400, {"message": "Could not parse the request body."}, ""
            segments = [unquote(s) for s in path.strip("/").split("/")]
            if segments == ["v2", "alerts"]:
                return self._create(body)
            if len(segments) == 4 and segments[:2] == ["v2", "alerts"] and segments[3] in ("close", "notes"):
                kind = query.get("identifierType", ["id"])[0]
                if kind not in ("id", "alias", "tiny"):
                    return 422, {"message": "identifierType should be one of [id, alias, tiny]"}, ""
                if not isinstance(body, dict):
                    return 422, {"message": "Request body must be a JSON object."}, ""
                return self._act(segments[3], segments[2], kind, body)
            return 404, {"message": "Not found"}, ""

        def _create(self, body: Any) -> tuple[int, dict[str, Any], str]:
            problem = _create_problem(body)
            if problem:
                return 422, {"message": problem}, ""
            alias = body.get("alias") or body["message"]
            with api.lock:
                existing = api.open_alert(alias)
                if existing is not None:
                    existing.count += 1
                    outcome = f"deduplicated {alias}"
                else:
                    api.alerts.append(OgAlert(alias, body["message"], body.get("priority", "P3"), body))
                    outcome = f"created {alias}"
            return 202, {"result": "Request will be processed"}, outcome

        def _act(self, what: str, identifier: str, kind: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
            if what == "notes" and (not isinstance(body.get("note"), str) or not body["note"]):
                return 422, {"message": "Note can not be empty."}, ""
            with api.lock:
                matching = [a for a in api.alerts if a.alias == identifier] if kind == "alias" else []
                alert = api.open_alert(identifier) if what == "close" else (matching[-1] if matching else None)
                if what == "close" and alert is not None:
                    alert.status = "closed"
                if what == "notes" and alert is not None:
                    alert.notes.append(body["note"])
            # Asynchronous: accepted even when no alert matches; the request's status says so later.
            return 202, {"result": "Request will be processed"}, f"{what} {identifier}: {'done' if alert else 'no alert'}"

        do_GET = do_POST = do_PUT = do_DELETE = _handle

    return Handler


def serve(api: FakeOpsgenie) -> Iterator[FakeOpsgenie]:
    with serving(_handler(api)) as api.url:
        yield api
