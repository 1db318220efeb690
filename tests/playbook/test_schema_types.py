"""The JSON Schema covers format v1.1's array/object params and each action's `with` (shell.run's
stdin and parse among them), where any value may also be a template."""

from __future__ import annotations

from typing import Any

from bot.playbook.schema import TEMPLATE_REF, playbook_json_schema

SCHEMA = playbook_json_schema()


def with_of(action: str, model: str = "Step") -> dict[str, Any]:
    rules = [rule for rule in SCHEMA["$defs"][model]["allOf"] if rule["if"]["properties"]["action"]["const"] == action]
    assert len(rules) == 1
    return rules[0]["then"]["properties"]["with"]


def test_param_spec_has_array_and_object() -> None:
    spec = SCHEMA["$defs"]["ParamSpec"]
    assert spec["properties"]["type"]["enum"] == ["string", "integer", "number", "boolean", "array", "object"]
    assert {"$ref": "#/$defs/ParamSpec"} in spec["properties"]["items"]["anyOf"]
    assert spec["properties"]["properties"]["anyOf"][0]["additionalProperties"] == {"$ref": "#/$defs/ParamSpec"}
    assert {"type": "integer", "minimum": 0, "maximum": 1000} in [
        {k: v for k, v in option.items() if k in ("type", "minimum", "maximum")}
        for option in spec["properties"]["max_items"]["anyOf"]
    ]
    assert {"type": "boolean"} in spec["properties"]["additional_properties"]["anyOf"]
    array_rule = spec["allOf"][0]
    assert array_rule["if"]["properties"]["type"]["const"] == "array" and array_rule["then"] == {"required": ["items"]}


def test_shell_run_with_lists_stdin_and_parse() -> None:
    rule = with_of("shell.run")
    assert rule["additionalProperties"] is False and rule["required"] == ["argv"]
    props = rule["properties"]
    assert {"const": "json", "type": "string"} in props["parse"]["anyOf"]
    assert {"type": "string"} in props["stdin"]["anyOf"] and "65536 bytes" in props["stdin"]["description"]
    assert props["argv"]["anyOf"][0]["items"]["anyOf"] == [{"type": "string"}, {"$ref": TEMPLATE_REF}]
    assert with_of("shell.run", "Compensation") == rule


def test_every_value_may_be_a_template_and_the_template_is_defined() -> None:
    rule = with_of("shell.run")
    for name, prop in rule["properties"].items():
        assert prop["anyOf"][-1] == {"$ref": TEMPLATE_REF}, name
    assert SCHEMA["$defs"]["Template"]["type"] == "string"
    actions = {r["if"]["properties"]["action"]["const"] for r in SCHEMA["$defs"]["Step"]["allOf"]}
    assert actions == set(SCHEMA["$defs"]["Step"]["properties"]["action"]["enum"])


def test_http_request_keeps_nested_templates_allowed() -> None:
    """`expected_status: [200, "{{ params.code }}"]` is valid YAML for validate; the schema agrees."""
    status = with_of("http.request")["properties"]["expected_status"]
    listed = next(option for option in status["anyOf"] if option.get("type") == "array")
    assert {"$ref": TEMPLATE_REF} in listed["items"]["anyOf"]
