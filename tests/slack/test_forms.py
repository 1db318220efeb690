"""The form a playbook's params make, checked against Slack's documented view limits (written
from Slack's docs in tests/slack/slack_limits.py), the sealed metadata, and submissions read back."""

from __future__ import annotations

import json
import time

import pytest

from bot.playbook.loader import load_text
from bot.slack.forms import (
    FieldErrors,
    FormMeta,
    FormRefused,
    Sealer,
    form_view,
    notice_view,
    read_submission,
)
from tests.slack.slack_limits import view_errors

TYPES = load_text("""
name: typed
summary: Every kind of param
params:
  service: {type: string, pattern: "^[a-z0-9-]+$", description: "the service to restart"}
  environment: {type: string, enum: [staging, production], default: production}
  replicas: {type: integer, default: 2}
  ratio: {type: number, required: false}
  dry: {type: boolean, default: true, description: "only say what would happen"}
  hosts: {type: array, items: {type: string}, required: false}
  target: {type: object, properties: {zone: {type: string}}, required: false}
  note: {type: string, default: "from slack"}
steps:
  - {id: note, action: core.log, with: {message: hi}}
""")


def _by_block(view: dict) -> dict[str, dict]:
    return {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}


def test_the_form_has_an_input_per_param_of_the_right_kind_within_slacks_limits() -> None:
    view = form_view(TYPES, "meta", {"service": "api"})
    assert view_errors(view) == []
    blocks = _by_block(view)
    kinds = {k: b["element"]["type"] for k, b in blocks.items()}
    assert kinds == {
        "param:service": "plain_text_input", "param:environment": "static_select", "param:replicas": "number_input",
        "param:ratio": "number_input", "param:dry": "checkboxes", "param:hosts": "plain_text_input",
        "param:target": "plain_text_input", "param:note": "plain_text_input",
    }
    assert blocks["param:service"]["element"]["initial_value"] == "api"  # what was typed
    assert blocks["param:service"]["optional"] is False and "^[a-z0-9-]+$" in blocks["param:service"]["hint"]["text"]
    assert blocks["param:note"]["element"]["initial_value"] == "from slack"  # the default
    assert blocks["param:environment"]["element"]["initial_option"]["value"] == "production"
    assert [o["value"] for o in blocks["param:environment"]["element"]["options"]] == ["staging", "production"]
    assert blocks["param:replicas"]["element"]["is_decimal_allowed"] is False
    assert blocks["param:replicas"]["element"]["initial_value"] == "2"
    assert blocks["param:ratio"]["element"]["is_decimal_allowed"] is True and blocks["param:ratio"]["optional"] is True
    assert blocks["param:dry"]["element"]["initial_options"][0]["value"] == "true"
    assert blocks["param:hosts"]["element"]["multiline"] is True


def test_long_names_and_many_enum_values_still_fit() -> None:
    enum = [f"value-{i}-" + "x" * 100 for i in range(120)]  # too many for a select: a text input lists them
    loaded = load_text(json.dumps({
        "name": "a-playbook-with-a-rather-long-name-indeed",
        "summary": "s" * 5000,
        "params": {"choice": {"type": "string", "enum": enum}, "short": {"type": "string", "enum": ["a" * 140]}},
        "steps": [{"id": "x", "action": "core.log", "with": {"message": "hi"}}],
    }))
    view = form_view(loaded, "m" * 3000)
    assert view_errors(view) == []
    assert _by_block(view)["param:choice"]["element"]["type"] == "plain_text_input"
    assert _by_block(view)["param:short"]["element"]["type"] == "static_select"  # text cut to 75, value whole
    assert view_errors(notice_view("t" * 40, "x" * 5000)) == []


def _sealed(sealer: Sealer, **changes: object) -> str:
    meta = FormMeta("typed", "U0ALICE", "C0INCIDENTS", "1.2.abc", "https://hooks.slack.com/x", TYPES.hash, int(time.time()))
    return sealer.seal(FormMeta(**{**meta.__dict__, **changes}))


