"""`opsgenie.create`, `opsgenie.close` and `opsgenie.note` over the Opsgenie Alert API v2.

The alias defaults to the step's idempotency key: Opsgenie deduplicates an open alert by alias
(a repeat raises its count instead of creating a second alert), so a retried create never opens
two, and an `opsgenie.close` compensation (which gets the step's key, see `step_key`) closes
exactly what its step opened. The API is asynchronous: a 202 with a `requestId` means Opsgenie
accepted the request; its outcome can be read at /v2/alerts/requests/{requestId}. Because notes
are processed later too, a retried `opsgenie.note` cannot see the note its first attempt left:
notes are at-least-once (a create or close is exactly-once per alias).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import httpx
import structlog
from pydantic import Field, field_validator, model_validator

from bot.actions.base import ActionContext, ActionParams, action, whole_number_as_text
from bot.actions.paging import REQUEST_TIMEOUT, JsonApi, bounded_key, closing_key, json_body, step_key

log = structlog.get_logger("bot.actions.opsgenie")

ALIAS_MAX = 512  # the documented field limits
MESSAGE_MAX = 130
DESCRIPTION_MAX = 15000
NOTE_MAX = 25000
TAGS_MAX = 20
TAG_MAX = 50
ENTITY_MAX = 512
SOURCE_MAX = 100
USER_MAX = 100
DETAILS_MAX = 8000  # characters, keys and values together
SOURCE = "playbook-bot"


def _clean_key(value: str) -> str:
    if any(c in value for c in "\r\n\0") or value != value.strip():
        raise ValueError("api_key must not contain whitespace, CR, LF or NUL")
    return value


class Responder(ActionParams):
    type: Literal["team", "user", "escalation", "schedule"]
    id: str | None = None
    name: str | None = Field(None, description="A team, escalation or schedule name.")
    username: str | None = Field(None, description="A user's email (type user).")

    @model_validator(mode="after")
    def _one_identifier(self) -> Responder:
        given = [f for f in ("id", "name", "username") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of id, name or username")
        if self.username is not None and self.type != "user":
            raise ValueError("username is for type: user")
        return self


class _Common(ActionParams):
    api_key: str = Field(min_length=1, description="An API integration's key: give it as a secret().")
    user: str | None = Field(None, max_length=USER_MAX, description="Display name of who does this.")
    source: str = Field(SOURCE, max_length=SOURCE_MAX)

    _key = field_validator("api_key")(_clean_key)


class CreateParams(_Common):
    message: str = Field(min_length=1, max_length=MESSAGE_MAX, description="The alert's title.")
    alias: str | None = Field(
        None, min_length=1, max_length=ALIAS_MAX, description="Deduplication key. Default: the step's idempotency key."
    )
    description: str | None = Field(None, max_length=DESCRIPTION_MAX)
    priority: Literal["P1", "P2", "P3", "P4", "P5"] = "P3"
    responders: list[Responder] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, max_length=TAGS_MAX)
    details: dict[str, str] = Field(default_factory=dict, description="Custom key-value properties (text).")
    entity: str | None = Field(None, max_length=ENTITY_MAX)
    note: str | None = Field(None, max_length=NOTE_MAX)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not tag or len(tag) > TAG_MAX:
                raise ValueError(f"a tag must be 1 to {TAG_MAX} characters: {tag!r}")
        return value

    @field_validator("details", mode="before")
    @classmethod
    def _details_text(cls, value: Any) -> Any:
        return {k: whole_number_as_text(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("details")
    @classmethod
    def _details_size(cls, value: dict[str, str]) -> dict[str, str]:
        if sum(len(k) + len(v) for k, v in value.items()) > DETAILS_MAX:
            raise ValueError(f"details may hold at most {DETAILS_MAX} characters, keys and values together")
        return value


class CloseParams(_Common):
    alias: str | None = Field(
        None,
        min_length=1,
        max_length=ALIAS_MAX,
        description="The alert to close. Default, in a compensation only: the alias its step created.",
    )
    note: str | None = Field(None, max_length=NOTE_MAX)


class NoteParams(_Common):
    alias: str = Field(min_length=1, max_length=ALIAS_MAX, description="The alert's alias.")
    note: str = Field(min_length=1, max_length=NOTE_MAX)


class OpsgenieActions:
    def __init__(
        self, client: httpx.AsyncClient, api_url: str = "https://api.opsgenie.com", *, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self._api = JsonApi(client, "opsgenie.*", "opsgenie", timeout)
        self._base = api_url.rstrip("/")

    async def _post(
        self, name: str, path: str, params: _Common, body: dict[str, Any], ctx: ActionContext, alias: bool
    ) -> dict[str, Any]:
        url = f"{self._base}{path}"
        headers = {"Authorization": f"GenieKey {params.api_key}"}
        query = {"identifierType": "alias"} if alias else None
        body = {**body, "source": params.source, **({"user": params.user} if params.user else {})}
        response = await self._api.call(name, "POST", url, json=body, headers=headers, params=query)
        if response.status_code != 202:
            raise self._api.failure(name, "POST", url, response, ctx)
        answer = json_body(response)
        return {"request_id": answer.get("requestId"), "result": answer.get("result", "")}

    @action("opsgenie.create", CreateParams)
    async def create(self, params: CreateParams, ctx: ActionContext) -> dict[str, Any]:
        """Create an Opsgenie alert; a retry raises the open alert's count, never a second alert."""
        alias = params.alias or bounded_key(step_key(ctx), ALIAS_MAX)
        body: dict[str, Any] = {"message": params.message, "alias": alias, "priority": params.priority}
        for field, value in (
            ("description", params.description),
            ("entity", params.entity),
            ("note", params.note),
        ):
            if value is not None:
                body[field] = value
        if params.tags:
            body["tags"] = params.tags
        if params.details:
            body["details"] = params.details
        if params.responders:
            body["responders"] = [r.model_dump(exclude_none=True) for r in params.responders]
        out = await self._post("opsgenie.create", "/v2/alerts", params, body, ctx, alias=False)
        log.info("opsgenie alert requested", alias=alias, request_id=out["request_id"])
        return {"alias": alias, **out}

    @action("opsgenie.close", CloseParams)
    async def close(self, params: CloseParams, ctx: ActionContext) -> dict[str, Any]:
        """Close the Opsgenie alert with this alias (in a compensation: the one its step created)."""
        alias = closing_key("opsgenie.close", "alias", params.alias, ctx, ALIAS_MAX)
        body = {"note": params.note} if params.note else {}
        path = f"/v2/alerts/{_segment(alias)}/close"
        out = await self._post("opsgenie.close", path, params, body, ctx, alias=True)
        log.info("opsgenie close requested", alias=alias, request_id=out["request_id"])
        return {"alias": alias, **out}

    @action("opsgenie.note", NoteParams)
    async def note(self, params: NoteParams, ctx: ActionContext) -> dict[str, Any]:
        """Add a note to the Opsgenie alert with this alias."""
        path = f"/v2/alerts/{_segment(params.alias)}/notes"
        out = await self._post("opsgenie.note", path, params, {"note": params.note}, ctx, alias=True)
        return {"alias": params.alias, **out}


def _segment(text: str) -> str:
    """`text` as one URL path segment: `/`, `?`, `#`, `%` and a dot segment are escaped, so an
    alias cannot reach another endpoint."""
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe=":@")
