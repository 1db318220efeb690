"""PagerDuty V3 webhooks and Opsgenie webhook integrations, read as alerts with episodes.

Each becomes an `Alert` the receiver already knows how to run (bot/alerts/receiver.py): firing or
resolved, a fingerprint (the incident or alert id) and startsAt (its created time), so one
incident is one episode per playbook, a re-delivery attaches, and a resolve cancels. Labels are
the facts triggers filter on (service, urgency; tags and priority ride as their own keys), and the
whole incident (`alert.incident`) or Opsgenie alert (`alert.opsgenie`) reaches templates.

PagerDuty signs each delivery: `X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the raw body>`,
comma-separated when a secret is being rotated (developer.pagerduty.com, "Verifying
Signatures"). Opsgenie signs nothing; its webhook integration sends the custom headers one
configures, so the bot requires `Authorization: Bearer <token>` there.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from bot.alerts.episodes import RouteMatch, episode_id, with_params
from bot.alerts.payload import Alert, PayloadError, _one_line, read_json
from bot.playbook.loader import LoadedPlaybook
from bot.playbook.model import OpsgenieTrigger, PagerDutyTrigger
from bot.playbook.templating import inert

MAX_SIGNATURES = 16  # a rotation sends two; more is someone guessing


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


# ---- PagerDuty ------------------------------------------------------------------------------------

PAGERDUTY_EVENTS = {"incident.triggered": "firing", "incident.resolved": "resolved"}


class _Reference(_Open):
    id: str = Field(min_length=1)
    summary: str = ""


class PagerDutyIncident(_Open):
    id: str = Field(min_length=1)
    type: Literal["incident"]
    title: str = ""
    status: str = ""
    urgency: str = ""
    created_at: AwareDatetime
    service: _Reference
    priority: _Reference | None = None


class PagerDutyEvent(_Open):
    id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    resource_type: str = ""
    occurred_at: AwareDatetime | None = None
    data: dict[str, Any]


class PagerDutyWebhook(_Open):
    event: PagerDutyEvent


def pagerduty_signed(body: bytes, header: str, secrets: Iterable[str]) -> bool:
    """True when one `v1=` signature in the header is the HMAC-SHA256 of the raw body under one of
    the secrets (constant-time compares; other versions are ignored, as PagerDuty's docs say)."""
    given = [part.strip()[3:] for part in header.split(",")[:MAX_SIGNATURES] if part.strip().startswith("v1=")]
    if not given:
        return False
    ok = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
        for signature in given:
            ok |= hmac.compare_digest(expected, signature.encode("ascii", "replace"))
    return ok


def parse_pagerduty(body: bytes) -> list[Alert]:
    """The incident as an alert; [] for event types that start or end nothing (acknowledged, ping...)."""
    data = read_json(body, "PagerDuty V3 webhook")
    try:
        webhook = PagerDutyWebhook.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(_one_line(exc)) from None
    status = PAGERDUTY_EVENTS.get(webhook.event.event_type)
    if status is None:
        return []
    try:
        incident = PagerDutyIncident.model_validate(webhook.event.data)
    except ValidationError as exc:
        raise PayloadError(_one_line(exc).replace("payload: ", "payload: event.data.", 1)) from None
    labels = {
        "alertname": incident.title or incident.id,
        "incident": incident.id,
        "service": incident.service.summary,
        "service_id": incident.service.id,
        "urgency": incident.urgency,
        "priority": incident.priority.summary if incident.priority else "",
    }
    event = {"id": webhook.event.id, "event_type": webhook.event.event_type}
    return [_alert(status, labels, incident.id, incident.created_at, incident=webhook.event.data, event=event)]


def pagerduty_matches(trigger: PagerDutyTrigger, labels: dict[str, str], *, resolved: bool = False) -> bool:
    """The trigger's service, and (to start, not to resolve) its urgency."""
    if labels.get("service_id") not in trigger.services and labels.get("service") not in trigger.services:
        return False
    return resolved or trigger.urgency is None or labels.get("urgency") == trigger.urgency


# ---- Opsgenie -------------------------------------------------------------------------------------

OPSGENIE_ACTIONS = {"Create": "firing", "Close": "resolved"}


class OpsgenieAlert(_Open):
    alert_id: str = Field(min_length=1, alias="alertId")
    message: str = ""
    alias: str = ""
    tiny_id: str = Field("", alias="tinyId")
    entity: str = ""
    priority: str = ""
    source: str = ""
    tags: list[str] = Field(default_factory=list)
    created_at: int = Field(alias="createdAt", ge=0, le=253402300799999)  # epoch ms, before year 10000


class OpsgenieWebhook(_Open):
    action: str = Field(min_length=1)
    alert: dict[str, Any]
    integration_name: str = Field("", alias="integrationName")


def parse_opsgenie(body: bytes) -> list[Alert]:
    """The alert of a Create or Close action; [] for other actions (Acknowledge, AddNote...)."""
    data = read_json(body, "Opsgenie webhook")
    try:
        webhook = OpsgenieWebhook.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(_one_line(exc)) from None
    status = OPSGENIE_ACTIONS.get(webhook.action)
    if status is None:
        return []
    try:
        alert = OpsgenieAlert.model_validate(webhook.alert)
    except ValidationError as exc:
        raise PayloadError(_one_line(exc).replace("payload: ", "payload: alert.", 1)) from None
    created = datetime.fromtimestamp(alert.created_at / 1000, tz=timezone.utc)
    labels = {
        "alertname": alert.message or alert.alert_id,
        "alert_id": alert.alert_id,
        "alias": alert.alias,
        "entity": alert.entity,
        "priority": alert.priority,
        "source": alert.source,
        "tiny_id": alert.tiny_id,
    }
    return [_alert(status, labels, alert.alert_id, created, opsgenie=webhook.alert, action=webhook.action)]


def opsgenie_matches(trigger: OpsgenieTrigger, alert: Alert) -> bool:
    """The trigger's tags and priorities (to start: a Close is taken whatever they are now)."""
    if alert.status == "resolved":
        return True
    tags = set((alert.model_extra or {}).get("opsgenie", {}).get("tags") or [])
    if not set(trigger.tags) <= tags:
        return False
    return not trigger.priorities or alert.labels.get("priority") in trigger.priorities


# ---- both -----------------------------------------------------------------------------------------


def _alert(status: str, labels: dict[str, str], key: str, created: datetime, **extra: Any) -> Alert:
    try:
        return Alert.model_validate({
            "status": status, "labels": labels, "fingerprint": key, "startsAt": created, **extra,
        })
    except ValidationError as exc:
        raise PayloadError(_one_line(exc)) from None


def route_incident(kind: Literal["pagerduty", "opsgenie"], catalog_playbooks: Iterable[LoadedPlaybook],
                   alert: Alert) -> list[RouteMatch]:
    """Each playbook whose `triggers.<kind>` takes this incident, once (its first matching trigger).
    A resolve is not filtered by urgency, tags or priority: those can change while the run goes on
    (an on-call lowers the urgency, removes a tag), and the resolve must still reach its episode and
    cancel the run. One for an episode that never ran records its resolve and finds no run."""
    context = inert({"alert": alert.as_context()})
    out: list[RouteMatch] = []
    for loaded in catalog_playbooks:
        triggers = loaded.playbook.triggers.pagerduty if kind == "pagerduty" else loaded.playbook.triggers.opsgenie
        for k, trigger in enumerate(triggers):
            hit = (pagerduty_matches(trigger, alert.labels, resolved=alert.status == "resolved")
                   if isinstance(trigger, PagerDutyTrigger) else opsgenie_matches(trigger, alert))
            if hit:
                workflow_id = episode_id(loaded.playbook.name, alert.fingerprint, alert.starts_at, prefix=kind)
                out.append(with_params(loaded, trigger, k, workflow_id, context))
                break
    return out