def test_metadata_opens_only_sealed_by_us_for_the_same_user_and_recent() -> None:
    sealer = Sealer("secret")
    text = _sealed(sealer)
    assert sealer.open(text, "U0ALICE").playbook == "typed"
    doc = json.loads(text)
    doc["d"]["pb"] = "other"  # a forged playbook name under the old seal
    forged = json.dumps(doc)
    cases = {
        "forged name": (forged, "U0ALICE"),
        "other key": (_sealed(Sealer("another secret")), "U0ALICE"),
        "other user": (text, "U0MALLORY"),
        "not json": ("{", "U0ALICE"),
        "not ours": (json.dumps({"playbook": "typed"}), "U0ALICE"),
        "too long": ("x" * 3001, "U0ALICE"),
        "old": (_sealed(sealer, issued_at=int(time.time()) - 13 * 3600), "U0ALICE"),
        "not a string": (None, "U0ALICE"),
    }
    for case, (sent, user) in cases.items():
        with pytest.raises(FormRefused):
            sealer.open(sent, user)
            pytest.fail(case)


def _text(value: str | None) -> dict:
    return {"value": {"type": "plain_text_input", "value": value}}


def test_a_submission_is_typed_like_a_command() -> None:
    values = {
        "param:service": _text("api"),
        "param:environment": {"value": {"type": "static_select", "selected_option": {"text": {}, "value": "staging"}}},
        "param:replicas": {"value": {"type": "number_input", "value": "3"}},
        "param:ratio": {"value": {"type": "number_input", "value": None}},
        "param:dry": {"value": {"type": "checkboxes", "selected_options": []}},
        "param:hosts": _text("a,b"),
        "param:target": _text('{"zone": "z"}'),
        "param:note": _text(None),
    }
    assert read_submission(TYPES, values) == {
        "service": "api", "environment": "staging", "replicas": 3, "ratio": None, "dry": False,
        "hosts": ["a", "b"], "target": {"zone": "z"}, "note": "from slack",
    }


@pytest.mark.parametrize(
    ("values", "block", "says"),
    [
        ({"param:service": _text("API!")}, "param:service", "does not match"),
        ({"param:service": _text("api"), "param:replicas": {"value": {"type": "number_input", "value": "2.5"}}},
         "param:replicas", "integer"),
        ({"param:service": _text("api"),
          "param:environment": {"value": {"type": "static_select", "selected_option": {"value": "prod"}}}},
         "param:environment", "not one of"),
        ({"param:service": _text("x" * 3001)}, "param:service", "more than the 3000"),
        ({"param:service": _text(None)}, "param:service", "missing required param"),
        ({"param:service": {"value": {"type": "checkboxes", "selected_options": []}}}, "param:service",
         "expected a plain_text_input"),
        ({"param:service": _text("api"), "param:dry": {"value": {"type": "checkboxes", "selected_options": [
            {"value": "true"}, {"value": "true"}]}}}, "param:dry", "checkbox"),
        ({"param:service": _text("api"), "param:hosts": _text("[oops")}, "param:hosts", "not valid JSON"),
    ],
)
def test_bad_values_are_field_errors(values: dict, block: str, says: str) -> None:
    with pytest.raises(FieldErrors) as caught:
        read_submission(TYPES, values)
    assert says in caught.value.errors[block], caught.value.errors


@pytest.mark.parametrize(
    "values",
    [
        {"param:service": _text("api"), "param:sneaky": _text("x")},  # a param the playbook does not have
        {"param:service": _text("api"), "not-a-param": _text("x")},
        {"param:" + "s" * 300: _text("x")},
        {"param:service": {"value": _text("x")["value"], "other": _text("y")["value"]}},
        {"param:service": {"other": _text("y")["value"]}},
        {f"param:p{i}": _text("x") for i in range(50)},
        "not a mapping",
    ],
)
def test_fields_the_form_never_drew_refuse_the_submission(values: object) -> None:
    with pytest.raises(FormRefused):
        read_submission(TYPES, values)
