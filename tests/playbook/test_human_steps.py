"""Load-time checks of the v1.1 human steps (core.approve, core.confirm): file, line and step."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from bot.actions.base import ActionSpec
from bot.playbook.checks import registered_actions
from bot.playbook.loader import load_directory, load_file
from bot.playbook.model import Step

from .test_loader import all_errors, assert_located, only_error

Write = Callable[..., Path]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shipped(actions: dict[str, ActionSpec]) -> dict[str, ActionSpec]:
    return {**actions, **registered_actions()}


HEAD = """
name: p
steps:
  - id: pick
    action: core.confirm
    with: {message: "Which?", choices: [restart, scale]}
"""


def test_human_steps_load_with_a_fifteen_minute_deadline_unless_they_say(write: Write,
                                                                       shipped: dict[str, ActionSpec]) -> None:
    path = write(HEAD + """
  - {id: ok, action: core.approve, with: {message: "Go?", approvers: [sre-leads]}, timeout: 1h}
  - {id: go, action: core.log, with: {message: go}, when: "{{ steps.pick.output.choice != 'scale' }}"}
  - {id: both, action: core.log, with: {message: b}, when: "{{ steps.pick.output['choice'] in ['restart', 'scale'] }}"}
""")
    pb = load_file(path, actions=shipped).playbook
    pick, ok = pb.steps[0], pb.steps[1]
    assert isinstance(pick, Step) and pick.timeout.total_seconds() == 15 * 60
    assert isinstance(ok, Step) and ok.timeout.total_seconds() == 3600


@pytest.mark.parametrize("when", [
    "{{ steps.pick.output.choice == 'scael' }}",
    "{{ 'scael' == steps.pick.output.choice }}",
    "{{ steps['pick'].output.choice in ['restart', 'scael'] }}",
])
def test_an_unknown_choice_compared_in_a_later_when_names_file_and_line(
    write: Write, shipped: dict[str, ActionSpec], when: str
) -> None:
    path = write(HEAD + f"""
  - id: scale
    action: core.log
    with: {{message: go}}
    when: "{when}"
""")
    assert_located(only_error(path, shipped), path, 10, "scale",
                   "when: compares steps.pick.output.choice with 'scael', which is not one of its choices; "
                   "did you mean 'scale'? (choices: restart, scale)")


def test_a_choice_comparison_against_templated_choices_is_left_to_run_time(write: Write,
                                                                          shipped: dict[str, ActionSpec]) -> None:
    path = write("""
name: p
params: {options: {type: string, default: "a"}}
steps:
  - {id: pick, action: core.confirm, with: {message: "?", choices: "{{ [params.options, 'b'] }}"}}
  - {id: go, action: core.log, with: {message: go}, when: "{{ steps.pick.output.choice == 'zzz' }}"}
""")
    load_file(path, actions=shipped)


def test_human_steps_have_nothing_to_undo_fall_back_to_or_settle(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write("""
name: p
steps:
  - {id: a, action: core.log, with: {message: a}, compensate: {action: core.log, with: {message: u}}}
  - id: ok
    action: core.approve
    with: {message: "Go?"}
    compensate: {action: core.log, with: {message: u}}
    fallback: {action: core.log, with: {message: f}}
    settles: a
  - {id: pick, action: core.confirm, impact: high, with: {message: "?", choices: [x]}}
on_failure:
  - {id: ask, action: core.approve, with: {message: "?"}}
""")
    errors = all_errors(path, shipped)
    assert [(e.line, e.step) for e in errors] == [(7, "ok"), (8, "ok"), (9, "ok"), (10, "pick"), (12, "ask")]
    text = "\n".join(str(e) for e in errors)
    assert "compensate: not allowed on a core.approve step: it changes nothing" in text
    assert "fallback: not allowed on a core.approve step: a rejection or timeout is not a failure" in text
    assert "settles: not allowed on a core.approve step" in text
    assert "impact: a core.confirm step cannot also wait for approval" in text
    assert "action: core.approve cannot run in on_failure" in text


@pytest.mark.parametrize(("with_", "fragment"), [
    ('{message: "?"}', "takes exactly one of choices: [..] (pick one) or input:"),
    ('{message: "?", choices: [a], input: {type: string}}', "takes exactly one of choices"),
    ('{message: "?", choices: [a, a]}', "choice 'a' is listed twice"),
    ('{message: "?", input: {type: string, pattern: "("}}', "is not a valid regular expression"),
    ('{message: "?", choices: []}', "choices"),
])
def test_confirm_arguments_are_checked_at_load(write: Write, shipped: dict[str, ActionSpec], with_: str,
                                               fragment: str) -> None:
    path = write(f"""
name: p
steps:
  - id: pick
    action: core.confirm
    with: {with_}
""")
    error = only_error(path, shipped)
    assert error.step == "pick" and fragment in str(error), str(error)


def test_the_shipped_pick_mitigation_playbook_validates() -> None:
    catalog = load_directory(ROOT / "playbooks")
    loaded = catalog.get("pick-mitigation")
    assert loaded.warnings == ()
    pick = next(s for s in loaded.playbook.leaf_steps() if s.id == "pick")
    assert pick.action == "core.confirm" and pick.with_["choices"] == ["restart", "scale"]
