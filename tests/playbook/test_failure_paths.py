"""Load-time checks of the v1.1 failure paths: each mistake names its file, line and step."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from bot.actions.base import ActionSpec
from bot.playbook.checks import registered_actions
from bot.playbook.loader import load_directory, load_file
from bot.playbook.model import Playbook, Step

from .test_loader import all_errors, assert_located, only_error

Write = Callable[..., Path]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shipped(actions: dict[str, ActionSpec]) -> dict[str, ActionSpec]:
    return {**actions, **registered_actions()}


GOOD = """
name: fp
steps:
  - id: enter
    action: core.log
    with: {message: enter}
    compensate: {action: core.log, with: {message: exit}}
  - id: check
    action: core.log
    with: {message: check}
    on_failure: continue
    fallback: {action: core.log, with: {message: "fell back after {{ steps.enter.output.message }}"}}
  - id: leave
    action: core.log
    with: {message: "{{ steps.check.state }}"}
    settles: enter
    irreversible: true
  - {id: stop, action: core.fail, with: {reason: "done"}}
on_failure:
  - {id: page, action: core.log, with: {message: "{{ run.error }} at {{ run.failed_step }}: {{ steps.check.state }}"}}
"""


def test_a_v1_1_playbook_loads(write: Write, shipped: dict[str, ActionSpec]) -> None:
    loaded = load_file(write(GOOD), actions=shipped)
    pb = loaded.playbook
    assert [s.id for s in pb.on_failure] == ["page"]
    check = pb.steps[1]
    assert isinstance(check, Step) and check.on_failure == "continue" and check.fallback is not None
    assert loaded.warnings == ()


def test_v1_playbooks_dump_and_hash_as_before_v1_1() -> None:
    """Unused v1.1 fields are left out of dumps: the shipped v1 playbooks keep their hashes."""
    catalog = load_directory(ROOT / "playbooks")
    assert catalog.get("restart-service").hash == (
        "sha256:59fa36c01376f3b846a9055ec84b935f9790050e047ef61a133460771c807271"
    )
    assert catalog.get("demo-remediation").hash == (
        "sha256:ff74915eb677e5bfadff7f048aa6274a60edbc051a68dec862c2aef09b95023b"
    )
    dumped = Playbook.model_validate({"name": "p", "steps": [{"id": "a", "action": "core.log"}]}).model_dump(
        mode="json", by_alias=True
    )
    assert "on_failure" not in dumped and set(dumped["steps"][0]) == {
        "id", "name", "action", "with", "impact", "when", "retry", "timeout", "compensate",
    }


def test_used_v1_1_fields_change_the_hash() -> None:
    plain = Playbook.model_validate({"name": "p", "steps": [{"id": "a", "action": "core.log"}]})
    one_way = Playbook.model_validate({"name": "p", "steps": [{"id": "a", "action": "core.log", "irreversible": True}]})
    assert plain.content_hash() != one_way.content_hash()
    assert Playbook.model_validate(one_way.model_dump(mode="json", by_alias=True)) == one_way


@pytest.mark.parametrize(
    ("settles", "fragment"),
    [
        ("later", "runs later"),
        ("b", "is this step itself"),
        ("nope", "unknown step"),
    ],
)
def test_settles_must_name_an_earlier_step(write: Write, shipped: dict[str, ActionSpec], settles: str,
                                           fragment: str) -> None:
    path = write(
        f"""
        name: p
        steps:
          - {{id: a, action: core.log, with: {{message: a}}, compensate: {{action: core.log, with: {{message: u}}}}}}
          - id: b
            action: core.log
            with: {{message: b}}
            settles: {settles}
          - {{id: later, action: core.log, with: {{message: c}}}}
        """
    )
    assert_located(only_error(path, shipped), path, 7, "b", f"settles: {settles!r}", fragment)


def test_settles_a_parallel_sibling_is_an_error(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: g
            parallel:
              - {id: a, action: core.log, with: {message: a}, compensate: {action: core.log, with: {message: u}}}
              - {id: b, action: core.log, with: {message: b}, settles: a}
        """
    )
    assert_located(only_error(path, shipped), path, 6, "b", "settles: 'a' runs in parallel with this step")


def test_settles_a_step_without_undo_is_a_warning(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - {id: a, action: core.log, with: {message: a}}
          - {id: b, action: core.log, with: {message: b}, settles: a}
        """
    )
    (warning,) = load_file(path, actions=shipped).warnings
    assert warning.startswith(f"{path}:4: step 'b': ") and "nothing to settle" in warning


def test_irreversible_with_compensate_is_an_error(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: migrate
            action: core.log
            with: {message: m}
            irreversible: true
            compensate: {action: core.log, with: {message: u}}
        """
    )
    assert_located(only_error(path, shipped), path, 6, "migrate", "irreversible: true and compensate:")


