"""The Alertmanager webhook payload (version 4) and Grafana Alerting's (version 1), checked at the door.

Unknown fields are kept, not refused: newer Alertmanagers add fields (`notification_reason`,
`routeLabels`...) and an upgrade must not turn every notification into a 400. What we rely on
(version, per-alert labels, fingerprint, startsAt) is required, and a problem names its field
and alert index so the sender's logs say what to fix.

Grafana-managed alerting's webhook contact point posts Alertmanager's shape with `"version": "1"`
and fields of its own (`orgId`, `title`, `state`, `message`; per alert `silenceURL`,
`dashboardURL`, `panelURL`, `imageURL`, `values` or `valueString`): they are kept, so templates
read them as `alert.*`. Older Grafanas send no `fingerprint`; it is computed from the labels as
Alertmanager computes it (bot/alerts/fingerprint.py).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import to_json

from bot.alerts.fingerprint import alert_fingerprint
from bot.audit.events import holds_control
from bot.playbook.data import value_depth

SUPPORTED_VERSION = "4"
GRAFANA_VERSION = "1"
_SHOWN_PROBLEMS = 3
FINGERPRINT_MAX = 256  # characters of an alert's (or incident's) key
ALERT_MAX = 512 * 1024  # bytes of an alert that starts a run (too_big_to_run)
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

    @field_validator("fingerprint")
    @classmethod
    def _storable_key(cls, value: str) -> str:
        # It keys the episode and the audit trail's event ids: a control character (PostgreSQL
        # refuses NUL) or a huge one (index rows stop at 2704 bytes) could not be recorded.
        if len(value) > FINGERPRINT_MAX:
            raise ValueError(f"at most {FINGERPRINT_MAX} characters (Alertmanager's are 16)")
        if holds_control(value):
            raise ValueError("holds a control character")
        return value

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
            if value_depth(value, MAX_EXTRA_DEPTH) > MAX_EXTRA_DEPTH:
                raise ValueError(f"field {name!r} is nested more than {MAX_EXTRA_DEPTH} levels deep")
        return self

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    def as_context(self) -> dict[str, Any]:
        """The alert as templates see it (`alert.labels.x`, `alert.startsAt`): the payload's own keys."""
        return self.model_dump(mode="json", by_alias=True)


class GrafanaAlert(Alert):
    """An alert of Grafana Alerting's webhook; its own fields are typed where Grafana documents them."""

    silence_url: str = Field("", alias="silenceURL")
    dashboard_url: str = Field("", alias="dashboardURL")
    panel_url: str = Field("", alias="panelURL")
    image_url: str = Field("", alias="imageURL")
    values: dict[str, float | None] | None = None
    value_string: str = Field("", alias="valueString")

    @model_validator(mode="before")
    @classmethod
    def _fingerprint_from_labels(cls, data: Any) -> Any:
        # Older Grafanas leave it out (or send Go's empty string): computed as Alertmanager would, so
        # their repeats land on one episode. Only from valid labels; bad labels are refused below.
        if isinstance(data, dict) and data.get("fingerprint", "") == "":
            labels = data.get("labels")
            if isinstance(labels, dict) and labels and all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
            ):
                data = {**data, "fingerprint": alert_fingerprint(labels)}
        return data


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


class GrafanaPayload(WebhookPayload):
    """Grafana Alerting's webhook (grafana.com/docs: "Configure the webhook notifier")."""

    version: Literal["1"]  # type: ignore[assignment]
    org_id: int | None = Field(None, alias="orgId")
    title: str = ""
    state: str = ""
    message: str = ""
    alerts: list[GrafanaAlert]  # type: ignore[assignment]


Sender = Literal["alertmanager", "grafana"]


def parse_payload(body: bytes, sender: Sender = "alertmanager") -> WebhookPayload:
    """The payload `sender` posts, or PayloadError (status 400) with a one-line message naming the problem."""
    what = "Grafana Alerting" if sender == "grafana" else "Alertmanager"
    data = read_json(body, f"{what} webhook payload")
    model = GrafanaPayload if sender == "grafana" else WebhookPayload
    _check_version(data, sender)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(_one_line(exc)) from None


def too_big_to_run(alert: dict[str, Any]) -> str | None:
    """Why `alert` (as a run's trigger holds it: `Alert.as_context`) cannot start a run (None: it
    can); the front door asks, and the worker's admission again. An alert rides whole in its run's
    input and in each of the run's policy questions, beside the params, the step's arguments and the
    events on their way to the trail; Temporal refuses a payload past 2 MB, so a question past it
    failed the run's workflow task on every replay while the run held the episode. The body limit
    (alertmanager_max_body) is the operator's to raise for large groups; this one is per alert, and
    measured as read: a number grows up to 4.5 times (`1e15` is 1000000000000000.0 once decoded)."""
    size = len(to_json(alert))
    if size <= ALERT_MAX:
        return None
    return (f"the alert is {size:,} bytes as read; one that starts a run is at most {ALERT_MAX:,} (it travels "
            "whole in the run and in its policy questions, which Temporal caps at 2 MB): shorten its annotations")


def read_json(body: bytes, what: str) -> dict[str, Any]:
    """The body as a JSON object, or PayloadError naming why not (`what` the sender's payload)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    try:
        data = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PayloadError("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal past Python's digit limit
        raise PayloadError(f"malformed JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text) and not _encodable(data):
        raise PayloadError("body is not Unicode text: it escapes a lone UTF-16 surrogate (\\ud800-\\udfff)")
    if not isinstance(data, dict):
        raise PayloadError(f"expected a JSON object ({what}), got {_json_type(data)}")
    return data


def _check_version(data: dict[str, Any], sender: Sender) -> None:
    """The version this route reads; a body another sender would post says where it belongs."""
    want, what = (GRAFANA_VERSION, "Grafana Alerting webhook") if sender == "grafana" else (
        SUPPORTED_VERSION, "Alertmanager webhook")
    if "version" not in data:
        if "ruleName" in data or "evalMatches" in data:  # Grafana's legacy (dashboard) alerting, before 8
            raise PayloadError(
                "a legacy Grafana alerting notification (ruleName/evalMatches, no version): playbook-bot reads "
                f'Grafana Alerting\'s webhook contact point (version "{GRAFANA_VERSION}", Grafana 8 and later) on POST /grafana'
            )
        raise PayloadError(f'version: missing; expected the {what} payload version "{want}"')
    got = data["version"]
    if got == want:
        return
    if sender == "alertmanager" and got == GRAFANA_VERSION:
        raise PayloadError(
            f'unsupported webhook payload version "{GRAFANA_VERSION}": that is Grafana Alerting\'s webhook; '
            f'point Grafana\'s contact point at POST /grafana (this route reads version "{SUPPORTED_VERSION}", Alertmanager)'
        )
    if sender == "grafana" and got == SUPPORTED_VERSION:
        raise PayloadError(
            f'unsupported webhook payload version "{SUPPORTED_VERSION}": that is Alertmanager\'s webhook; '
            f'post it to POST /alertmanager (this route reads version "{GRAFANA_VERSION}", Grafana Alerting)'
        )
    where = "Alertmanager 0.x webhook_configs" if sender == "alertmanager" else "Grafana Alerting's webhook contact point"
    raise PayloadError(
        f"unsupported webhook payload version {_short(got)}: playbook-bot reads version \"{want}\" ({where})"
    )


def _not_json(name: str) -> Any:
    # Python's json reads NaN and Infinity; RFC 8259 has no such values and no sender writes them.
    raise ValueError(f"{name} is not a JSON value")


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
