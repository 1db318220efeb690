"""The Alertmanager webhook payload v4: a documented-shape example, unknown fields, refusals."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from bot.alerts.payload import Alert, PayloadError, WebhookPayload, parse_payload

# The shape documented at prometheus.io/docs/alerting/latest/configuration/#webhook_config, filled
# in as Alertmanager sends it (RFC 3339 with nanoseconds; endsAt of a firing alert is Go's zero time).
EXAMPLE: dict[str, Any] = {
    "receiver": "playbook-bot",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "ServiceDown", "service": "api", "severity": "critical", "instance": "api-1:8080"},
            "annotations": {"summary": "api is down", "runbook_url": "https://runbooks.internal/api"},
            "startsAt": "2024-05-01T12:00:00.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=up%7Bjob%3D%22api%22%7D+%3D%3D+0",
            "fingerprint": "b1f2a3c4d5e6f708",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "ServiceDown", "service": "web", "severity": "critical"},
            "annotations": {},
            "startsAt": "2024-05-01T11:00:00+02:00",
            "endsAt": "2024-05-01T11:30:00+02:00",
            "generatorURL": "",
            "fingerprint": "0011223344556677",
        },
    ],
    "groupLabels": {"alertname": "ServiceDown"},
    "commonLabels": {"alertname": "ServiceDown", "severity": "critical"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "version": "4",
    "groupKey": '{}:{alertname="ServiceDown"}',
    "truncatedAlerts": 0,
}


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def refused(data: Any) -> str:
    with pytest.raises(PayloadError) as info:
        parse_payload(data if isinstance(data, bytes) else body(data))
    assert info.value.status == 400
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_documented_example_parses() -> None:
    payload = parse_payload(body(EXAMPLE))
    assert isinstance(payload, WebhookPayload)
    assert payload.version == "4" and payload.status == "firing" and payload.receiver == "playbook-bot"
    assert payload.group_key == '{}:{alertname="ServiceDown"}'
    assert payload.external_url == "http://alertmanager:9093"
    assert payload.truncated_alerts == 0
    first, second = payload.alerts
    assert first.labels["service"] == "api" and first.firing
    assert first.fingerprint == "b1f2a3c4d5e6f708"
    assert first.starts_at == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert first.ends_at is not None and first.ends_at.year == 1
    assert second.status == "resolved" and not second.firing
    assert second.starts_at == datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


def test_unknown_fields_are_kept() -> None:
    data = copy.deepcopy(EXAMPLE)
    data["notification_reason"] = "new_alert"
    data["routeLabels"] = {"team": "sre"}
    data["alerts"][0]["silencedBy"] = []
    payload = parse_payload(body(data))
    assert payload.model_extra == {"notification_reason": "new_alert", "routeLabels": {"team": "sre"}}
    assert payload.alerts[0].model_extra == {"silencedBy": []}
    dumped = payload.model_dump(mode="json", by_alias=True)
    assert dumped["routeLabels"] == {"team": "sre"} and dumped["groupKey"] == EXAMPLE["groupKey"]


def test_alert_context_uses_the_payload_keys() -> None:
    alert = parse_payload(body(EXAMPLE)).alerts[0]
    context = alert.as_context()
    assert context["labels"]["service"] == "api"
    assert context["annotations"]["summary"] == "api is down"
    assert context["fingerprint"] == "b1f2a3c4d5e6f708"
    assert context["status"] == "firing"
    assert context["startsAt"].startswith("2024-05-01T12:00:00.123456")
    assert "generatorURL" in context
    json.dumps(context)  # plain JSON values only


@pytest.mark.parametrize("version", ["3", 4, "5", None])
def test_other_versions_refused(version: Any) -> None:
    data = dict(EXAMPLE, version=version)
    message = refused(data)
    assert "version" in message and '"4"' in message


def test_missing_version_refused() -> None:
    data = {k: v for k, v in EXAMPLE.items() if k != "version"}
    assert refused(data).startswith("version: missing")


@pytest.mark.parametrize(
    "index, change, expected",
    [
        (1, lambda a: a.pop("fingerprint"), "alerts[1].fingerprint: missing"),
        (0, lambda a: a.update(fingerprint=""), "alerts[0].fingerprint: empty"),
        (1, lambda a: a.pop("labels"), "alerts[1].labels: missing"),
        (0, lambda a: a.update(labels={}), "alerts[0].labels: empty"),
        (0, lambda a: a.pop("startsAt"), "alerts[0].startsAt: missing"),
        (0, lambda a: a.update(startsAt="2024-05-01T12:00:00"), "alerts[0].startsAt: needs a timezone"),
        (0, lambda a: a.update(status="pending"), "alerts[0].status:"),
        (0, lambda a: a.update(labels={"a": 1}), "alerts[0].labels.a:"),
    ],
)
def test_bad_alert_named_by_field_and_index(index: int, change: Any, expected: str) -> None:
    data = copy.deepcopy(EXAMPLE)
    change(data["alerts"][index])
    assert expected in refused(data)


def test_several_problems_still_one_line() -> None:
    data = copy.deepcopy(EXAMPLE)
    for alert in data["alerts"]:
        alert.pop("fingerprint")
    message = refused(data)
    assert message == (
        "invalid webhook payload: alerts[0].fingerprint: missing; alerts[1].fingerprint: missing"
    )
    data["alerts"] = [copy.deepcopy(EXAMPLE["alerts"][0]) for _ in range(5)]
    for alert in data["alerts"]:
        alert["labels"] = {}
    assert refused(data).endswith("alerts[2].labels: empty (and 2 more)")


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b'{"version": "4",', "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "expected a JSON object"),
        (b'{"version": "4"}', "status: missing; alerts: missing"),
    ],
)
def test_malformed_bodies(raw: bytes, expected: str) -> None:
    assert expected in refused(raw)


def test_alert_model_accepts_field_names_too() -> None:
    alert = Alert(
        status="firing", labels={"a": "b"}, starts_at=datetime(2024, 1, 1, tzinfo=timezone.utc), fingerprint="f"
    )
    assert alert.as_context()["startsAt"] == "2024-01-01T00:00:00Z"
