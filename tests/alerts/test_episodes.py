"""Episode ids and routing an alert to the playbooks whose triggers match it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.alerts.episodes import RouteMatch, check_triggers, episode_id, route, trigger_matchers
from bot.alerts.payload import Alert
from bot.playbook.loader import LoadedPlaybook
from bot.playbook.model import Playbook

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


# -- episode ids -------------------------------------------------------------------------------


def test_episode_id_readable_and_deterministic() -> None:
    assert episode_id("restart-service", "b1f2a3c4d5e6f708", T0) == (
        "alert-restart-service-b1f2a3c4d5e6f708-20240501T120000.123456Z"
    )
    assert episode_id("restart-service", "b1f2a3c4d5e6f708", T0) == episode_id(
        "restart-service", "b1f2a3c4d5e6f708", T0
    )


@pytest.mark.parametrize("hours", [-11, -3, 2, 5.5, 14])
def test_same_instant_in_any_offset_same_id(hours: float) -> None:
    offset = timezone(timedelta(hours=hours))
    assert episode_id("p", "f", T0.astimezone(offset)) == episode_id("p", "f", T0)


def test_ids_differ_across_playbook_fingerprint_and_start() -> None:
    ids = {
        episode_id("p", "f", T0),
        episode_id("q", "f", T0),
        episode_id("p", "g", T0),
        episode_id("p", "f", T0 + timedelta(microseconds=1)),
        episode_id("p", "f", T0 + timedelta(days=1)),
        episode_id("p-f", "x", T0),
        episode_id("p", "f-x", T0),
    }
    assert len(ids) == 7


def test_naive_start_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        episode_id("p", "f", datetime(2024, 5, 1, 12, 0))


def test_odd_fingerprints_are_encoded_safely() -> None:
    weird = episode_id("p", "a/b c%", T0)
    assert weird == "alert-p-a%2Fb%20c%25-20240501T120000.123456Z"
    assert episode_id("p", "a/b c", T0) != episode_id("p", "a%2Fb c", T0)
    long = episode_id("p", "x" * 500, T0)
    assert len(long) < 120 and "~" in long
    assert long == episode_id("p", "x" * 500, T0) != episode_id("p", "x" * 501, T0)
    assert all(ch.isascii() and ch.isprintable() and ch != " " for ch in episode_id("p", "ünï", T0))


def test_year_one_is_zero_padded() -> None:
    assert episode_id("p", "f", datetime(1, 1, 1, tzinfo=timezone.utc)).endswith("-00010101T000000.000000Z")


# -- routing -----------------------------------------------------------------------------------


def loaded(data: dict[str, Any]) -> LoadedPlaybook:
    data = {"steps": [{"id": "log", "action": "core.log", "with": {"message": "hi"}}], **data}
    playbook = Playbook.model_validate(data)
    return LoadedPlaybook(playbook=playbook, path=Path(f"{playbook.name}.yaml"), hash=playbook.content_hash())


RESTART = loaded(
    {
        "name": "restart-service",
        "params": {
            "service": {"type": "string", "pattern": "^[a-z0-9-]+$"},
            "environment": {"type": "string", "enum": ["staging", "production"], "default": "production"},
            "replicas": {"type": "integer", "default": 1},
            "page": {"type": "boolean", "default": False},
        },
        "triggers": {
            "alertmanager": [
                {
                    "matchers": ['alertname="ServiceDown"', 'severity=~"critical|page"'],
                    "params": {
                        "service": "{{ alert.labels.service }}",
                        "replicas": "{{ alert.labels.replicas | default(2) }}",
                        "page": "{{ alert.labels.severity == 'page' }}",
                    },
                },
                {"matchers": ['alertname="ServiceDown"'], "params": {"service": "fallback"}, "on_resolved": "continue"},
            ]
        },
    }
)
NOTIFY = loaded(
    {
        "name": "notify-owner",
        "params": {"summary": {"type": "string", "default": ""}, "team": {"type": "string"}},
        "triggers": {
            "alertmanager": [
                {
                    "matchers": ['{alertname=~"Service.*", team!=""}'],
                    "params": {"summary": "{{ alert.annotations.summary }}", "team": "{{ alert.labels.team }}"},
                }
            ]
        },
    }
)
DISK = loaded({"name": "clean-disk", "triggers": {"alertmanager": [{"matchers": ['alertname="DiskFull"']}]}})
MANUAL = loaded({"name": "manual-only"})
CATALOG = [DISK, MANUAL, NOTIFY, RESTART]


def alert(**labels: str) -> Alert:
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "ServiceDown", **labels},
            "annotations": {"summary": "it is down"},
            "startsAt": "2024-05-01T14:00:00.123456+02:00",
            "fingerprint": "b1f2a3c4d5e6f708",
        }
    )


def by_name(matches: list[RouteMatch]) -> dict[str, RouteMatch]:
    return {m.name: m for m in matches}


def test_one_alert_several_playbooks_params_templated_and_typed() -> None:
    found = by_name(route(CATALOG, alert(service="api", severity="page", team="sre", replicas="3")))
    assert set(found) == {"restart-service", "notify-owner"}
    restart = found["restart-service"]
    assert restart.ok and restart.trigger_index == 0 and restart.trigger.on_resolved == "cancel"
    assert restart.params == {"service": "api", "environment": "production", "replicas": 3, "page": True}
    assert restart.workflow_id == "alert-restart-service-b1f2a3c4d5e6f708-20240501T120000.123456Z"
    notify = found["notify-owner"]
    assert notify.params == {"summary": "it is down", "team": "sre"}
    assert notify.workflow_id != restart.workflow_id


def test_defaults_apply_and_first_matching_trigger_wins_once() -> None:
    found = route(CATALOG, alert(service="web", severity="critical"))
    assert [m.name for m in found] == ["restart-service"]  # team missing: notify-owner's team!="" fails
    assert found[0].params == {"service": "web", "environment": "production", "replicas": 2, "page": False}


def test_second_trigger_used_when_first_does_not_match() -> None:
    (match,) = route(CATALOG, alert(service="web", severity="warning"))
    assert match.trigger_index == 1 and match.trigger.on_resolved == "continue"
    assert match.params is not None and match.params["service"] == "fallback"


def test_nothing_matches() -> None:
    assert route(CATALOG, alert(service="api") .model_copy(update={"labels": {"alertname": "Other"}})) == []


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"service": "Bad Name", "severity": "page"}, "does not match"),  # pattern
        ({"service": "api", "severity": "page", "replicas": "many"}, "expected an integer"),
        ({"severity": "page"}, "service"),  # label missing: template fails, says which
    ],
)
def test_bad_param_is_an_error_match(labels: dict[str, str], expected: str) -> None:
    found = by_name(route(CATALOG, alert(**labels)))
    restart = found["restart-service"]
    assert not restart.ok and restart.params is None
    assert restart.error is not None and expected in restart.error
    assert "restart-service" in restart.error
    assert restart.workflow_id.startswith("alert-restart-service-")


def test_resolved_alerts_route_too() -> None:
    resolved = alert(service="api", severity="page").model_copy(update={"status": "resolved"})
    (match,) = route(CATALOG, resolved)
    assert match.name == "restart-service" and match.ok


def test_route_accepts_a_plain_dict() -> None:
    data = alert(service="api", severity="page").as_context()
    assert [m.name for m in route([RESTART], data)] == ["restart-service"]


def test_matchers_parsed_once() -> None:
    trigger = RESTART.playbook.triggers.alertmanager[0]
    first = trigger_matchers(trigger)
    assert [m.name for m in first] == ["alertname", "severity"]
    assert all(a is b for a, b in zip(first, trigger_matchers(trigger)))


# -- load-time checks --------------------------------------------------------------------------


def test_check_triggers_clean() -> None:
    for playbook in CATALOG:
        assert check_triggers(playbook) == []
        assert check_triggers(playbook.playbook) == []


def test_check_triggers_names_bad_matchers() -> None:
    bad = loaded(
        {
            "name": "bad",
            "triggers": {
                "alertmanager": [
                    {"matchers": ['alertname="X"', 'severity=~"(("']},
                    {"matchers": ["{}"]},
                    {"matchers": ['foo="unterminated']},
                ]
            },
        }
    )
    problems = check_triggers(bad)
    assert len(problems) == 3
    assert problems[0].startswith("triggers.alertmanager[0].matchers[1]: matcher 'severity=~\"((\"': bad regex")
    assert problems[1].startswith("triggers.alertmanager[1].matchers: no matcher")
    assert problems[2].startswith("triggers.alertmanager[2].matchers[0]:") and "unterminated" in problems[2]
    # and route skips a trigger it cannot read rather than guessing
    assert route([bad], alert(severity="x").model_copy(update={"labels": {"alertname": "X", "severity": "x"}})) == []
