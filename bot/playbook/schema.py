"""JSON Schema of the playbook format, generated from the pydantic models so editors and CI never drift.

Regenerate the shipped copy with `python -m bot.playbook.schema > schema/playbook.schema.json`;
a test fails while the shipped file differs from a fresh generation.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Iterable

from pydantic.json_schema import GenerateJsonSchema

from bot.playbook.checks import registered_actions
from bot.playbook.durations import format_duration
from bot.playbook.model import Playbook

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:playbook-bot:schema:playbook:v1"


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
        for model in ("Step", "Compensation", "Fallback"):
            prop = body["$defs"][model]["properties"]["action"]
            prop["enum"] = names
            prop.setdefault("description", "A registered action; `playbook-bot validate` also checks its `with` keys.")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        **body,
        "title": "playbook-bot playbook (v1)",
        "description": "An incident-response playbook: typed params, alert triggers and steps run as a saga.",
    }


def schema_text(action_names: Iterable[str] | None = None) -> str:
    """The exact text of `schema/playbook.schema.json` (stable key order, trailing newline)."""
    return json.dumps(playbook_json_schema(action_names), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