def test_core_fail_needs_a_reason_and_takes_no_failure_path(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: stop
            action: core.fail
            with: {}
            on_failure: continue
            fallback: {action: core.log, with: {message: x}}
        """
    )
    errors = all_errors(path, shipped)
    assert [(e.line, e.step) for e in errors] == [(5, "stop"), (6, "stop"), (7, "stop")], [str(e) for e in errors]
    assert "missing required key 'reason' for core.fail" in str(errors[0])
    assert "remove on_failure" in str(errors[1]) and "remove fallback" in str(errors[2])


def test_fallback_is_checked_like_a_step(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: a
            action: core.log
            with: {message: a}
            fallback:
              action: core.log
              with: {mesage: "{{ steps.later.output }}"}
          - {id: later, action: core.log, with: {message: b}}
        """
    )
    errors = all_errors(path, shipped)
    text = "\n".join(str(e) for e in errors)
    assert all(e.step == "a" and e.line in (7, 8) for e in errors), text
    assert "fallback.with: unknown key 'mesage' for core.log; did you mean 'message'?" in text
    assert "missing required key 'message'" in text
    assert "template reads steps.later: step 'later' runs later" in text


def test_fallback_cannot_be_core_fail(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: a
            action: core.log
            with: {message: a}
            fallback: {action: core.fail, with: {reason: x}}
        """
    )
    assert_located(only_error(path, shipped), path, 6, "a", "fallback.action: core.fail")


def test_on_failure_step_mistakes_name_file_line_and_step(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - {id: a, action: core.log, with: {message: a}}
        on_failure:
          - id: page
            action: core.log
            with: {message: "{{ run.error }} {{ steps.nope.output }}"}
            compensate: {action: core.log, with: {message: u}}
          - {id: stop, action: core.fail, with: {reason: r}}
        """
    )
    errors = all_errors(path, shipped)
    located = [(e.line, e.step) for e in errors]
    text = "\n".join(str(e) for e in errors)
    assert (8, "page") in located and "on_failure[0].compensate: not allowed" in text
    assert (7, "page") in located and "unknown step 'nope'" in text
    assert (9, "stop") in located and "core.fail cannot run in on_failure" in text


def test_on_failure_step_ids_are_unique_with_the_steps(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - {id: a, action: core.log, with: {message: a}}
        on_failure:
          - {id: a, action: core.log, with: {message: dup}}
        """
    )
    assert_located(only_error(path, shipped), path, 5, "a", "duplicate step id 'a' (first used at line 3)")


def test_on_failure_unknown_key_is_located(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - {id: a, action: core.log, with: {message: a}}
        on_failure:
          - {id: page, action: core.log, with: {message: x}, fallbak: {action: core.log}}
        """
    )
    assert_located(only_error(path, shipped), path, 5, "page", "unknown key 'fallbak'", "did you mean 'fallback'")


def test_a_group_named_on_failure_collides_only_with_on_failure_steps(write: Write,
                                                                      shipped: dict[str, ActionSpec]) -> None:
    text = "name: p\nsteps:\n  - id: on_failure\n    parallel: [{id: a, action: core.log, with: {message: a}}]\n"
    load_file(write(text), actions=shipped)  # a v1 playbook keeps its meaning
    path = write(text + "on_failure: [{id: page, action: core.log, with: {message: x}}]\n")
    assert_located(only_error(path, shipped), path, 3, "on_failure", "cannot be called 'on_failure'")


def test_bad_on_failure_value_on_a_step(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - {id: a, action: core.log, with: {message: a}, on_failure: ignore}
        """
    )
    error = only_error(path, shipped)
    assert error.line == 3 and error.step == "a" and "on_failure" in str(error) and "'continue'" in str(error)


def test_the_json_schema_covers_the_failure_paths() -> None:
    from bot.playbook.schema import playbook_json_schema

    schema = playbook_json_schema(action_names=["core.fail", "core.log"])
    step = schema["$defs"]["Step"]["properties"]
    assert step["on_failure"]["enum"] == ["fail", "continue"] and step["on_failure"]["default"] == "fail"
    assert step["irreversible"]["type"] == "boolean"
    assert step["settles"]["anyOf"][0]["pattern"]
    fallback = schema["$defs"]["Fallback"]
    assert fallback["additionalProperties"] is False
    assert fallback["properties"]["action"]["enum"] == ["core.fail", "core.log"]
    assert set(fallback["properties"]) == {"action", "with", "impact", "retry", "timeout"}
    assert schema["properties"]["on_failure"]["items"] == {"$ref": "#/$defs/Step"}


def test_an_on_failure_step_that_says_continue_is_one_error_not_two() -> None:
    from bot.playbook.loader import PlaybookLoadErrors, load_text  # noqa: PLC0415

    text = ("name: x\nsteps:\n  - {id: a, action: core.log, with: {message: x}}\non_failure:\n"
            "  - {id: p, action: core.log, on_failure: continue, with: {message: x}}\n")
    try:
        load_text(text)
    except PlaybookLoadErrors as exc:
        assert [str(e).split(": ", 1)[1] for e in exc.errors] == [
            "step 'p': on_failure[0].on_failure: not allowed in on_failure steps: each of them goes on anyway"
        ], [str(e) for e in exc.errors]
    else:
        raise AssertionError("loaded")
