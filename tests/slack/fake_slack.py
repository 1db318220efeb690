"""A real HTTP server speaking enough of Slack's Web API for `AsyncWebClient(base_url=...)`.

Faithful where the client can tell: `POST /api/<method>` (or GET) with form-encoded, JSON or
query parameters; the bot token as `Authorization: Bearer` (or a `token` param), `not_authed`
without one and `invalid_auth` when wrong; Slack's error codes for the methods it knows
(`channel_not_found`, `not_in_channel`, `message_not_found`, `user_not_found`, ...); HTTP 404
`unknown_method` for the rest; HTTP 429 + `Retry-After` on demand.

As strict as Slack's documentation, so a test sees what real Slack would show: `chat.update`
takes a channel ID only (a name answers `channel_not_found`) and a `ts` the channel holds
(`message_not_found`); blocks beyond Block Kit's limits answer `invalid_blocks` with Slack's
`errors` list (tests/slack/slack_limits.py); a posted `text` over 40,000 characters is truncated
with a `message_truncated` warning, an updated one is refused `msg_too_long`. `messages` holds
each message as it now stands, so tests assert on what Slack shows, not on what was sent.

Views (modals and the App Home tab): `views.open` exchanges a `trigger_id` the fake issued
(`issue_trigger`, as Slack issues one with each command or click) once and within 3 seconds:
`invalid_trigger_id` for one it never issued or malformed, `expired_trigger_id` after 3 s,
`exchanged_trigger_id` the second time. A view over Block Kit's view limits answers
`invalid_arguments` with `response_metadata.messages`. `views.update` takes exactly one of
`view_id` / `external_id` (`not_found`, `hash_conflict`); `views.publish` needs a known `user_id`
and a `home` view. `views` and `homes` hold what users see now.

Every call is recorded (method, merged params, HTTP status, error, monotonic time) in `calls`.
Fault switches: `hang(method, seconds)` (answer that method only after a pause), `rate_limit(n)`, `server_error(n)`, `fail_next(method, error)`, and
`rate_limit_fraction(f)` (about that fraction of all calls, until `reset()`); `reset()` clears
calls, faults and posted messages, keeping the workspace (channels, users, user groups).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from tests.http_server import serving
from tests.slack.slack_limits import MESSAGE_TEXT_MAX, block_errors, view_errors

TOKEN = "xoxb-fake-bot-token"
TEAM_ID = "T0FAKE"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"

Answer = tuple[int, dict[str, Any], dict[str, str]]
TRIGGER_TTL = 3.0  # seconds a trigger_id can be exchanged for a view (Slack's documented 3 s)
TRIGGER_FORMAT = re.compile(r"^[0-9]+\.[0-9]+\.[0-9a-zA-Z]+$")  # "132456.7890123.abcdef", as Slack documents it


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int = 200
    ok: bool = True
    error: str | None = None
    http_verb: str = "POST"
    at: float = field(default_factory=time.monotonic)  # when it was answered
    warnings: list[str] = field(default_factory=list)


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None
    user: str = BOT_USER_ID
    updates: int = 0

    def buttons(self) -> list[str]:
        """The action ids of the buttons the message shows now."""
        return [e.get("action_id", "") for b in self.blocks or [] if b.get("type") == "actions"
                for e in b.get("elements", []) if e.get("type") == "button"]

    def shown(self) -> str:
        """What a reader sees: the blocks' text when it has blocks (Slack renders those, and uses
        `text` only for notifications), else its text."""
        if not self.blocks:
            return self.text
        return "\n".join(_texts(self.blocks))


@dataclass
class FakeSlack:
    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    channels: dict[str, str] = field(default_factory=lambda: {"C0INCIDENTS": "incidents", "C0GENERAL": "general"})
    not_member: set[str] = field(default_factory=set)  # channel ids the bot is not in
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    usergroups: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    views: dict[str, dict[str, Any]] = field(default_factory=dict)  # open modals by view id
    homes: dict[str, dict[str, Any]] = field(default_factory=dict)  # each user's published Home tab
    connections: int = 0  # TCP connections clients opened (a client that keeps them alive opens few)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._faults: list[tuple[str | None, int, str, dict[str, str]]] = []
        self._fraction: _Fraction | None = None
        self._refuse_until = 0.0  # time.monotonic() until which every call is answered 429
        self._refuse_retry_after = 1
        self._serving = contextlib.ExitStack()
        self._triggers: dict[str, tuple[float, str]] = {}  # trigger_id -> (issued at, user)
        self._exchanged: set[str] = set()
        self._view_ids = itertools.count(1)
        self._hangs: dict[str, float] = {}
        self.api_url = ""
        self.add_user(BOT_USER_ID, "playbook-bot", is_bot=True)

    # --- workspace --------------------------------------------------------------------

    def add_user(self, user_id: str, name: str, real_name: str = "", *, is_bot: bool = False) -> dict[str, Any]:
        user = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": name,
            "real_name": real_name or name,
            "deleted": False,
            "is_bot": is_bot,
            "profile": {"real_name": real_name or name, "display_name": name},
        }
        self.users[user_id] = user
        return user

    def add_usergroup(self, group_id: str, handle: str, users: list[str], name: str = "") -> dict[str, Any]:
        group = {
            "id": group_id,
            "team_id": TEAM_ID,
            "is_usergroup": True,
            "name": name or handle,
            "handle": handle,
            "description": "",
            "date_delete": 0,
            "users": list(users),
        }
        self.usergroups[group_id] = group
        return group

    def issue_trigger(self, trigger_id: str, user: str = "", *, age: float = 0.0) -> str:
        """Record a trigger_id as issued `age` seconds ago (Slack issues one with each command,
        click and submission); only issued triggers can open a view."""
        with self._lock:
            self._triggers[trigger_id] = (time.monotonic() - age, user)
        return trigger_id

    def opened(self) -> list[dict[str, Any]]:
        """The views opened with views.open, oldest first, as they now stand."""
        return list(self.views.values())

    # --- faults and assertions ----------------------------------------------------------

    def hang(self, method: str, seconds: float) -> None:
        """From now on (until `reset()`), answer `method` only after `seconds` (Slack having a bad
        moment); other calls are answered meanwhile."""
        with self._lock:
            self._hangs[method] = seconds

    def hang_for(self, method: str) -> float:
        with self._lock:
            return self._hangs.get(method, 0.0)

    def rate_limit(self, n: int = 1, retry_after: int = 1, method: str | None = None) -> None:
        """Answer the next `n` calls (of `method`, or any) with HTTP 429 and `Retry-After`."""
        with self._lock:
            self._faults += [(method, 429, "ratelimited", {"Retry-After": str(retry_after)})] * n

    def rate_limit_fraction(
        self,
        fraction: float,
        retry_after: int = 1,
        *,
        method: str | None = None,
        seed: int = 0,
        max_in_a_row: int | None = None,
    ) -> None:
        """From now on (until `reset()`), answer about `fraction` of calls (of `method`, or any)
        with HTTP 429 and `Retry-After`, picked by a random generator seeded with `seed`.
        `max_in_a_row` caps how many times in a row the same request (method and parameters) is
        refused: a limit that always clears within that many retries."""
        with self._lock:
            self._fraction = _Fraction(method, fraction, retry_after, random.Random(seed), max_in_a_row)

    def rate_limit_for(self, seconds: float, retry_after: int = 1) -> None:
        """Answer every call with HTTP 429 and `Retry-After` for the next `seconds` (Slack's
        limit on a busy incident channel), then normally again."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
            self._refuse_retry_after = retry_after

    def refusing(self) -> bool:
        """Whether the `rate_limit_for` window is still open."""
        return time.monotonic() < self._refuse_until

    def posts(self) -> list[Call]:
        """Every chat.postMessage Slack took (each one is a message in the channel)."""
        return [call for call in self.calls if call.method == "chat.postMessage" and call.ok]

    def rate_limited(self) -> list[Call]:
        """The calls answered 429."""
        return [call for call in self.calls if call.status == 429]

    def server_error(self, n: int = 1, status: int = 503, method: str | None = None) -> None:
        with self._lock:
            self._faults += [(method, status, "fatal_error", {})] * n

    def fail_next(self, method: str, error: str, status: int = 200) -> None:
        """Answer the next call of `method` with `{"ok": false, "error": error}`."""
        with self._lock:
            self._faults.append((method, status, error, {}))

    def reset(self) -> None:
        with self._lock:
            self.connections = 0
            self.calls.clear()
            self.messages.clear()
            self.views.clear()
            self.homes.clear()
            self._triggers.clear()
            self._exchanged.clear()
            self._hangs.clear()
            self._faults.clear()
            self._fraction = None
            self._refuse_until = 0.0
            self.not_member.clear()

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def message(self, channel: str, ts: str) -> Message:
        for message in self.messages:
            if message.channel == channel and message.ts == ts:
                return message
        raise KeyError((channel, ts))

    def top_level(self, channel: str | None = None) -> list[Message]:
        """The messages outside any thread (of `channel`, or all), oldest first."""
        return [m for m in self.messages if m.thread_ts is None and channel in (None, m.channel)]

    def thread(self, parent: Message) -> list[Message]:
        """The replies in `parent`'s thread, oldest first."""
        return [m for m in self.messages if m.thread_ts == parent.ts and m.channel == parent.channel]

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> str:
        self.api_url = self._serving.enter_context(serving(_handler(self))) + "/api/"
        return self.api_url

    def stop(self) -> None:
        self._serving.close()

    def __enter__(self) -> FakeSlack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the API ------------------------------------------------------------------------

    def answer(self, method: str, params: dict[str, Any], auth_header: str | None) -> Answer:
        """Decide the answer to one call, and record it."""
        verb = params.pop("__verb__", "POST")
        with self._lock:
            status, body, headers = self._answer(method, params, auth_header)
            warnings = list((body.get("response_metadata") or {}).get("warnings", []))
            self.calls.append(Call(method, params, status, bool(body.get("ok")), body.get("error"), verb,
                                   warnings=warnings))
        return status, body, headers

    def _answer(self, method: str, params: dict[str, Any], auth_header: str | None) -> Answer:
        if time.monotonic() < self._refuse_until:
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(self._refuse_retry_after)}
        for i, (only, status, error, headers) in enumerate(self._faults):
            if only is None or only == method:
                del self._faults[i]
                return status, {"ok": False, "error": error}, headers
        if self._fraction is not None and self._fraction.refuses(method, params):
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(self._fraction.retry_after)}
        handler = self._methods().get(method)
        if handler is None:
            return 404, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        token = params.pop("token", None)
        if auth_header and auth_header.lower().startswith("bearer "):
            token = auth_header[7:].strip()
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        try:
            return 200, {"ok": True, **handler(params)}, {}
        except SlackFault as fault:
            return 200, {"ok": False, "error": fault.error, **fault.details}, {}

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "users.info": self._users_info,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
        }

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake-workspace.slack.com/",
            "team": "Fake Workspace",
            "user": "playbook-bot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _channel(self, params: dict[str, Any], *, by_name: bool = True) -> str:
        """The channel ID `params` names. Posting takes an ID or a name; `by_name=False` (as for
        `chat.update`) takes an ID only: "Channel containing the message to be updated"."""
        ref = str(params.get("channel") or "")
        if not ref:
            raise SlackFault("channel_not_found")
        if ref in self.channels:
            channel = ref
        elif not by_name:
            raise SlackFault("channel_not_found")
        else:
            ids = {name: cid for cid, name in self.channels.items()}
            channel = ids.get(ref.removeprefix("#"), "")
            if not channel:
                raise SlackFault("channel_not_found")
        if channel in self.not_member:
            raise SlackFault("not_in_channel")
        return channel

    def _content(self, params: dict[str, Any], *, update: bool = False) -> tuple[str, list[dict[str, Any]] | None, list[str]]:
        """The message's text and blocks, and any warnings; refused as Slack refuses them."""
        text = str(params.get("text") or "")
        blocks = params.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except ValueError:
                raise SlackFault("invalid_blocks_format") from None
        if blocks is not None:
            errors = block_errors(blocks)
            if errors:
                raise SlackFault("invalid_blocks", errors=errors,
                                 response_metadata={"messages": [f"[ERROR] {e}" for e in errors]})
        if not text and not blocks and not params.get("attachments"):
            raise SlackFault("no_text")
        warnings: list[str] = []
        if len(text) > MESSAGE_TEXT_MAX:
            if update:
                raise SlackFault("msg_too_long")
            text, warnings = text[:MESSAGE_TEXT_MAX], ["message_truncated"]
        return text, blocks, warnings

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _message_json(self, message: Message) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "message",
            "user": message.user,
            "bot_id": BOT_ID,
            "text": message.text,
            "ts": message.ts,
            "team": TEAM_ID,
        }
        if message.blocks is not None:
            body["blocks"] = message.blocks
        if message.thread_ts:
            body["thread_ts"] = message.thread_ts
        return body

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        text, blocks, warnings = self._content(params)
        thread_ts = params.get("thread_ts") or None
        message = Message(channel, self._next_ts(), text, blocks, str(thread_ts) if thread_ts else None)
        self.messages.append(message)
        return {"channel": channel, "ts": message.ts, "message": self._message_json(message), **_warned(warnings)}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        """chat.update as documented: text left out is kept; blocks left out go when text is given."""
        channel = self._channel(params, by_name=False)
        try:
            message = self.message(channel, str(params.get("ts") or ""))
        except KeyError:
            raise SlackFault("message_not_found") from None
        if message.user != BOT_USER_ID:
            raise SlackFault("cant_update_message")
        if "text" not in params and "blocks" not in params and "attachments" not in params:
            raise SlackFault("no_text")
        text, blocks, _ = self._content({**params, "text": params.get("text", message.text)}, update=True)
        message.text = text
        message.blocks = blocks if "blocks" in params else None  # text without blocks drops the blocks
        message.updates += 1
        return {"channel": channel, "ts": message.ts, "text": message.text, "message": self._message_json(message)}

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if str(params.get("user") or "") not in self.users:
            raise SlackFault("user_not_found")
        _, _, warnings = self._content(params)
        return {"message_ts": self._next_ts(), "channel": channel, **_warned(warnings)}

    def _usergroups_list(self, params: dict[str, Any]) -> dict[str, Any]:
        include_users = _flag(params.get("include_users"))
        include_count = _flag(params.get("include_count"))
        groups = []
        for group in self.usergroups.values():
            shown = {k: v for k, v in group.items() if k != "users"}
            if include_users:
                shown["users"] = list(group["users"])
            if include_count:
                shown["user_count"] = len(group["users"])
            groups.append(shown)
        return {"usergroups": groups}

    def _usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        group = self.usergroups.get(str(params.get("usergroup") or ""))
        if group is None:
            raise SlackFault("no_such_subteam")
        return {"users": list(group["users"])}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(params.get("user") or ""))
        if user is None:
            raise SlackFault("user_not_found")
        return {"user": user}

    # --- views --------------------------------------------------------------------------

    def _view_arg(self, params: dict[str, Any], kinds: tuple[str, ...]) -> dict[str, Any]:
        """The `view` argument, a JSON-encoded view object within Slack's limits, of one of `kinds`."""
        view = params.get("view")
        if view is None:
            raise _invalid("missing required field: view")
        if isinstance(view, str):
            if len(view.encode()) > 250 * 1024:
                raise SlackFault("view_too_large")
            try:
                view = json.loads(view)
            except ValueError:
                raise _invalid("must provide an object [json-pointer:/view]") from None
        errors = view_errors(view)
        if not errors and view.get("type") not in kinds:
            errors = [f"must be {' or '.join(kinds)} [json-pointer:/view/type]"]
        if errors:
            raise _invalid(*errors)
        return view

    def _stored(self, view: dict[str, Any], user: str, view_id: str | None = None) -> dict[str, Any]:
        view_id = view_id or f"V{next(self._view_ids):08d}"
        stored = {
            **view,
            "id": view_id,
            "team_id": TEAM_ID,
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "external_id": view.get("external_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{next(self._ts):08x}",
            "root_view_id": view_id,
            "app_id": "A0PLAYBOOK",
            "bot_id": BOT_ID,
            "user": user,
        }
        return stored

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        trigger = params.get("trigger_id")
        if not trigger:
            raise _invalid("missing required field: trigger_id")
        trigger = str(trigger)
        if not TRIGGER_FORMAT.match(trigger) or trigger not in self._triggers:
            raise SlackFault("invalid_trigger_id")
        if trigger in self._exchanged:
            raise SlackFault("exchanged_trigger_id")
        issued, user = self._triggers[trigger]
        if time.monotonic() - issued > TRIGGER_TTL:
            raise SlackFault("expired_trigger_id")
        view = self._view_arg(params, ("modal",))
        self._exchanged.add(trigger)
        stored = self._stored(view, user)
        self.views[stored["id"]] = stored
        return {"view": _public(stored)}

    def _views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        view_id, external_id = params.get("view_id"), params.get("external_id")
        if bool(view_id) == bool(external_id):
            raise _invalid("exactly one of view_id or external_id is required")
        current = self.views.get(str(view_id)) if view_id else next(
            (v for v in self.views.values() if v.get("external_id") == external_id), None)
        if current is None:
            raise SlackFault("not_found")
        if params.get("hash") and params["hash"] != current["hash"]:
            raise SlackFault("hash_conflict")
        view = self._view_arg(params, ("modal",))
        stored = self._stored(view, current["user"], current["id"])
        self.views[stored["id"]] = stored
        return {"view": _public(stored)}

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("user_id") or "")
        if not user:
            raise _invalid("missing required field: user_id")
        if user not in self.users:
            raise _invalid("invalid `user_id`")
        current = self.homes.get(user)
        if params.get("hash") and (current is None or params["hash"] != current["hash"]):
            raise SlackFault("hash_conflict")
        view = self._view_arg(params, ("home",))
        stored = self._stored(view, user, current["id"] if current else None)
        self.homes[user] = stored
        return {"view": _public(stored)}


