"""Alert triggers fill array and object params: a whole-expression template renders to the native
value (DESIGN v1.1 Templates), text is read like a CLI `-p`, and either is typed and checked."""

from __future__ import annotations

from typing import Any

import pytest

from bot.alerts.episodes import route
from bot.alerts.payload import Alert
from tests.alerts.test_episodes import loaded

ROLL = loaded(
    {
        "name": "roll",
        "params": {
            "hosts": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9.-]+$"}, "min_items": 1},
            "target": {"type": "object", "properties": {"zone": {"type": "string"}, "weight": {"type": "integer",
                                                                                                "default": 1}}},
            "sizes": {"type": "array", "items": {"type": "integer"}, "required": False},
            "labels": {"type": "object", "additional_properties": True, "required": False},
        },
        "triggers": {
            "alertmanager": [
                {
                    "matchers": ['alertname="Roll"'],
                    "params": {
                        "hosts": "{{ alert.labels.hosts }}",  # text: `a,b` or JSON
                        "target": "{{ alert.annotations.target | fromjson }}",  # native, from JSON text
                        "sizes": ["{{ alert.labels.size | quantity }}", 1],  # a literal list with a native item
                        "labels": "{{ alert.labels }}",  # the whole mapping, natively
                    },
                }
            ]
        },
    }
)


def alert(labels: dict[str, str], annotations: dict[str, str]) -> Alert:
    return Alert.model_validate({
        "status": "firing", "labels": {"alertname": "Roll", "size": "1Ki", **labels}, "annotations": annotations,
        "startsAt": "2024-05-01T14:00:00Z", "fingerprint": "f00d",
    })


@pytest.mark.parametrize("hosts", ["web-1,web-2", '["web-1", "web-2"]'])
def test_trigger_fills_arrays_and_objects(hosts: str) -> None:
    (match,) = route([ROLL], alert({"hosts": hosts}, {"target": '{"zone": "eu-1", "weight": "3"}'}))
    assert match.ok, match.error
    assert match.params == {
        "hosts": ["web-1", "web-2"],
        "target": {"zone": "eu-1", "weight": 3},
        "sizes": [1024, 1],
        "labels": {"alertname": "Roll", "size": "1Ki", "hosts": hosts},
    }


@pytest.mark.parametrize(
    ("labels", "annotations", "expected"),
    [
        ({"hosts": "web-1,WEB 2"}, {"target": '{"zone": "a"}'}, "param 'hosts[1]': 'WEB 2' does not match"),
        ({"hosts": "a"}, {"target": '{"zone": "a", "evil": 1}'}, "param 'target': unknown property 'evil'"),
        ({"hosts": "a"}, {"target": "[1]"}, "param 'target': expected an object, got [1]"),
        ({"hosts": "a"}, {"target": "not json"}, "fromjson: not valid JSON"),
        ({"hosts": "a", "size": "lots"}, {"target": "{}"}, "quantity: 'lots' is not a Kubernetes quantity"),
        ({"hosts": "[" * 5000}, {"target": '{"zone": "a"}'}, "param 'hosts': nested more than 6"),
    ],
)
def test_bad_alert_data_is_a_rejected_match_naming_the_rule(
    labels: dict[str, str], annotations: dict[str, str], expected: str
) -> None:
    (match,) = route([ROLL], alert(labels, annotations))
    assert not match.ok and match.params is None
    assert match.error is not None and match.error.startswith("playbook 'roll' trigger 0 params: ")
    assert expected in match.error, match.error


def test_a_huge_label_is_refused_without_echoing_it() -> None:
    (match,) = route([ROLL], alert({"hosts": "a," * 40_000}, {"target": '{"zone": "a"}'}))
    assert match.error is not None and "more than" in match.error and len(match.error) < 600, match.error[:600]


def test_alert_text_inside_an_array_stays_literal() -> None:
    """A label that reads like a template or a secret reference is data: never rendered, never resolved."""
    payload: dict[str, Any] = {"hosts": "{{ secret('T') }},${secret:T}"}
    (match,) = route([ROLL], alert(payload, {"target": '{"zone": "{{ 7 * 7 }}"}'}))
    # the pattern refuses it for hosts; the object's free-text zone keeps it as written
    assert not match.ok and "param 'hosts[0]'" in (match.error or "")
    roll_free = loaded({
        "name": "free", "params": {"hosts": {"type": "array", "items": {"type": "string"}},
                                   "target": {"type": "object", "properties": {"zone": {"type": "string"}}}},
        "triggers": {"alertmanager": [{"matchers": ['alertname="Roll"'], "params": {
            "hosts": "{{ alert.labels.hosts }}", "target": "{{ alert.annotations.target | fromjson }}"}}]},
    })
    (match,) = route([roll_free], alert(payload, {"target": '{"zone": "{{ 7 * 7 }}"}'}))
    assert match.params == {"hosts": ["{{ secret('T') }}", "${secret:T}"], "target": {"zone": "{{ 7 * 7 }}"}}
