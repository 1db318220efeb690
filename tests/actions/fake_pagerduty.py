"""A small PagerDuty over real HTTP: the Events API v2 (`POST /v2/enqueue`) and the few REST API v2
endpoints `pagerduty.note` uses, built from PagerDuty's documentation, as strict as the real one.

Events API (developer.pagerduty.com, "Send an Alert Event" and the Events API v2 overview):
routing_key is a 32-character integration key; event_action is trigger, acknowledge or resolve;
a trigger needs payload.summary (at most 1024), payload.source and payload.severity (critical,
error, warning, info); dedup_key at most 255; images need an https src, links an href. A valid
event is a 202 `{"status": "success", "message": "Event processed", "dedup_key"}`; an invalid one a
400 `{"status": "invalid event", "message": "Event object is invalid", "errors": [..]}`; 429 when
throttled. A trigger whose dedup_key names an open alert is added to it (no new page); a resolve
or acknowledge of an unknown or resolved key is accepted and dropped.

REST API: `Authorization: Token token=<key>`, an Accept of `application/vnd.pagerduty+json;version=2`
(or application/json), JSON bodies, and a `From:` header naming a user's email on writes; errors
are `{"error": {"message", "code", "errors"}}` (1008 requester user not found, 2001 invalid input,
2006 authentication failed, 2010 access denied (a read-only token writing), 2100 not found).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

from tests.http_server import serving

SEVERITIES = {"critical", "error", "warning", "info"}
ACTIONS = {"trigger", "acknowledge", "resolve"}
REST_ACCEPT = {"application/vnd.pagerduty+json;version=2", "application/json"}


@dataclass
class Alert:
    routing_key: str
    dedup_key: str
    incident_id: str
    summary: str
    status: str = "triggered"
    log: list[str] = field(default_factory=lambda: ["trigger"])
    notes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FakePagerDuty:
    url: str = ""
    routing_keys: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    read_only_tokens: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)  # emails a From header may name
    events: list[dict[str, Any]] = field(default_factory=list)  # every valid event, in order
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers
    alerts: list[Alert] = field(default_factory=list)
    answer_next: list[int] = field(default_factory=list)  # statuses to answer before handling (429, 500)
    slow_once: float = 0.0  # seconds to wait after handling the next request, before answering
    slow_method: str | None = None  # only a request with this method is slowed (None: any)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pages(self) -> list[Alert]:
        """Alerts opened, i.e. pages sent."""
        return list(self.alerts)

    def open_alert(self, routing_key: str, dedup_key: str) -> Alert | None:
        for alert in self.alerts:
            if (alert.routing_key, alert.dedup_key) == (routing_key, dedup_key) and alert.status != "resolved":
                return alert
        return None


def _event_errors(event: Any, api: FakePagerDuty) -> list[str]:
    if not isinstance(event, dict):
        return ["Event object must be a JSON object"]
    errors = []
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    elif key not in api.routing_keys:
        errors.append("Invalid routing key")
    if event.get("event_action") not in ACTIONS:
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not dedup or len(dedup) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if event.get("event_action") in ("acknowledge", "resolve") and not dedup:
        errors.append("'dedup_key' is required for acknowledge and resolve events")
    if event.get("event_action") == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary:
                errors.append("'payload.summary' is missing or blank")
            elif len(summary) > 1024:
                errors.append("'payload.summary' is too long (max 1024)")
            if not isinstance(payload.get("source"), str) or not payload.get("source"):
                errors.append("'payload.source' is missing or blank")
            if payload.get("severity") not in SEVERITIES:
                errors.append("'payload.severity' is invalid (must be one of: critical, error, warning, info)")
            details = payload.get("custom_details")
            if details is not None and not isinstance(details, dict):
                errors.append("'payload.custom_details' must be an object")
        for image in event.get("images") or []:
            if not isinstance(image, dict) or not str(image.get("src", "")).startswith("https://"):
                errors.append("'images[].src' must be an https URL")
        for link in event.get("links") or []:
            if not isinstance(link, dict) or not link.get("href"):
                errors.append("'links[].href' is required")
    return errors


def _handler(api: FakePagerDuty) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _rest_error(self, code: int, message: str, number: int, errors: list[str] | None = None) -> None:
            self._send(code, {"error": {"message": message, "code": number, **({"errors": errors} if errors else {})}})

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            with api.lock:
                api.requests.append((self.command, parts.path, headers))
                forced = api.answer_next.pop(0) if api.answer_next else None
                slow = api.slow_once if api.slow_method in (None, self.command) else 0.0
                if slow:
                    api.slow_once = 0.0
            if forced is not None:
                body = {"status": "throttle event", "message": "Requests for this service are arriving too quickly."}
                self._send(forced, body if forced == 429 else {"status": "error", "message": "internal error"})
                return
            if parts.path == "/v2/enqueue" and self.command == "POST":
                code, body = self._enqueue(headers, raw)
            elif parts.path.startswith("/incidents"):
                code, body = self._rest(parts.path, parse_qs(parts.query), headers, raw)
            else:
                code, body = 404, {"error": {"message": "Not Found", "code": 2100}}
            if slow:
                time.sleep(slow)  # handled and recorded; the answer comes too late for the client
            self._send(code, body)

        def _enqueue(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
            invalid = {"status": "invalid event", "message": "Event object is invalid"}
            if not headers.get("content-type", "").startswith("application/json"):
                return 400, {**invalid, "errors": ["Content-Type must be application/json"]}
            try:
                event = json.loads(raw)
            except ValueError:
                return 400, {**invalid, "errors": ["Could not parse JSON"]}
            errors = _event_errors(event, api)
            if errors:
                return 400, {**invalid, "errors": errors}
            with api.lock:
                api.events.append(event)
                dedup = event.get("dedup_key") or uuid.uuid4().hex
                alert = api.open_alert(event["routing_key"], dedup)
                action = event["event_action"]
                if action == "trigger":
                    if alert is None:
                        incident = "P" + uuid.uuid4().hex[:6].upper()
                        summary = event["payload"]["summary"]
                        api.alerts.append(Alert(event["routing_key"], dedup, incident, summary))
                    else:
                        alert.log.append("trigger")
                elif alert is not None:  # acknowledge / resolve of an open alert; else dropped
                    alert.log.append(action)
                    alert.status = "resolved" if action == "resolve" else "acknowledged"
            return 202, {"status": "success", "message": "Event processed", "dedup_key": dedup}

        def _rest(self, path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
            auth = headers.get("authorization", "")
            token = auth[len("Token token="):] if auth.startswith("Token token=") else None
            if token not in api.tokens and token not in api.read_only_tokens:
                return 401, {"error": {"message": "Authentication failed", "code": 2006}}
            if headers.get("accept") not in REST_ACCEPT:
                return 406, {"error": {"message": "Unsupported Accept header", "code": 2001}}
            segments = path.strip("/").split("/")
            if segments == ["incidents"] and self.command == "GET":
                keys = query.get("incident_key", [])
                with api.lock:
                    found = [a for a in api.alerts if not keys or a.dedup_key in keys]
                incidents = [{"id": a.incident_id, "incident_key": a.dedup_key, "status": a.status} for a in found]
                return 200, {"incidents": incidents, "limit": 25, "offset": 0, "more": False, "total": None}
            if len(segments) == 3 and segments[0] == "incidents" and segments[2] == "notes":
                with api.lock:
                    alert = next((a for a in api.alerts if a.incident_id == segments[1]), None)
                if alert is None:
                    return 404, {"error": {"message": "Not Found", "code": 2100}}
                if self.command == "GET":
                    return 200, {"notes": list(alert.notes)}
                if self.command == "POST":
                    if token in api.read_only_tokens:
                        return 403, {"error": {"message": "Access Denied", "code": 2010}}
                    return self._add_note(alert, headers, raw)
            return 404, {"error": {"message": "Not Found", "code": 2100}}

        def _add_note(self, alert: Alert, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
            invalid = {"message": "Invalid Input Provided", "code": 2001}
            if not headers.get("content-type", "").startswith("application/json"):
                return 400, {"error": {**invalid, "errors": ["Content-Type must be application/json"]}}
            sender = headers.get("from", "")
            if sender not in api.users:
                return 400, {"error": {"message": "Requester User Not Found", "code": 1008}}
            try:
                body = json.loads(raw)
                content = body["note"]["content"]
            except (ValueError, KeyError, TypeError):
                return 400, {"error": {**invalid, "errors": ["Note content is required"]}}
            if not isinstance(content, str) or not content:
                return 400, {"error": {**invalid, "errors": ["Note content is required"]}}
            note = {
                "id": "Q" + uuid.uuid4().hex[:6].upper(),
                "user": {"type": "user_reference", "summary": sender},
                "content": content,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            with api.lock:
                alert.notes.append(note)
            return 201, {"note": note}

        do_GET = do_POST = do_PUT = do_DELETE = _handle

    return Handler


def serve(api: FakePagerDuty) -> Iterator[FakePagerDuty]:
    with serving(_handler(api)) as api.url:
        yield api
