"""Array and object params (format v1.1): typed from native JSON or text, bounded, located at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from bot.actions.base import ActionSpec
from bot.playbook.loader import load_file
from bot.playbook.model import (
    PARAM_MAX_BYTES,
    PARAM_MAX_DEPTH,
    PARAM_MAX_ITEMS,
    PARAM_MAX_KEYS,
    PARAM_MAX_NODES,
    Playbook,
)
from bot.playbook.params import ParamError, coerce_params
from tests.playbook.test_loader import all_errors, assert_located, only_error

Write = Callable[..., Path]

PLAYBOOK = Playbook.model_validate(
    {
        "name": "p",
        "params": {
            "hosts": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9.-]+$"}, "min_items": 1,
                      "max_items": 5},
            "ports": {"type": "array", "items": {"type": "integer", "enum": [80, 443, 8080]}, "default": [80]},
            "target": {
                "type": "object",
                "properties": {
                    "zone": {"type": "string", "enum": ["a", "b"]},
                    "weight": {"type": "number", "default": 1},
                    "note": {"type": "string", "required": False},
                },
                "required": False,
            },
            "labels": {"type": "object", "additional_properties": True, "required": False},
        },
        "steps": [{"id": "a", "action": "core.log"}],
    }
)


def coerce(**raw: Any) -> dict[str, Any]:
    return coerce_params(PLAYBOOK, raw)


def problem(**raw: Any) -> str:
    with pytest.raises(ParamError) as info:
        coerce(**raw)
    return str(info.value)


# -- the forms a value arrives in --------------------------------------------------------------


def test_native_json_is_typed_and_defaulted() -> None:
    assert coerce(hosts=["web-1", "web-2"], target={"zone": "a"}) == {
        "hosts": ["web-1", "web-2"], "ports": [80], "target": {"zone": "a", "weight": 1.0, "note": None},
        "labels": None,
    }
    assert coerce(hosts=["h"], ports=["443", 8080.0])["ports"] == [443, 8080]  # items coerce like scalar params


@pytest.mark.parametrize("text", ['["web-1","web-2"]', " [\"web-1\", \"web-2\"] ", "web-1,web-2", "web-1, web-2"])
def test_text_as_json_or_comma_separated(text: str) -> None:
    assert coerce(hosts=text)["hosts"] == ["web-1", "web-2"]


def test_object_as_json_text_and_comma_form_for_integers() -> None:
    out = coerce(hosts="h", ports="80,443", target='{"zone": "b", "weight": "2.5"}', labels='{"team": {"x": [1]}}')
    assert out["ports"] == [80, 443]
    assert out["target"] == {"zone": "b", "weight": 2.5, "note": None}
    assert out["labels"] == {"team": {"x": [1]}}


def test_coercion_is_idempotent() -> None:
    """The worker re-types what the front door typed: a second pass changes nothing."""
    once = coerce(hosts="a,b", ports="443", target='{"zone": "a"}', labels={"k": "v"})
    assert coerce_params(PLAYBOOK, once) == once


# -- every rule names the param (path) and the rule ---------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"hosts": ["ok", "Not Ok"]}, "param 'hosts[1]': 'Not Ok' does not match ^[a-z0-9.-]+$"),
        ({"hosts": []}, "param 'hosts': 0 items, fewer than min_items (1)"),
        ({"hosts": ""}, "param 'hosts': 0 items, fewer than min_items (1)"),
        ({"hosts": list("abcdef")}, "param 'hosts': 6 items, more than 5 (max_items)"),
        ({"hosts": "web-1"}, None),
        ({"hosts": {"a": 1}}, "param 'hosts': expected an array, got {'a': 1}"),
        ({"hosts": "[web-1]"}, "param 'hosts': not valid JSON"),
        ({"hosts": ["h"], "ports": [22]}, "param 'ports[0]': 22 is not one of: 80, 443, 8080"),
        ({"hosts": ["h"], "ports": [True]}, "param 'ports[0]': expected an integer, got True"),
        ({"hosts": ["h"], "target": {}}, "param 'target': missing required property 'zone'"),
        ({"hosts": ["h"], "target": {"zone": "a", "wieght": 2}},
         "param 'target': unknown property 'wieght'; did you mean 'weight'? (declared: zone, weight, note; "
         "additional_properties is false)"),
        ({"hosts": ["h"], "target": "zone=a"}, "param 'target': expected an object as JSON like {\"key\":\"value\"}"),
        ({"hosts": ["h"], "target": ["a"]}, "param 'target': expected an object, got ['a']"),
        ({"hosts": ["h"], "target": {"zone": "c"}}, "param 'target.zone': 'c' is not one of: a, b"),
        ({"hosts": ["h"], "labels": {"x": float("nan")}}, "param 'labels.x': nan is not a JSON value"),
    ],
)
def test_rules_and_their_messages(raw: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert coerce(**raw)["hosts"] == ["web-1"]
        return
    with pytest.raises(ParamError) as info:
        coerce(**raw)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.param == next(iter(raw)) if len(raw) == 1 else info.value.param in raw


def test_bad_json_text_says_how_to_quote_it() -> None:
    text = problem(hosts='[a,b]')
    assert "hosts='[\"a\",\"b\"]'" in text and "or write a,b" in text


# -- hard caps, whatever the playbook says (hostile input) -----------------------------------------


ANY_ARRAY = Playbook.model_validate({
    "name": "p",
    "params": {
        "xs": {"type": "array", "items": {"type": "string"}},
        "free": {"type": "object", "additional_properties": True, "required": False},
        "deep": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}, "required": False},
    },
    "steps": [{"id": "a", "action": "core.log"}],
})


def cap_problem(**raw: Any) -> str:
    raw.setdefault("xs", [])
    with pytest.raises(ParamError) as info:
        coerce_params(ANY_ARRAY, raw)
    return str(info.value)


def test_array_length_is_capped_without_max_items() -> None:
    assert f"{PARAM_MAX_ITEMS + 1} items, more than {PARAM_MAX_ITEMS}" in cap_problem(xs=["a"] * (PARAM_MAX_ITEMS + 1))
    assert f"more than {PARAM_MAX_ITEMS}" in cap_problem(xs="a," * PARAM_MAX_ITEMS)
    assert len(coerce_params(ANY_ARRAY, {"xs": ["a"] * PARAM_MAX_ITEMS})["xs"]) == PARAM_MAX_ITEMS


def test_object_keys_are_capped() -> None:
    many = {f"k{i}": i for i in range(PARAM_MAX_KEYS + 1)}
    assert f"{PARAM_MAX_KEYS + 1} keys, more than the {PARAM_MAX_KEYS}" in cap_problem(free=many)


def test_deep_nesting_is_refused_before_parsing() -> None:
    deep = '{"a":' + "[" * 20_000 + "]" * 20_000 + "}"  # json.loads alone would raise RecursionError
    assert f"nested more than {PARAM_MAX_DEPTH}" in cap_problem(free=deep)
    huge = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    assert f"bytes, more than the {PARAM_MAX_BYTES}" in cap_problem(free=huge)


def test_deep_native_value_is_refused() -> None:
    value: Any = "x"
    for _ in range(PARAM_MAX_DEPTH + 1):
        value = [value]
    assert f"nested more than {PARAM_MAX_DEPTH}" in cap_problem(free={"a": value})


def test_total_size_and_node_count_are_capped() -> None:
    big = "x" * (PARAM_MAX_BYTES // 2)
    assert f"more than the {PARAM_MAX_BYTES}" in cap_problem(xs=[big, big, "x"])
    wide = {"a": [[1] * 50 for _ in range(PARAM_MAX_NODES // 50 + 1)][:PARAM_MAX_ITEMS]}
    assert f"more than {PARAM_MAX_NODES} values" in cap_problem(free=wide)


def test_long_values_are_not_echoed_in_messages() -> None:
    text = cap_problem(xs=[], deep=["y" * 100_000])
    assert len(text) < 400 and "100002 characters" in text


# -- declarations: located at load, file and line -------------------------------------------------


def test_bad_array_and_object_specs_name_file_and_line(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          hosts: {type: array, items: {type: string}, min_items: 3, max_items: 2}
          bare: {type: array}
          obj: {type: object, items: {type: string}}
          many: {type: array, items: {type: string}, max_items: 5000}
          scalar: {type: string, additional_properties: true}
          choice: {type: array, items: {type: string}, enum: [[a]]}
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    errors = all_errors(path, actions)
    by_line = {error.line: str(error) for error in errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8], "\n".join(map(str, errors))
    assert "params.hosts: min_items (3) is more than max_items (2)" in by_line[3]
    assert "params.bare: type: array needs items" in by_line[4]
    assert "params.obj: items is only for type: array (this param is type: object)" in by_line[5]
    assert "params.many.max_items: " in by_line[6] and "1000" in by_line[6]
    assert "params.scalar: additional_properties is only for type: object" in by_line[7]
    assert "params.choice: enum is only for string, integer, number and boolean params" in by_line[8]


def test_a_default_that_violates_its_own_spec(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          hosts:
            type: array
            items: {type: integer, pattern: "^1"}
          names:
            type: array
            items: {type: string, pattern: "^[a-z]+$"}
            default: [ok, NOT-OK]
          target:
            type: object
            properties:
              port: {type: integer, default: eighty}
            default: {port: 1, extra: 2}
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    errors = all_errors(path, actions)
    assert len(errors) == 4, "\n".join(map(str, errors))
    assert_located(errors[0], path, 5, None, "params.hosts.items.pattern: only string params can have a pattern")
    assert_located(errors[1], path, 9, None, "params.names.default: param 'names[1]': 'NOT-OK' does not match ^[a-z]+$")
    assert_located(errors[2], path, 13, None,
                   "params.target.properties.port.default: param 'target.port': expected an integer, got 'eighty'")
    assert_located(errors[3], path, 14, None, "params.target.default: param 'target': unknown property 'extra'")


def test_item_defaults_and_deep_declarations_are_refused(write: Write, actions: dict[str, ActionSpec]) -> None:
    nested = "{type: string}"
    for _ in range(PARAM_MAX_DEPTH + 1):
        nested = f"{{type: array, items: {nested}}}"
    path = write(
        f"""
        name: p
        params:
          deep: {nested}
          odd: {{type: array, items: {{type: string, default: x}}}}
        steps:
          - {{id: a, action: core.log, with: {{message: hi}}}}
        """
    )
    deep, odd = all_errors(path, actions)
    assert_located(deep, path, 3, None, f"params.deep: arrays and objects are nested more than {PARAM_MAX_DEPTH} deep")
    assert_located(odd, path, 4, None, "params.odd: items: default and required have no meaning for an item")


def test_a_good_v11_declaration_loads(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          hosts: {type: array, items: {type: string, pattern: "^[a-z0-9.-]+$"}, min_items: 1, default: [a]}
          target: {type: object, properties: {zone: {type: string}}, additional_properties: true}
        triggers:
          alertmanager:
            - matchers: ['alertname="X"']
              params: {hosts: "{{ alert.labels.hosts }}", target: {zone: a}}
        steps:
          - {id: a, action: core.log, with: {message: "{{ params.hosts | join(',') }} {{ params.target.zone }}"}}
        """
    )
    loaded = load_file(path, actions=actions)
    assert loaded.playbook.params["hosts"].items is not None


