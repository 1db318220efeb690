"""The shipped JSON Schema is generated from the models and the action registry, so it cannot drift."""

from __future__ import annotations

import json
from pathlib import Path

from bot.playbook.schema import SCHEMA_DIALECT, playbook_json_schema, schema_text, shipped_action_names

SHIPPED = Path(__file__).resolve().parents[2] / "schema" / "playbook.schema.json"


def test_shipped_schema_is_up_to_date() -> None:
    fresh = playbook_json_schema()
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
    assert shipped == fresh, (
        "schema/playbook.schema.json is stale: regenerate it with "
        "`.venv/bin/python -m bot.playbook.schema > schema/playbook.schema.json`"
    )


def test_schema_shape() -> None:
    schema = playbook_json_schema(action_names=["core.log", "http.request"])
    assert schema["$schema"] == SCHEMA_DIALECT
    assert schema["$id"] and schema["title"]
    assert schema["additionalProperties"] is False
    step = schema["$defs"]["Step"]
    assert "with" in step["properties"] and "with_" not in step["properties"]
    assert step["properties"]["action"]["enum"] == ["core.log", "http.request"]
    assert schema["$defs"]["Compensation"]["properties"]["action"]["enum"] == ["core.log", "http.request"]
    assert step["properties"]["timeout"]["default"] == "5m"  # as authors write it, not PT5M
    assert "PT" not in json.dumps(schema)
    assert json.loads(schema_text(["core.log"])) == playbook_json_schema(["core.log"])


def test_no_actions_means_no_enum() -> None:
    schema = playbook_json_schema(action_names=[])
    assert "enum" not in schema["$defs"]["Step"]["properties"]["action"]


def test_test_doubles_stay_out_of_the_schema() -> None:
    assert all(not name.startswith("test.") for name in shipped_action_names())


def test_vars_are_named_constants_in_the_schema() -> None:
    prop = playbook_json_schema(action_names=[])["properties"]["vars"]
    assert prop["type"] == "object" and prop["additionalProperties"] is False
    assert list(prop["patternProperties"]) == ["^[A-Za-z_][A-Za-z0-9_]*$"]
    assert "vars.NAME" in prop["description"]
