"""The Alertmanager webhook payload (version 4), checked at the door.

Unknown fields are kept, not refused: newer Alertmanagers add fields (`notification_reason`,
`routeLabels`...) and an upgrade must not turn every notification into a 400. What we rely on
(version, per-alert labels, fingerprint, startsAt) is required, and a problem names its field
and alert index so the sender's logs say what to fix.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SUPPORTED_VERSION = "4"
_SHOWN_PROBLEMS = 3
MAX_EXTRA_DEPTH = 32  # an alert's unknown fields travel in the run's input, which the worker decodes
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # cheap pre-check; pairs are fine


class PayloadError(ValueError):
    """A webhook body we refuse as a whole: a 4xx with a one-line reason."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Alert(_Open):
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: AwareDatetime = Field(alias="startsAt")
    ends_at: AwareDatetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = Field(min_length=1)

    @field_validator("starts_at")
    @classmethod
    def _utc_representable(cls, value: datetime) -> datetime:
        # The episode id and audit keys use startsAt in UTC: one that has no UTC form is invalid input.
        try:
            value.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError("out of range once converted to UTC") from None
        return value

    @model_validator(mode="after")
    def _extras_shallow(self) -> Alert:
        # Unknown fields ride along in the run's input; the worker's decoder stops at 200 levels,
        # so a deeper one would start a run no worker can ever begin. Alertmanager's are flat.
        for name, value in (self.model_extra or {}).items():
            if _depth(value) > MAX_EXTRA_DEPTH:
                raise ValueError(f"field {name!r} is nested more than {MAX_EXTRA_DEPTH} levels deep")
        return self

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    def as_context(self) -> dict[str, Any]:
        """The alert as templates see it (`alert.labels.x`, `alert.startsAt`): the payload's own keys."""
        return self.model_dump(mode="json", by_alias=True)


class WebhookPayload(_Open):
    version: Literal["4"]
    group_key: str = Field("", alias="groupKey")
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[Alert]


def parse_payload(body: bytes) -> WebhookPayload:
    """The payload, or PayloadError (status 400) with a one-line message naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PayloadError("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal past Python's digit limit
        raise PayloadError(f"malformed JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text) and not _encodable(data):
        raise PayloadError("body is not Unicode text: it escapes a lone UTF-16 surrogate (\\ud800-\\udfff)")
    if not isinstance(data, dict):
        raise PayloadError(f"expected a JSON object (Alertmanager webhook payload), got {_json_type(data)}")
    if "version" not in data:
        raise PayloadError(f'version: missing; expected the Alertmanager webhook payload version "{SUPPORTED_VERSION}"')
    if data["version"] != SUPPORTED_VERSION:
        raise PayloadError(
            f"unsupported webhook payload version {json.dumps(data['version'])}: "
            f'playbook-bot reads version "{SUPPORTED_VERSION}" (Alertmanager 0.x webhook_configs)'
        )
    try:
        return WebhookPayload.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(_one_line(exc)) from None


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (a scalar is 0), without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_EXTRA_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


def _encodable(data: Any) -> bool:
    """False when a decoded string holds a lone surrogate, which no store, log or reply can encode."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    messages = [f"{_path(error['loc'])}: {_problem(error)}" for error in errors]
    shown = messages[:_SHOWN_PROBLEMS]
    more = f" (and {len(messages) - len(shown)} more)" if len(messages) > len(shown) else ""
    return "invalid webhook payload: " + "; ".join(shown) + more


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "payload"


def _problem(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing"
    if kind in ("too_short", "string_too_short") and isinstance(error.get("input"), (dict, list, str)):
        return "empty"
    if kind == "timezone_aware":
        return "needs a timezone offset (RFC 3339, e.g. 2024-01-01T00:00:00Z)"
    message = " ".join(str(error["msg"]).split())
    return f"{message} (got {_short(error.get('input'))})" if "input" in error else message


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, datetime) else value.isoformat()
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
