"""`alertmanager.silence` and `alertmanager.expire_silence` over Alertmanager's v2 API.

A retried step must not stack silences: the step's idempotency key rides in the silence comment,
and a create first looks for an active silence that carries it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import structlog
from pydantic import Field, field_validator

from bot.actions.base import (
    ActionContext,
    ActionFailed,
    ActionParams,
    ActionRefused,
    EgressRefused,
    action,
    http_url,
    positive,
)
from bot.actions.egress import guarded, shown_url
from bot.actions.http import retryable_status
from bot.alerts.regex import AnchoredRegex, RegexError, check_standalone, compile_anchored
from bot.playbook.durations import Duration

log = structlog.get_logger("bot.actions.alertmanager")

REQUEST_TIMEOUT = 10.0  # seconds per API call; the step's timeout bounds the whole action
EXCERPT = 300
CREATED_BY = "playbook-bot"
LIVE_STATES = frozenset({"active", "pending"})

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)
_SILENCE_ID = re.compile(r"^[A-Za-z0-9-]+\Z")


@dataclass(frozen=True)
class _Matcher:
    name: str
    op: str
    value: str
    regex: AnchoredRegex | None = field(default=None, compare=False, repr=False)

    @property
    def is_regex(self) -> bool:
        return self.op in ("=~", "!~")

    @property
    def is_equal(self) -> bool:
        return self.op in ("=", "=~")

    def matches_empty(self) -> bool:
        hit = self.regex.matches("") if self.regex is not None else self.value == ""
        return hit if self.is_equal else not hit

    def api(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex, "isEqual": self.is_equal}


def _unquote(raw: str) -> str:
    """The text of a double-quoted value: `\\"`, `\\\\` and `\\n` escapes; the closing quote ends it."""
    out, i = [], 1
    while i < len(raw):
        char = raw[i]
        if char == "\\" and i + 1 < len(raw):
            out.append({"n": "\n", "t": "\t"}.get(raw[i + 1], raw[i + 1]))
            i += 2
        elif char == '"':
            if i != len(raw) - 1:
                raise ValueError("text after the closing quote")
            return "".join(out)
        else:
            out.append(char)
            i += 1
    raise ValueError("unterminated quoted value")


def _parse_matcher(text: str) -> _Matcher:
    """One `name<op>value` matcher; the full grammar (lists, UTF-8 names) lives in bot.alerts."""
    match = _MATCHER.match(text)
    if not match:
        raise ValueError(f"bad matcher {text!r}: want name=\"value\" with =, !=, =~ or !~")
    name, op, raw = match.groups()
    if raw.startswith('"'):
        try:
            value = _unquote(raw)
        except ValueError as exc:
            raise ValueError(f"bad matcher {text!r}: {exc}") from None
    elif '"' in raw:
        raise ValueError(f"bad matcher {text!r}: quote the whole value")
    else:
        value = raw
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = compile_anchored(value)  # as Alertmanager matches it
            check_standalone(value)  # its silence API also compiles the pattern alone
        except RegexError as exc:
            raise ValueError(f"bad matcher {text!r}: invalid regex: {exc}") from None
    return _Matcher(name, op, value, regex)


class SilenceParams(ActionParams):
    matchers: list[str] = Field(min_length=1, description='Alertmanager matchers, e.g. service="api", env=~"prod.*".')
    duration: Duration = Field(description="How long the silence lasts, e.g. '30m'.")
    comment: str | None = Field(None, description="Why; default names the playbook and run.")
    created_by: str = Field(CREATED_BY, min_length=1)
    url: str | None = Field(None, description="Alertmanager base URL; default PLAYBOOK_BOT_ALERTMANAGER_URL.")

    @field_validator("matchers")
    @classmethod
    def _valid_matchers(cls, value: list[str]) -> list[str]:
        parsed = [_parse_matcher(text) for text in value]
        if all(m.matches_empty() for m in parsed):
            raise ValueError("at least one matcher must not match the empty string (it would silence everything)")
        return value

    _positive = field_validator("duration")(positive("duration"))

    _url = field_validator("url")(http_url)


class ExpireSilenceParams(ActionParams):
    silence_id: str = Field(description="The id `alertmanager.silence` returned.")
    url: str | None = Field(None, description="Alertmanager base URL; default PLAYBOOK_BOT_ALERTMANAGER_URL.")

    @field_validator("silence_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _SILENCE_ID.match(value):
            raise ValueError(f"not a silence id: {value!r}")
        return value

    _url = field_validator("url")(http_url)


def idempotency_tag(key: str) -> str:
    return f"[playbook-bot {key}]"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _excerpt(response: httpx.Response) -> str:
    flat = " ".join(response.text.split())
    if not flat:
        return "(empty body)"
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT] + "…"


def _shown(url: str) -> str:
    """A URL fit for messages: credentials in it are left out."""
    return str(httpx.URL(url).copy_with(username=None, password=None))


class AlertmanagerActions:
    def __init__(self, client: httpx.AsyncClient, default_url: str | None = None) -> None:
        self._client = guarded(client, "alertmanager.*")
        self._default_url = default_url

    def _base(self, name: str, url: str | None) -> str:
        base = url or self._default_url
        if not base:
            raise ActionRefused(f"{name}: no Alertmanager URL: give `url` or set PLAYBOOK_BOT_ALERTMANAGER_URL")
        return base.rstrip("/")

    async def _call(self, name: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        what = f"{method} {_shown(url)}"
        try:
            response = await self._client.request(method, url, timeout=REQUEST_TIMEOUT, **kwargs)
        except EgressRefused as exc:
            raise exc.at(f"{name}: {method} {shown_url(url)}") from None
        except httpx.HTTPError as exc:  # refused, reset, DNS, timeouts: Alertmanager may be back soon
            raise ActionFailed(f"{name}: {what} failed: {type(exc).__name__}: {exc}") from None
        log.info("alertmanager request", method=method, host=response.url.host, status=response.status_code)
        return response

    def _fail(self, name: str, method: str, url: str, response: httpx.Response) -> ActionFailed:
        status = response.status_code
        return ActionFailed(
            f"{name}: {method} {_shown(url)} returned {status}: {_excerpt(response)}",
            retryable=retryable_status(status),
        )

    @action("alertmanager.silence", SilenceParams)
    async def silence(self, params: SilenceParams, ctx: ActionContext) -> dict[str, Any]:
        """Silence alerts matching the matchers for a while; a retry reuses the silence it made."""
        name = "alertmanager.silence"
        base = self._base(name, params.url)
        tag = idempotency_tag(ctx.idempotency_key)

        listing = f"{base}/api/v2/silences"
        response = await self._call(name, "GET", listing)
        if response.status_code != 200:
            raise self._fail(name, "GET", listing, response)
        for existing in response.json():
            state = (existing.get("status") or {}).get("state")
            if state in LIVE_STATES and tag in (existing.get("comment") or ""):
                log.info("silence exists for this step; reusing it", silence_id=existing["id"])
                return {"silence_id": existing["id"], "ends_at": existing.get("endsAt"), "reused": True}

        now = datetime.now(timezone.utc)
        comment = params.comment or f"playbook {ctx.playbook}, run {ctx.run_id}, step {ctx.step_id}"
        body = {
            "matchers": [_parse_matcher(text).api() for text in params.matchers],
            "startsAt": _rfc3339(now),
            "endsAt": _rfc3339(now + params.duration),
            "createdBy": params.created_by,
            "comment": f"{comment} {tag}",
        }
        response = await self._call(name, "POST", listing, json=body)
        if response.status_code != 200:
            raise self._fail(name, "POST", listing, response)
        silence_id = response.json()["silenceID"]
        log.info("silence created", silence_id=silence_id, ends_at=body["endsAt"])
        return {"silence_id": silence_id, "ends_at": body["endsAt"], "reused": False}

    @action("alertmanager.expire_silence", ExpireSilenceParams)
    async def expire_silence(self, params: ExpireSilenceParams, ctx: ActionContext) -> dict[str, Any]:
        """Expire a silence now; one already expired or gone counts as done."""
        name = "alertmanager.expire_silence"
        base = self._base(name, params.url)
        one = f"{base}/api/v2/silence/{params.silence_id}"
        response = await self._call(name, "DELETE", one)
        if response.status_code == 200:
            return {"silence_id": params.silence_id, "result": "expired"}
        failure = self._fail(name, "DELETE", one, response)
        if 400 <= response.status_code < 500 and response.status_code != 404:
            raise failure
        # A missing silence is a 404 in newer Alertmanagers and a 500 in older ones: ask.
        check = await self._call(name, "GET", one)
        if check.status_code == 200:
            if (check.json().get("status") or {}).get("state") == "expired":
                return {"silence_id": params.silence_id, "result": "already_expired"}
            raise failure
        if check.status_code != 404:
            raise self._fail(name, "GET", one, check)
        status_url = f"{base}/api/v2/status"
        alive = await self._call(name, "GET", status_url)
        if alive.status_code != 200:  # the whole API is missing: a wrong URL, not a missing silence
            raise self._fail(name, "GET", status_url, alive)
        log.info("silence not found; nothing to expire", silence_id=params.silence_id)
        return {"silence_id": params.silence_id, "result": "not_found"}
