"""JSON Schema of the playbook format, generated from the pydantic models so editors and CI never drift.

Regenerate the shipped copy with `python -m bot.playbook.schema > schema/playbook.schema.json`;
a test fails while the shipped file differs from a fresh generation.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Iterable

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from bot.playbook.checks import registered_actions
from bot.playbook.durations import format_duration
from bot.playbook.model import Playbook

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:playbook-bot:schema:playbook:v1"
TEMPLATE = {"type": "string", "pattern": "\\{\\{|\\{%", "description": "A template; its value is checked once it renders."}
TEMPLATE_REF = "#/$defs/Template"


class _Generator(GenerateJsonSchema):
    """Defaults as authors write them: pydantic would show a duration default as ISO 8601 (`PT5M`)."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)


def shipped_action_names() -> list[str]:
    """Actions defined in the `bot` package; test doubles registered elsewhere never reach the schema."""
    return sorted(name for name, spec in registered_actions().items() if spec.params.__module__.startswith("bot."))


def playbook_json_schema(action_names: Iterable[str] | None = None) -> dict[str, Any]:
    """The schema editors validate playbook YAML with; `action` is an enum of the shipped actions."""
    body = Playbook.model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)
    names = sorted(action_names) if action_names is not None else shipped_action_names()
    if names:  # an empty enum would refuse every playbook: leave `action` a plain string then
        specs = registered_actions()
        arguments = [_with_rule(name, specs[name].params) for name in names if name in specs]
        for model in ("Step", "Compensation", "Fallback"):
            prop = body["$defs"][model]["properties"]["action"]
            prop["enum"] = names
            prop.setdefault("description", "A registered action; `playbook-bot validate` also checks its `with` keys.")
            if arguments:
                body["$defs"][model]["allOf"] = arguments
        if arguments:
            body["$defs"]["Template"] = TEMPLATE
    body["$defs"]["ParamSpec"]["allOf"] = [  # what ParamSpec's own validator insists on, for editors
        {"if": {"properties": {"type": {"const": "array"}}, "required": ["type"]}, "then": {"required": ["items"]}},
        {"if": {"properties": {"type": {"enum": ["array", "object"]}}, "required": ["type"]},
         "then": {"not": {"required": ["enum"]}}},
    ]
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        **body,
        "title": "playbook-bot playbook (v1)",
        "description": "An incident-response playbook: typed params, alert triggers and steps run as a saga.",
    }


def _with_rule(name: str, params: type[BaseModel]) -> dict[str, Any]:
    """`with` for one action: its keys with their types and descriptions, where any value may also be
    a template (checked when it renders), so editors flag a misspelt key or a literal of the wrong type."""
    schema = params.model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)
    properties = {key: _templatable(prop) for key, prop in schema.get("properties", {}).items()}
    rule: dict[str, Any] = {"type": "object", "properties": properties}
    if schema.get("additionalProperties") is False:
        rule["additionalProperties"] = False
    if schema.get("required"):
        rule["required"] = schema["required"]
    return {
        "if": {"properties": {"action": {"const": name}}, "required": ["action"]},
        "then": {"properties": {"with": rule}},
    }


_ANNOTATIONS = ("title", "description", "default", "examples")


def _templatable(schema: dict[str, Any]) -> dict[str, Any]:
    """A value schema where the value, and every value inside it, may instead be a template string."""
    if "$ref" in schema or not schema:
        return {key: schema[key] for key in _ANNOTATIONS if key in schema}  # nested models: validate checks them
    inner = _inner(schema)
    annotations = {key: item for key, item in inner.items() if key in _ANNOTATIONS}
    value = {key: item for key, item in inner.items() if key not in _ANNOTATIONS}
    options = value.pop("anyOf") if list(value) == ["anyOf"] else [value]
    return {**annotations, "anyOf": [*options, {"$ref": TEMPLATE_REF}]}


def _inner(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    if "anyOf" in out:
        out["anyOf"] = [_inner(option) if "$ref" not in option else {} for option in out["anyOf"]]
    if isinstance(out.get("items"), dict):
        out["items"] = _templatable(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _templatable(out["additionalProperties"])
    if isinstance(out.get("properties"), dict):
        out["properties"] = {key: _templatable(prop) for key, prop in out["properties"].items()}
    return out


def schema_text(action_names: Iterable[str] | None = None) -> str:
    """The exact text of `schema/playbook.schema.json` (stable key order, trailing newline)."""
    return json.dumps(playbook_json_schema(action_names), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