def test_a_literal_trigger_value_is_checked_at_load(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          hosts: {type: array, items: {type: string, pattern: "^[a-z]+$"}}
        triggers:
          alertmanager:
            - matchers: ['alertname="X"']
              params: {hosts: [ok, BAD]}
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    assert_located(only_error(path, actions), path, 7, None,
                   "triggers.alertmanager[0].params.hosts: param 'hosts[1]': 'BAD' does not match")


def test_a_snapshot_round_trips() -> None:
    """The workflow receives the playbook as JSON: what the front door dumps, the worker reads back."""
    again = Playbook.model_validate(PLAYBOOK.model_dump(mode="json", by_alias=True))
    assert again == PLAYBOOK and again.content_hash() == PLAYBOOK.content_hash()


def test_an_array_of_strings_reaching_argv_is_guarded_by_its_items() -> None:
    """A foreach item or `params.hosts[0]` lands in argv as text: the items' pattern must refuse '-'."""
    from tests.playbook.test_reach import errors, load

    text = """
    name: p
    params:
      hosts: {{type: array, items: {items}}}
    steps:
      - id: a
        action: shell.run
        with: {{argv: ["{{{{ params.hosts[0] }}}}", x]}}
    """
    [error] = errors(text.format(items="{type: string}"))
    assert "param 'hosts' can start this argv item and has no pattern or enum" in error
    assert load(text.format(items='{type: string, pattern: "^[a-z][a-z0-9-]*$"}')).warnings == ()