def _invalid(*messages: str) -> SlackFault:
    """Slack's answer to a call with bad arguments: `invalid_arguments`, each problem listed."""
    return SlackFault("invalid_arguments", response_metadata={"messages": [f"[ERROR] {m}" for m in messages]})


def _public(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k != "user"}


@dataclass
class _Fraction:
    method: str | None
    fraction: float
    retry_after: int
    rng: random.Random
    max_in_a_row: int | None
    in_a_row: dict[str, int] = field(default_factory=dict)

    def refuses(self, method: str, params: dict[str, Any]) -> bool:
        if self.method is not None and self.method != method:
            return False
        key = method + json.dumps(params, sort_keys=True, default=str)
        refused = self.in_a_row.get(key, 0)
        if self.rng.random() < self.fraction and (self.max_in_a_row is None or refused < self.max_in_a_row):
            self.in_a_row[key] = refused + 1
            return True
        self.in_a_row.pop(key, None)
        return False


class SlackFault(Exception):
    def __init__(self, error: str, **details: Any) -> None:
        super().__init__(error)
        self.error = error
        self.details = details


def _warned(warnings: list[str]) -> dict[str, Any]:
    if not warnings:
        return {}
    return {"warning": ",".join(warnings), "response_metadata": {"warnings": warnings}}


