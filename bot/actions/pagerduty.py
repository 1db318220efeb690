"""`pagerduty.trigger`, `pagerduty.resolve` (Events API v2) and `pagerduty.note` (REST API v2).

The dedup key defaults to the step's idempotency key: a retried trigger lands on the alert it
already opened instead of paging again, and a `pagerduty.resolve` compensation (which gets that
same key, see `step_key`) closes exactly that alert, even when the trigger timed out and left no
output. The Events API answers 202 for a resolve of an unknown or already resolved key (the
event is dropped), so a resolve is safe to repeat.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import httpx
import structlog
from pydantic import Field, field_validator, model_validator

from bot.actions.base import ActionContext, ActionFailed, ActionParams, action, http_url
from bot.actions.paging import REQUEST_TIMEOUT, JsonApi, bounded_key, closing_key, json_body, step_key

log = structlog.get_logger("bot.actions.pagerduty")

DEDUP_KEY_MAX = 255  # the Events API's limit
SUMMARY_MAX = 1024
CLIENT = "playbook-bot"
REST_ACCEPT = "application/vnd.pagerduty+json;version=2"

_INCIDENT_ID = re.compile(r"^[A-Za-z0-9]+\Z")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")


def _no_control(value: str, name: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"{name} must not contain CR, LF or NUL")
    return value


class Link(ActionParams):
    href: str = Field(description="URL of the link.")
    text: str | None = Field(None, description="What the link is.")

    _href = field_validator("href")(http_url)


class Image(ActionParams):
    src: str = Field(description="An https:// URL of the image (PagerDuty shows only images served over HTTPS).")
    href: str | None = Field(None, description="Makes the image a link.")
    alt: str | None = None

    @field_validator("src")
    @classmethod
    def _https(cls, value: str) -> str:
        http_url(value)
        if not value.lower().startswith("https://"):
            raise ValueError("an image must be served over https://")
        return value

    _href = field_validator("href")(http_url)


class TriggerParams(ActionParams):
    routing_key: str = Field(
        min_length=1, description="The integration key of an Events API v2 integration: give it as a secret()."
    )
    summary: str = Field(min_length=1, max_length=SUMMARY_MAX, description="The alert's title.")
    source: str = Field(min_length=1, description="The affected system, preferably a hostname.")
    severity: Literal["critical", "error", "warning", "info"]
    component: str | None = None
    group: str | None = None
    class_: str | None = Field(None, alias="class", description="The kind of event, e.g. 'ping failure'.")
    custom_details: dict[str, Any] | None = None
    dedup_key: str | None = Field(
        None, min_length=1, max_length=DEDUP_KEY_MAX, description="Default: the step's idempotency key (run, execution and step)."
    )
    links: list[Link] = Field(default_factory=list)
    images: list[Image] = Field(default_factory=list)
    client: str = CLIENT
    client_url: str | None = None

    _client_url = field_validator("client_url")(http_url)

    @field_validator("routing_key")
    @classmethod
    def _key(cls, value: str) -> str:
        if value != value.strip() or any(c.isspace() for c in value):
            raise ValueError("routing_key must not contain whitespace")
        return value


class ResolveParams(ActionParams):
    routing_key: str = Field(min_length=1, description="The same integration key the trigger used.")
    dedup_key: str | None = Field(
        None,
        min_length=1,
        max_length=DEDUP_KEY_MAX,
        description="The alert to resolve. Default, in a compensation only: the key its step triggered with.",
    )


class NoteParams(ActionParams):
    token: str = Field(min_length=1, description="A REST API key: give it as a secret().")
    from_email: str = Field(description="Email of the PagerDuty user the note is written as (the From header).")
    content: str = Field(min_length=1, description="The note's text.")
    incident_id: str | None = Field(None, description="The incident's id (e.g. PT4KHLK).")
    dedup_key: str | None = Field(
        None, min_length=1, max_length=DEDUP_KEY_MAX, description="Or: the incident the trigger with this key opened."
    )

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        return _no_control(value, "token")

    @field_validator("from_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(_no_control(value, "from_email")):
            raise ValueError(f"not an email address: {value!r}")
        return value

    @field_validator("incident_id")
    @classmethod
    def _incident(cls, value: str | None) -> str | None:
        if value is not None and not _INCIDENT_ID.match(value):
            raise ValueError(f"not a PagerDuty incident id: {value!r}")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> NoteParams:
        if (self.incident_id is None) == (self.dedup_key is None):
            raise ValueError("give exactly one of incident_id or dedup_key")
        return self


def note_tag(key: str) -> str:
    """Marks a note with the step that wrote it, so a retry finds it instead of writing it twice."""
    return f"[playbook-bot {key}]"


class PagerDutyActions:
    def __init__(
        self,
        client: httpx.AsyncClient,
        events_url: str = "https://events.pagerduty.com",
        api_url: str = "https://api.pagerduty.com",
        *,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._api = JsonApi(client, "pagerduty.*", "pagerduty", timeout)
        self._events_url = events_url.rstrip("/")
        self._rest_url = api_url.rstrip("/")

    async def _enqueue(self, name: str, event: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        url = f"{self._events_url}/v2/enqueue"
        response = await self._api.call(name, "POST", url, json=event)
        if response.status_code != 202:
            raise self._api.failure(name, "POST", url, response, ctx)
        body = json_body(response)
        return {
            "dedup_key": body.get("dedup_key") or event["dedup_key"],
            "status": body.get("status", ""),
            "message": body.get("message", ""),
        }

    @action("pagerduty.trigger", TriggerParams)
    async def trigger(self, params: TriggerParams, ctx: ActionContext) -> dict[str, Any]:
        """Open (page) a PagerDuty alert; a retry lands on the same alert, never a second page."""
        payload: dict[str, Any] = {"summary": params.summary, "source": params.source, "severity": params.severity}
        for field, value in (
            ("component", params.component),
            ("group", params.group),
            ("class", params.class_),
            ("custom_details", params.custom_details),
        ):
            if value is not None:
                payload[field] = value
        event: dict[str, Any] = {
            "routing_key": params.routing_key,
            "event_action": "trigger",
            "dedup_key": params.dedup_key or bounded_key(step_key(ctx), DEDUP_KEY_MAX),
            "payload": payload,
            "client": params.client,
        }
        if params.client_url:
            event["client_url"] = params.client_url
        if params.links:
            event["links"] = [link.model_dump(exclude_none=True) for link in params.links]
        if params.images:
            event["images"] = [image.model_dump(exclude_none=True) for image in params.images]
        out = await self._enqueue("pagerduty.trigger", event, ctx)
        log.info("pagerduty alert triggered", dedup_key=out["dedup_key"])
        return out

    @action("pagerduty.resolve", ResolveParams)
    async def resolve(self, params: ResolveParams, ctx: ActionContext) -> dict[str, Any]:
        """Resolve the PagerDuty alert a trigger opened; resolving one already resolved is a no-op."""
        event = {
            "routing_key": params.routing_key,
            "event_action": "resolve",
            "dedup_key": closing_key("pagerduty.resolve", "dedup_key", params.dedup_key, ctx, DEDUP_KEY_MAX),
        }
        out = await self._enqueue("pagerduty.resolve", event, ctx)
        log.info("pagerduty alert resolved", dedup_key=out["dedup_key"])
        return out

    def _rest_headers(self, params: NoteParams) -> dict[str, str]:
        return {
            "Authorization": f"Token token={params.token}",
            "Accept": REST_ACCEPT,
            "Content-Type": "application/json",
            "From": params.from_email,
        }

    async def _incident_of(self, name: str, params: NoteParams, ctx: ActionContext) -> str:
        if params.incident_id is not None:
            return params.incident_id
        url = f"{self._rest_url}/incidents"
        headers = self._rest_headers(params)
        response = await self._api.call(name, "GET", url, params={"incident_key": params.dedup_key}, headers=headers)
        if response.status_code != 200:
            raise self._api.failure(name, "GET", url, response, ctx)
        found = [i for i in json_body(response).get("incidents") or [] if isinstance(i, dict) and i.get("id")]
        if not found:
            # The Events API is asynchronous: the incident may not exist yet. A retry asks again.
            raise ActionFailed(f"{name}: no incident has dedup key {params.dedup_key!r} (yet)")
        return str(found[0]["id"])

    @action("pagerduty.note", NoteParams)
    async def note(self, params: NoteParams, ctx: ActionContext) -> dict[str, Any]:
        """Add a note to a PagerDuty incident; a retry finds the note it wrote instead of adding another."""
        name = "pagerduty.note"
        incident = await self._incident_of(name, params, ctx)
        headers = self._rest_headers(params)
        url = f"{self._rest_url}/incidents/{incident}/notes"
        tag = note_tag(ctx.idempotency_key)
        response = await self._api.call(name, "GET", url, headers=headers)
        if response.status_code != 200:
            raise self._api.failure(name, "GET", url, response, ctx)
        for existing in json_body(response).get("notes") or []:
            if isinstance(existing, dict) and tag in str(existing.get("content", "")):
                log.info("note exists for this step; reusing it", note_id=existing.get("id"))
                return {"incident_id": incident, "note_id": existing.get("id"), "reused": True}
        body = {"note": {"content": f"{params.content}\n\n{tag}"}}
        response = await self._api.call(name, "POST", url, json=body, headers=headers)
        if response.status_code not in (200, 201):
            raise self._api.failure(name, "POST", url, response, ctx)
        created = json_body(response).get("note") or {}
        return {"incident_id": incident, "note_id": created.get("id"), "reused": False}
