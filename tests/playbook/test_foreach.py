"""Load-time checks of foreach groups (format v1.1): each mistake names its file, line and step."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from bot.actions.base import ActionSpec
from bot.playbook.checks import registered_actions
from bot.playbook.loader import load_file
from bot.playbook.model import ForeachGroup

from .test_loader import all_errors, assert_located, only_error

Write = Callable[..., Path]


@pytest.fixture
def shipped(actions: dict[str, ActionSpec]) -> dict[str, ActionSpec]:
    return {**actions, **registered_actions()}


GOOD = """
name: roll
vars: {hosts: [web-1, web-2]}
steps:
  - {id: pre, action: core.log, with: {message: pre}, compensate: {action: core.log, with: {message: undo}}}
  - id: roll
    foreach: "{{ vars.hosts }}"
    as: host
    concurrency: 2
    max_failures: all
    steps:
      - id: drain
        action: core.log
        with: {message: "drain {{ host }} ({{ index }}) after {{ steps.pre.output.message }}"}
        compensate: {action: core.log, with: {message: "enable {{ host }} {{ steps.drain.output.message }}"}}
      - id: check
        action: core.log
        with: {message: "{{ steps.drain.output.message }}"}
        settles: drain
  - id: after
    action: core.log
    with: {message: "{{ steps.roll.output | length }} {{ steps.roll.output[0].check.message }}"}
    settles: "roll[1].drain"
"""


def test_a_foreach_playbook_loads(write: Write, shipped: dict[str, ActionSpec]) -> None:
    loaded = load_file(write(GOOD), actions=shipped)
    group = loaded.playbook.steps[1]
    assert isinstance(group, ForeachGroup)
    assert (group.as_, group.concurrency, group.max_failures, [s.id for s in group.steps]) == (
        "host", 2, "all", ["drain", "check"])
    assert loaded.warnings == ()


def test_foreach_over_a_literal_that_is_not_a_list(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(GOOD.replace('foreach: "{{ vars.hosts }}"', "foreach: web-1"))
    assert_located(only_error(path, shipped), path, 6, "roll", "foreach: 'web-1' is not a list")


def test_foreach_over_a_single_valued_param(write: Write, shipped: dict[str, ActionSpec]) -> None:
    text = GOOD.replace("vars: {hosts: [web-1, web-2]}", "params: {hosts: {type: string}}").replace(
        "vars.hosts", "params.hosts")
    path = write(text)
    assert_located(only_error(path, shipped), path, 6, "roll", "params.hosts is a string, not a list")


def test_foreach_template_with_text_around_it_makes_a_string(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(GOOD.replace('"{{ vars.hosts }}"', '"hosts: {{ vars.hosts }}"'))
    assert_located(only_error(path, shipped), path, 6, "roll", "must be one {{ expression }}")


@pytest.mark.parametrize("name", ["params", "index", "steps", "secret", "range"])
def test_as_may_not_shadow_what_templates_read(write: Write, shipped: dict[str, ActionSpec], name: str) -> None:
    path = write(GOOD.replace("as: host", f"as: {name}").replace("{{ host }}", f"{{{{ {name} }}}}"))
    errors = [e for e in all_errors(path, shipped) if "as:" in e.message]
    assert errors, "as: naming a reserved name is refused"
    assert_located(errors[0], path, 7, "roll", f"as: {name!r} would hide")


def test_as_may_not_repeat_a_params_name(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(GOOD.replace("vars: {hosts: [web-1, web-2]}", "params: {host: {type: string, default: x}}\n"
                              "vars: {hosts: [web-1, web-2]}"))
    assert_located(only_error(path, shipped), path, 8, "roll", "as: 'host' is also a param's name")


def test_inner_ids_may_not_clash_with_outer_ids(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(GOOD.replace("- id: drain\n", "- id: pre\n").replace("steps.drain", "steps.pre").replace(
        "settles: drain", "settles: pre").replace("roll[1].drain", "roll[1].pre"))
    errors = all_errors(path, shipped)
    assert any(e.line == 11 and "duplicate step id 'pre'" in e.message for e in errors), [str(e) for e in errors]


def test_an_item_reads_no_later_step_of_its_own_nor_its_group(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(GOOD.replace('"drain {{ host }}', '"{{ steps.check.output }} {{ steps.roll.output }} {{ host }}'))
    errors = all_errors(path, shipped)
    texts = [str(e) for e in errors]
    assert all(e.line == 13 and e.step == "drain" for e in errors), texts
    assert any("steps.check: step 'check' runs later in the item" in t for t in texts), texts
    assert any("steps.roll: that is the foreach group this step runs in" in t for t in texts), texts


def test_outside_the_group_inner_steps_are_read_through_the_group(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(GOOD.replace("{{ steps.roll.output | length }}", "{{ steps.drain.output }}"))
    assert_located(only_error(path, shipped), path, 21, "after",
                   "'drain' runs once per item of foreach 'roll': read steps.roll.output")


def test_item_names_are_only_known_inside_an_item(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(GOOD.replace("{{ steps.roll.output | length }}", "{{ host }}"))
    assert_located(only_error(path, shipped), path, 21, "after", "unknown template variable 'host'")


@pytest.mark.parametrize(("settles", "fragment"), [
    ("drain", "runs once per item of foreach 'roll': settle the whole group"),
    ("roll[1].nope", "foreach 'roll' has no step 'nope'"),
    ("rol[1].drain", "'rol' is not a foreach group"),
])
def test_settles_from_after_the_group(write: Write, shipped: dict[str, ActionSpec], settles: str, fragment: str) -> None:
    path = write(GOOD.replace('settles: "roll[1].drain"', f'settles: "{settles}"'))
    assert_located(only_error(path, shipped), path, 22, "after", fragment)


def test_settles_inside_an_item_names_an_earlier_step_of_it(write: Write, shipped: dict[str, ActionSpec]) -> None:
    text = GOOD.replace("        settles: drain\n", "").replace(
        "        compensate: {action: core.log, with: {message: \"enable", "        settles: check\n"
        "        compensate: {action: core.log, with: {message: \"enable")
    path = write(text)
    assert_located(only_error(path, shipped), path, 14, "drain", "settles: 'check' runs later in the item")


@pytest.mark.parametrize(("line", "replacement", "fragment"), [
    ("concurrency: 2", "concurrency: 0", "concurrency: Input should be greater than or equal to 1"),
    ("max_failures: all", "max_failures: -1", "max_failures must be 0 or more"),
    ("max_failures: all", "max_failures: some", "max_failures"),
])
def test_bad_numbers(write: Write, shipped: dict[str, ActionSpec], line: str, replacement: str, fragment: str) -> None:
    path = write(GOOD.replace(line, replacement))
    errors = all_errors(path, shipped)
    assert errors and all(e.step == "roll" for e in errors), [str(e) for e in errors]
    assert any(fragment in str(e) for e in errors), [str(e) for e in errors]


def test_nested_foreach_is_not_supported(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(GOOD.replace("      - id: check\n", "      - id: inner\n        foreach: [1]\n"
                              "        steps: [{id: x, action: core.log, with: {message: x}}]\n      - id: check\n"))
    errors = all_errors(path, shipped)
    assert any(e.step == "inner" and "unknown key 'foreach'" in e.message for e in errors), [str(e) for e in errors]