def _texts(value: Any) -> list[str]:
    """Every text string inside blocks, in order."""
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        own = [value["text"]] if isinstance(value.get("text"), str) else []
        return own + [t for k, v in value.items() if k != "text" or not isinstance(v, str) for t in _texts(v)]
    return []


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _params(verb: str, query: str, content_type: str, body: bytes) -> dict[str, Any]:
    """Query, form and JSON parameters merged, as Slack reads them."""
    params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if body:
        if content_type.startswith("application/json"):
            loaded = json.loads(body)
            if isinstance(loaded, dict):
                params.update(loaded)
        else:
            params.update({k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()})
    params["__verb__"] = verb
    return params


def _handler(slack: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:  # one handler per TCP connection, however many requests it carries
            super().setup()
            with slack._lock:
                slack.connections += 1

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if not parts.path.startswith("/api/"):
                self._send(404, {"ok": False, "error": "unknown_method"}, {})
                return
            method = parts.path.removeprefix("/api/").strip("/")
            try:
                params = _params(self.command, parts.query, self.headers.get("Content-Type") or "", body)
            except ValueError:
                self._send(200, {"ok": False, "error": "invalid_json"}, {})
                return
            time.sleep(slack.hang_for(method))  # outside the lock: other calls go on meanwhile
            status, answer, headers = slack.answer(method, params, self.headers.get("Authorization"))
            self._send(status, answer, headers)

        def _send(self, status: int, answer: dict[str, Any], headers: dict[str, str]) -> None:
            raw = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = _handle

    return Handler


def running() -> Iterator[FakeSlack]:
    """For a fixture: `yield from running()` gives a started server and stops it after."""
    with FakeSlack() as slack:
        yield slack
