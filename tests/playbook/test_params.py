"""Params from the CLI, Slack and alerts: typed, checked and defaulted before a run starts."""

from __future__ import annotations

from typing import Any

import pytest

from bot.playbook.model import Playbook
from bot.playbook.params import ParamError, coerce_params, parse_assignments

PLAYBOOK = Playbook.model_validate(
    {
        "name": "p",
        "params": {
            "service": {"type": "string", "pattern": "^[a-z0-9-]+$"},
            "environment": {"type": "string", "enum": ["staging", "production"], "default": "production"},
            "replicas": {"type": "integer", "default": 1},
            "threshold": {"type": "number", "required": False},
            "dry_run": {"type": "boolean", "default": False},
        },
        "steps": [{"id": "a", "action": "core.log"}],
    }
)


def coerce(**raw: Any) -> dict[str, Any]:
    return coerce_params(PLAYBOOK, raw)


def problem(**raw: Any) -> ParamError:
    with pytest.raises(ParamError) as info:
        coerce(**raw)
    return info.value


def test_parse_assignments() -> None:
    assert parse_assignments(["service=api", "query=a=b", "empty="]) == {"service": "api", "query": "a=b", "empty": ""}
    assert parse_assignments([]) == {}


@pytest.mark.parametrize("item", ["service", "=api", ""])
def test_parse_assignments_needs_key_equals_value(item: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_assignments(["ok=1", item])
    assert str(info.value) == f"-p expects key=value, got {item!r}"
    assert info.value.param is None


def test_parse_assignments_refuses_a_repeated_key() -> None:
    with pytest.raises(ParamError, match="param 'a' is given twice") as info:
        parse_assignments(["a=1", "a=2"])
    assert info.value.param == "a"


def test_defaults_and_optional_params() -> None:
    assert coerce(service="api") == {
        "service": "api", "environment": "production", "replicas": 1, "threshold": None, "dry_run": False
    }


def test_missing_required_param() -> None:
    error = problem()
    assert str(error) == "missing required param 'service'"
    assert error.param == "service"


def test_unknown_param_lists_declared_ones() -> None:
    error = problem(service="api", replica="2")
    assert error.param == "replica"
    assert str(error) == (
        "unknown param 'replica'; did you mean 'replicas'? (declared: service, environment, replicas, threshold, dry_run)"
    )


def test_pattern() -> None:
    error = problem(service="Foo!")
    assert str(error) == "param 'service': 'Foo!' does not match ^[a-z0-9-]+$"
    assert error.param == "service"


def test_pattern_searches_like_json_schema() -> None:
    playbook = Playbook.model_validate(
        {"name": "p", "params": {"ref": {"pattern": "[0-9]"}}, "steps": [{"id": "a", "action": "core.log"}]}
    )
    assert coerce_params(playbook, {"ref": "abc1"}) == {"ref": "abc1"}  # unanchored pattern: search, not fullmatch


def test_enum() -> None:
    error = problem(service="api", environment="prod")
    assert str(error) == "param 'environment': 'prod' is not one of: staging, production"
    assert coerce(service="api", environment="staging")["environment"] == "staging"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("yes", True), ("1", True), ("false", False), ("NO", False), ("0", False),
     (" yes ", True), (True, True), (0, False)],
)
def test_boolean_coercion(text: Any, expected: bool) -> None:
    assert coerce(service="api", dry_run=text)["dry_run"] is expected


@pytest.mark.parametrize("bad", ["maybe", "2", "", 1.0])
def test_boolean_refuses_anything_else(bad: Any) -> None:
    error = problem(service="api", dry_run=bad)
    assert str(error) == f"param 'dry_run': expected a boolean (true/false, yes/no, 1/0), got {bad!r}"


@pytest.mark.parametrize(("text", "expected"), [("3", 3), (" -2 ", -2), ("+7", 7), (4, 4), (5.0, 5)])
def test_integer_coercion(text: Any, expected: int) -> None:
    value = coerce(service="api", replicas=text)["replicas"]
    assert value == expected and type(value) is int


@pytest.mark.parametrize("bad", ["three", "1.5", "1_000", "", True, 2.5])
def test_integer_refuses_anything_else(bad: Any) -> None:
    assert str(problem(service="api", replicas=bad)) == f"param 'replicas': expected an integer, got {bad!r}"


@pytest.mark.parametrize(("text", "expected"), [("0.5", 0.5), ("2", 2.0), (3, 3.0), ("1e3", 1000.0)])
def test_number_coercion(text: Any, expected: float) -> None:
    assert coerce(service="api", threshold=text)["threshold"] == expected


@pytest.mark.parametrize("bad", ["half", "nan", "inf", False])
def test_number_refuses_anything_else(bad: Any) -> None:
    assert "param 'threshold': expected a number" in str(problem(service="api", threshold=bad))


def test_strings_accept_numbers_from_templates_but_not_structures() -> None:
    assert coerce(service=123)["service"] == "123"
    assert "expected a string" in str(problem(service=["a"]))


def test_none_counts_as_not_given() -> None:
    assert coerce(service="api", environment=None)["environment"] == "production"


def test_every_problem_in_one_message() -> None:
    error = problem(service="Foo!", replicas="x", colour="red")
    assert error.param == "colour"
    assert [param for param, _ in error.problems] == ["colour", "service", "replicas"]
    assert str(error) == "; ".join(message for _, message in error.problems)
    assert "\n" not in str(error)  # one line for the CLI


NOTES = Playbook.model_validate({
    "name": "notes",
    "params": {name: {"type": "string", "required": False} for name in ("a", "b", "c", "d", "e")},
    "steps": [{"id": "a", "action": "core.log"}],
})


def test_a_string_param_holds_at_most_64_kib_and_all_of_a_runs_params_256():
    """Red team (stop 53): a string param had no bound. An alert's 700 KB annotation copied into a
    param rode in the run's input, its run_started event and its policy question beside the alert
    itself: the question passed Temporal's 2 MB and the run never started a step."""
    with pytest.raises(ParamError, match=r"param 'a': 70000 bytes, more than the 65536 a param may hold"):
        coerce_params(NOTES, {"a": "x" * 70_000})
    with pytest.raises(ParamError, match=r"param 'a': 68000 bytes"):
        coerce_params(NOTES, {"a": "é" * 34_000})  # bytes, not characters
    with pytest.raises(ParamError, match=r"the params are 300\d+ bytes of JSON together, more than the 262144"):
        coerce_params(NOTES, {name: "x" * 60_000 for name in "abcde"})
    assert len(coerce_params(NOTES, {"a": "x" * 65_536, "b": "y" * 65_536})["b"]) == 65_536
