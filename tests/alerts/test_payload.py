"""The webhook payloads: Alertmanager v4 and Grafana Alerting v1, documented-shape examples, unknown fields, refusals."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from bot.alerts.fingerprint import alert_fingerprint
from bot.alerts.payload import Alert, GrafanaAlert, GrafanaPayload, PayloadError, WebhookPayload, parse_payload

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


# ---- Grafana Alerting (version "1") ---------------------------------------------------------------

# The example body of Grafana's docs, "Configure the webhook notifier for Alerting" (grafana.com/docs/
# grafana/latest/alerting/configure-notifications/manage-contact-points/integrations/webhook-notifier/),
# as printed there.
GRAFANA_EXAMPLE: dict[str, Any] = {
    "receiver": "My Super Webhook",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
            "annotations": {
                "description": "The system has high memory usage",
                "runbook_url": "https://myrunbook.com/runbook/1234",
                "summary": "This alert was triggered for zone us-1",
            },
            "startsAt": "2021-10-12T09:51:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
            "fingerprint": "c6eadffa33fcdf37",
            "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT2%2Cteam%3Dblue%2Czone%3Dus-1",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
        },
        {
            "status": "firing",
            "labels": {"alertname": "High CPU usage", "team": "blue", "zone": "eu-1"},
            "annotations": {
                "description": "The system has high CPU usage",
                "runbook_url": "https://myrunbook.com/runbook/1234",
                "summary": "This alert was triggered for zone eu-1",
            },
            "startsAt": "2021-10-12T09:56:03.157076+02:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/d1rdpdv7k/edit",
            "fingerprint": "bc97ff14869b13e3",
            "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT1%2Cteam%3Dblue%2Czone%3Deu-1",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
        },
    ],
    "groupLabels": {},
    "commonLabels": {"team": "blue"},
    "commonAnnotations": {},
    "externalURL": "https://play.grafana.org/",
    "version": "1",
    "groupKey": "{}:{}",
    "truncatedAlerts": 0,
    "title": "[FIRING:2]  (blue)",
    "state": "alerting",
    "message": "**Firing**\n\nLabels:\n - alertname = T2\n - team = blue\n - zone = us-1\nAnnotations:\n - description = This is the alert rule checking the second system\n - runbook_url = https://myrunbook.com\n - summary = This is my summary\nSource: https://play.grafana.org/alerting/1afz29v7z/edit\nSilence: https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT2%2Cteam%3Dblue%2Czone%3Dus-1\n\nLabels:\n - alertname = T1\n - team = blue\n - zone = eu-1\nAnnotations:\nSource: https://play.grafana.org/alerting/d1rdpdv7k/edit\nSilence: https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT1%2Cteam%3Dblue%2Czone%3Deu-1\n",
}


def grafana_refused(data: Any) -> str:
    with pytest.raises(PayloadError) as info:
        parse_payload(data if isinstance(data, bytes) else body(data), "grafana")
    assert info.value.status == 400
    message = str(info.value)
    assert "\n" not in message
    return message


def test_grafanas_documented_example_parses() -> None:
    payload = parse_payload(body(GRAFANA_EXAMPLE), "grafana")
    assert isinstance(payload, GrafanaPayload)
    assert (payload.version, payload.org_id, payload.state) == ("1", 1, "alerting")
    first, second = payload.alerts
    assert isinstance(first, GrafanaAlert)
    assert first.fingerprint == "c6eadffa33fcdf37" and second.fingerprint == "bc97ff14869b13e3"
    assert first.starts_at == datetime(2021, 10, 12, 7, 51, 3, 157076, tzinfo=timezone.utc)
    assert first.values == {"B": 44.23943737541908, "C": 1}


def test_grafanas_own_fields_reach_templates_as_alert_keys() -> None:
    alert = parse_payload(body(GRAFANA_EXAMPLE), "grafana").alerts[0]
    context = alert.as_context()
    assert context["silenceURL"].startswith("https://play.grafana.org/alerting/silence/new")
    assert context["values"] == {"B": 44.23943737541908, "C": 1}
    assert context["labels"]["zone"] == "us-1" and context["fingerprint"] == "c6eadffa33fcdf37"
    older = copy.deepcopy(GRAFANA_EXAMPLE)  # Grafana before 9 sent valueString instead of values
    del older["alerts"][0]["values"]
    older["alerts"][0]["valueString"] = "[ metric='' labels={} value=14151.331895396988 ]"
    older["alerts"][0]["imageURL"] = "https://grafana.example/img.png"
    context = parse_payload(body(older), "grafana").alerts[0].as_context()
    assert context["valueString"].startswith("[ metric=''") and context["imageURL"].endswith("img.png")
    json.dumps(context)


@pytest.mark.parametrize("absent", [lambda a: a.pop("fingerprint"), lambda a: a.update(fingerprint="")])
def test_a_grafana_alert_without_fingerprint_gets_alertmanagers(absent: Any) -> None:
    data = copy.deepcopy(GRAFANA_EXAMPLE)
    absent(data["alerts"][0])
    first = parse_payload(body(data), "grafana").alerts[0]
    assert first.fingerprint == alert_fingerprint({"alertname": "High memory usage", "team": "blue", "zone": "us-1"})
    # What Alertmanager 0.25 itself reports (its /api/v2/alerts) for an alert posted with these
    # labels; tests/alerts/test_fingerprint.py compares with a live Alertmanager the same way.
    assert first.fingerprint == "b4ab7c4e8d6676fb"


def test_the_same_labels_in_another_order_get_the_same_computed_fingerprint() -> None:
    data = copy.deepcopy(GRAFANA_EXAMPLE)
    data["alerts"][0].pop("fingerprint")
    again = copy.deepcopy(data)
    again["alerts"][0]["labels"] = dict(reversed(list(data["alerts"][0]["labels"].items())))
    assert parse_payload(body(data), "grafana").alerts[0].fingerprint == parse_payload(body(again), "grafana").alerts[0].fingerprint


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda a: a.update(fingerprint=None), "alerts[0].fingerprint:"),
        (lambda a: a.update(fingerprint=7), "alerts[0].fingerprint:"),
        (lambda a: (a.pop("fingerprint"), a.update(labels={"a": 1})), "alerts[0].labels.a:"),
        (lambda a: (a.pop("fingerprint"), a.pop("labels")), "alerts[0].labels: missing"),
        (lambda a: (a.pop("fingerprint"), a.update(labels={})), "alerts[0].labels: empty"),
        (lambda a: a.update(values={"B": "high"}), "alerts[0].values.B:"),
        (lambda a: a.update(silenceURL=["x"]), "alerts[0].silenceURL:"),
        (lambda a: a.pop("startsAt"), "alerts[0].startsAt: missing"),
        (lambda a: a.update(status="alerting"), "alerts[0].status:"),
    ],
)
def test_bad_grafana_alerts_are_named(change: Any, expected: str) -> None:
    data = copy.deepcopy(GRAFANA_EXAMPLE)
    change(data["alerts"][0])
    assert expected in grafana_refused(data)


def test_the_wrong_sender_on_a_route_says_where_it_belongs() -> None:
    assert "POST /grafana" in refused(GRAFANA_EXAMPLE)
    assert "POST /alertmanager" in grafana_refused(EXAMPLE)
    assert '"1"' in grafana_refused(dict(GRAFANA_EXAMPLE, version="2"))
    assert grafana_refused({k: v for k, v in GRAFANA_EXAMPLE.items() if k != "version"}).startswith("version: missing")
    assert "orgId:" in grafana_refused(dict(GRAFANA_EXAMPLE, orgId="one"))


def test_grafanas_legacy_dashboard_alert_is_named_as_such() -> None:
    # Grafana's legacy alerting (before 8) posted this shape: no version, no alerts list.
    legacy = {"dashboardId": 1, "evalMatches": [{"value": 1, "metric": "Count", "tags": {}}], "orgId": 1,
              "panelId": 2, "ruleId": 1, "ruleName": "Panel Title alert", "ruleUrl": "http://localhost:3000/d/x",
              "state": "alerting", "tags": {}, "title": "[Alerting] Panel Title alert"}
    for message in (grafana_refused(legacy), refused(legacy)):
        assert "legacy Grafana alerting" in message and "version" in message


@pytest.mark.parametrize("raw", [b'{"version": "1", "x": NaN}', b'{"version": "1", "x": -Infinity}'])
def test_non_json_constants_are_refused(raw: bytes) -> None:
    assert "is not a JSON value" in grafana_refused(raw)


@pytest.mark.parametrize(("fingerprint", "expected"), [
    ("b1f2\x00a3c4", "control character"),
    ("b1f2\na3c4", "control character"),
    ("\x7f", "control character"),
    ("f" * 257, "at most 256 characters"),
])
def test_an_alert_key_no_audit_store_could_hold_is_refused_by_name(fingerprint: str, expected: str) -> None:
    """The fingerprint keys the episode and the audit trail's event ids: a NUL or a huge one is a
    400 naming it here, not a store error (PostgreSQL refused both) that failed others' writes."""
    data = copy.deepcopy(EXAMPLE)
    data["alerts"][1]["fingerprint"] = fingerprint
    message = refused(data)
    assert "alerts[1].fingerprint" in message and expected in message, message
    data["alerts"][1]["fingerprint"] = "f" * 256
    assert parse_payload(body(data)).alerts[1].fingerprint == "f" * 256
