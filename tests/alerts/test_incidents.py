"""PagerDuty V3 and Opsgenie webhooks read as alerts: documented payloads, signatures, routing."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.alerts.episodes import episode_id
from bot.alerts.incidents import pagerduty_signed, parse_opsgenie, parse_pagerduty, route_incident
from bot.alerts.payload import PayloadError
from bot.playbook.loader import LoadedPlaybook
from bot.playbook.model import Playbook

# developer.pagerduty.com, Webhooks v3 Overview, "Webhook Payload": the documented example, as printed.
PD_EXAMPLE: dict[str, Any] = {"event": {
    "id": "5ac64822-4adc-4fda-ade0-410becf0de4f",
    "event_type": "incident.priority_updated",
    "resource_type": "incident",
    "occurred_at": "2020-10-02T18:45:22.169Z",
    "agent": {"html_url": "https://acme.pagerduty.com/users/PLH1HKV", "id": "PLH1HKV",
              "self": "https://api.pagerduty.com/users/PLH1HKV", "summary": "Tenex Engineer", "type": "user_reference"},
    "client": {"name": "PagerDuty"},
    "data": {
        "id": "PGR0VU2", "type": "incident", "self": "https://api.pagerduty.com/incidents/PGR0VU2",
        "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2", "number": 2, "status": "triggered",
        "incident_key": "d3640fbd41094207a1c11e58e46b1662", "created_at": "2020-04-09T15:16:27Z",
        "title": "A little bump in the road",
        "service": {"html_url": "https://acme.pagerduty.com/services/PF9KMXH", "id": "PF9KMXH",
                    "self": "https://api.pagerduty.com/services/PF9KMXH", "summary": "API Service",
                    "type": "service_reference"},
        "assignees": [{"html_url": "https://acme.pagerduty.com/users/PTUXL6G", "id": "PTUXL6G",
                       "self": "https://api.pagerduty.com/users/PTUXL6G", "summary": "User 123", "type": "user_reference"}],
        "escalation_policy": {"html_url": "https://acme.pagerduty.com/escalation_policies/PUS0KTE", "id": "PUS0KTE",
                              "self": "https://api.pagerduty.com/escalation_policies/PUS0KTE", "summary": "Default",
                              "type": "escalation_policy_reference"},
        "teams": [{"html_url": "https://acme.pagerduty.com/teams/PFCVPS0", "id": "PFCVPS0",
                   "self": "https://api.pagerduty.com/teams/PFCVPS0", "summary": "Engineering", "type": "team_reference"}],
        "priority": {"html_url": "https://acme.pagerduty.com/account/incident_priorities", "id": "PSO75BM",
                     "self": "https://api.pagerduty.com/priorities/PSO75BM", "summary": "P1", "type": "priority_reference"},
        "urgency": "high",
        "conference_bridge": {"conference_number": "+1 1234123412,,987654321#", "conference_url": "https://example.com"},
        "resolve_reason": None,
    },
}}

# docs.opsgenie.com, "Alert action data" (what the Webhook integration posts): the Create example.
OG_EXAMPLE: dict[str, Any] = {
    "source": {"name": "web", "type": "API"},
    "alert": {
        "updatedAt": 1420452193166002000, "tags": ["tag1", "tag2"], "teams": ["team1", "team2"],
        "recipients": ["recipient1", "recipient2"], "message": " test alert", "username": "fili@ifountain.com",
        "alertId": "052652ac-5d1c-464a-812a-7dd18bbfba8c", "source": "fili@ifountain.com", "alias": "aliastest",
        "tinyId": "23", "createdAt": 1420452191104, "userId": "daed1180-0ce8-438b-8f8e-57e1a5920a2d", "entity": "",
    },
    "action": "Create",
    "integrationId": "37c8f316-17c6-49d7-899b-9c7e540c048d",
    "integrationName": "Integration1",
}


def pd(event_type: str, **data: Any) -> dict[str, Any]:
    body = copy.deepcopy(PD_EXAMPLE)
    body["event"]["event_type"] = event_type
    body["event"]["data"].update(data)
    return body


def raw(data: Any) -> bytes:
    return json.dumps(data).encode()


def loaded(data: dict[str, Any]) -> LoadedPlaybook:
    playbook = Playbook.model_validate({"name": "p", "steps": [{"id": "s", "action": "core.log", "with": {"message": "x"}}], **data})
    return LoadedPlaybook(playbook=playbook, path=Path(f"{playbook.name}.yaml"), hash=playbook.content_hash())


# ---- PagerDuty ------------------------------------------------------------------------------------


def test_a_triggered_incident_is_a_firing_alert_keyed_by_incident_and_created_time() -> None:
    (alert,) = parse_pagerduty(raw(pd("incident.triggered")))
    assert (alert.status, alert.fingerprint) == ("firing", "PGR0VU2")
    assert alert.starts_at == datetime(2020, 4, 9, 15, 16, 27, tzinfo=timezone.utc)
    assert alert.labels == {"alertname": "A little bump in the road", "incident": "PGR0VU2", "service": "API Service",
                            "service_id": "PF9KMXH", "urgency": "high", "priority": "P1"}
    context = alert.as_context()
    assert context["incident"]["html_url"] == "https://acme.pagerduty.com/incidents/PGR0VU2"
    assert context["event"] == {"id": "5ac64822-4adc-4fda-ade0-410becf0de4f", "event_type": "incident.triggered"}
    (resolved,) = parse_pagerduty(raw(pd("incident.resolved", status="resolved")))
    assert (resolved.status, resolved.fingerprint, resolved.starts_at) == ("resolved", "PGR0VU2", alert.starts_at)


def test_other_event_types_start_and_end_nothing() -> None:
    assert parse_pagerduty(raw(PD_EXAMPLE)) == []  # the documented incident.priority_updated
    assert parse_pagerduty(raw({"event": {"id": "x", "event_type": "pagey.ping", "data": {}}})) == []


@pytest.mark.parametrize("body, says", [
    (pd("incident.triggered", created_at=None), "event.data.created_at"),
    (pd("incident.triggered", service=None), "event.data.service"),
    (pd("incident.triggered", type="incident_note"), "event.data.type"),
    ({"event": {"event_type": "incident.triggered", "data": {}}}, "event.id: missing"),
    ({"messages": []}, "event: missing"),
    ([], "expected a JSON object"),
])
def test_bad_pagerduty_bodies_name_the_problem(body: Any, says: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_pagerduty(raw(body))
    assert says in str(info.value) and info.value.status == 400


def _signature(secret: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_pagerduty_signatures_as_documented() -> None:
    body = raw(pd("incident.triggered"))
    right, other = _signature("s3cret", body), _signature("rotated-out", body)
    assert pagerduty_signed(body, right, ["s3cret"])
    assert pagerduty_signed(body, f"{other},{right}", ["s3cret"]), "one of several comma-separated signatures"
    assert pagerduty_signed(body, right, ["new-one", "s3cret"]), "while a secret is rotated, either verifies"
    for header in ["", "v1=", right.upper().replace("V1=", "v1="), right[3:], "v0=" + right[3:], right + "00",
                   _signature("s3cret", body + b" "), "v1=" + "0" * 64, " , ,"]:
        assert not pagerduty_signed(body, header, ["s3cret"]), header
    assert not pagerduty_signed(body, right, []), "no secret configured: nothing verifies"
    assert not pagerduty_signed(body + b"\n", right, ["s3cret"]), "the raw body, byte for byte"
    assert not pagerduty_signed(body, "v1=é" + right[3:], ["s3cret"])


def test_pagerduty_triggers_route_by_service_and_urgency() -> None:
    (alert,) = parse_pagerduty(raw(pd("incident.triggered")))
    by_id = loaded({"name": "by-id", "params": {"title": {"type": "string"}}, "triggers": {"pagerduty": [
        {"services": ["PF9KMXH"], "params": {"title": "{{ alert.incident.title }}"}}]}})
    by_name = loaded({"name": "by-name", "triggers": {"pagerduty": [{"services": ["API Service"], "urgency": "high"}]}})
    low_only = loaded({"name": "low-only", "triggers": {"pagerduty": [{"services": ["PF9KMXH"], "urgency": "low"}]}})
    elsewhere = loaded({"name": "elsewhere", "triggers": {"pagerduty": [{"services": ["POTHER1"]}]}})
    alerts_only = loaded({"name": "alerts-only", "triggers": {"alertmanager": [{"matchers": ['alertname=~".+"']}]}})
    matches = route_incident("pagerduty", [by_id, by_name, low_only, elsewhere, alerts_only], alert)
    assert [m.name for m in matches] == ["by-id", "by-name"]
    assert matches[0].params == {"title": "A little bump in the road"}
    assert matches[0].workflow_id == "pagerduty-by-id-PGR0VU2-20200409T151627.000000Z"


def test_a_pagerduty_trigger_needs_a_service() -> None:
    with pytest.raises(ValueError, match="services"):
        loaded({"triggers": {"pagerduty": [{"services": []}]}})


# ---- Opsgenie -------------------------------------------------------------------------------------


def test_a_created_opsgenie_alert_is_a_firing_alert_keyed_by_id_and_created_time() -> None:
    (alert,) = parse_opsgenie(raw(OG_EXAMPLE))
    assert (alert.status, alert.fingerprint) == ("firing", "052652ac-5d1c-464a-812a-7dd18bbfba8c")
    assert alert.starts_at == datetime(2015, 1, 5, 10, 3, 11, 104000, tzinfo=timezone.utc)
    assert alert.labels["alias"] == "aliastest" and alert.labels["tiny_id"] == "23"
    assert alert.as_context()["opsgenie"]["tags"] == ["tag1", "tag2"]
    closed = dict(OG_EXAMPLE, action="Close")
    (resolved,) = parse_opsgenie(raw(closed))
    assert (resolved.status, resolved.fingerprint, resolved.starts_at) == ("resolved", alert.fingerprint, alert.starts_at)
    for action in ["Acknowledge", "AddNote", "UnAcknowledge", "Delete"]:
        assert parse_opsgenie(raw(dict(OG_EXAMPLE, action=action))) == []


@pytest.mark.parametrize("change, says", [
    (lambda b: b["alert"].pop("createdAt"), "alert.createdAt: missing"),
    (lambda b: b["alert"].update(createdAt="yesterday"), "alert.createdAt"),
    (lambda b: b["alert"].update(createdAt=10 ** 20), "alert.createdAt"),
    (lambda b: b["alert"].pop("alertId"), "alert.alertId: missing"),
    (lambda b: b["alert"].update(tags="tag1"), "alert.tags"),
    (lambda b: b.pop("action"), "action: missing"),
    (lambda b: b.update(alert=[]), "alert:"),
])
def test_bad_opsgenie_bodies_name_the_problem(change: Any, says: str) -> None:
    body = copy.deepcopy(OG_EXAMPLE)
    change(body)
    with pytest.raises(PayloadError) as info:
        parse_opsgenie(raw(body))
    assert says in str(info.value)


def test_opsgenie_triggers_route_by_tags_and_priority() -> None:
    body = copy.deepcopy(OG_EXAMPLE)
    body["alert"]["priority"] = "P1"
    (alert,) = parse_opsgenie(raw(body))
    tagged = loaded({"name": "tagged", "triggers": {"opsgenie": [{"tags": ["tag1"]}]}})
    both = loaded({"name": "both", "triggers": {"opsgenie": [{"tags": ["tag1", "tag2"], "priorities": ["P1", "P2"]}]}})
    missing_tag = loaded({"name": "missing-tag", "triggers": {"opsgenie": [{"tags": ["tag1", "db"]}]}})
    p3 = loaded({"name": "p3", "triggers": {"opsgenie": [{"priorities": ["P3"]}]}})
    matches = route_incident("opsgenie", [tagged, both, missing_tag, p3], alert)
    assert [m.name for m in matches] == ["tagged", "both"]
    assert matches[0].workflow_id == episode_id("tagged", alert.fingerprint, alert.starts_at, prefix="opsgenie")
    assert matches[0].workflow_id.startswith("opsgenie-tagged-052652ac%2D5d1c") and matches[0].workflow_id.endswith(
        "-20150105T100311.104000Z")


def test_an_opsgenie_trigger_needs_tags_or_priorities() -> None:
    with pytest.raises(ValueError, match="tags or priorities"):
        loaded({"triggers": {"opsgenie": [{"params": {}}]}})
