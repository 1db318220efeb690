"""Load-time checks of sub-playbooks (`playbook.run`): unknown children and cycles across files,
and what a call step may not say; each mistake names its file, line and step."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from bot.actions.base import ActionSpec
from bot.playbook.checks import registered_actions
from bot.playbook.loader import PlaybookLoadErrors, load_directory

from .test_loader import all_errors, assert_located, only_error

Write = Callable[..., Path]


@pytest.fixture
def shipped(actions: dict[str, ActionSpec]) -> dict[str, ActionSpec]:
    return {**actions, **registered_actions()}


def calling(name: str, *children: str) -> str:
    steps = "".join(
        f"  - id: call-{child}\n    action: playbook.run\n    with: {{name: {child}}}\n" for child in children
    )
    return f"name: {name}\nsteps:\n  - {{id: first, action: core.log, with: {{message: hi}}}}\n{steps}"


def errors_of(path: Path, actions: dict[str, ActionSpec]) -> tuple[list[str], PlaybookLoadErrors]:
    with pytest.raises(PlaybookLoadErrors) as info:
        load_directory(path, actions=actions)
    return [str(e) for e in info.value.errors], info.value


def test_a_parent_and_its_child_load(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(calling("parent", "child"), "parent.yaml")
    write("name: child\nparams: {target: {type: string}}\nsteps:\n  - {id: c, action: core.log, with: {message: x}}\n",
          "child.yaml")
    catalog = load_directory(path.parent, actions=shipped)
    assert catalog.names() == ["child", "parent"]


def test_an_unknown_child_is_an_error_at_its_name(write: Write, shipped: dict[str, ActionSpec]) -> None:
    path = write(calling("parent", "chlid"), "parent.yaml")
    write(calling("child"), "child.yaml")
    messages, exc = errors_of(path.parent, shipped)
    assert len(exc.errors) == 1, messages
    assert_located(exc.errors[0], path, 6, "call-chlid", "with.name: unknown playbook 'chlid'", "did you mean 'child'?")
    assert exc.catalog.names() == ["child"], "a playbook calling an unknown child is not served"


@pytest.mark.parametrize(
    ("files", "chain"),
    [
        ({"a": ["a"]}, "a → a"),
        ({"a": ["b"], "b": ["a"]}, "a → b → a"),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, "a → b → c → a"),
    ],
    ids=["itself", "two", "three-hops"],
)
def test_a_cycle_is_an_error_in_each_of_its_files(
    write: Write, shipped: dict[str, ActionSpec], files: dict[str, list[str]], chain: str
) -> None:
    paths = {name: write(calling(name, *children), f"{name}.yaml") for name, children in files.items()}
    write(calling("outside", "a"), "outside.yaml")
    write(calling("fine"), "fine.yaml")
    messages, exc = errors_of(next(iter(paths.values())).parent, shipped)
    for name, path in paths.items():
        error = next(e for e in exc.errors if e.path == path)
        assert_located(error, path, 6, f"call-{files[name][0]}", f"with.name: {chain} is a cycle of sub-playbooks")
    outside = next(e for e in exc.errors if e.path and e.path.name == "outside.yaml")
    assert "'a' cannot run" in str(outside)
    assert exc.catalog.names() == ["fine"], messages


def test_validating_one_file_finds_its_children_beside_it(write: Write, shipped: dict[str, ActionSpec]) -> None:
    parent = write(calling("parent", "child"), "parent.yaml")
    write(calling("child"), "child.yaml")
    assert load_directory(parent, actions=shipped).names() == ["parent"]
    lonely = write(calling("lonely", "nobody"), "lonely.yaml")
    messages, _ = errors_of(lonely, shipped)
    assert len(messages) == 1 and "unknown playbook 'nobody'" in messages[0], messages
    looped = write(calling("looped", "looped"), "looped.yaml")
    messages, _ = errors_of(looped, shipped)
    assert len(messages) == 1 and "looped → looped is a cycle" in messages[0], messages


@pytest.mark.parametrize(
    ("extra", "line", "says"),
    [
        ('    with: {name: "{{ params.which }}"}\n', 7, "with.name: must be a literal playbook name"),
        ("    with: {name: child}\n    compensate: {action: core.log, with: {message: x}}\n", 8,
         "compensate: a playbook.run step is undone by its child run's own compensations"),
        ("    with: {name: child}\n    retry: {max_attempts: 5}\n", 8, "retry: a playbook.run step is never retried"),
        ("    with: {name: child}\n    timeout: 1h\n", 8, "say with.timeout"),
        ('    with: {name: child, params: {token: "{{ secret(\'TOKEN\') }}"}}\n', 7,
         "secret() cannot be passed to a child run"),
    ],
    ids=["templated-name", "compensate", "retry", "timeout", "secret"],
)
def test_what_a_call_step_may_not_say(write: Write, shipped: dict[str, ActionSpec], extra: str, line: int,
                                      says: str) -> None:
    path = write(
        "name: parent\nsecrets: [TOKEN]\nparams: {which: {type: string}}\nsteps:\n  - id: call\n"
        "    action: playbook.run\n" + extra, "parent.yaml",
    )
    errors = all_errors(path, shipped)
    error = next(e for e in errors if says in str(e))
    assert_located(error, path, line, "call", says)


@pytest.mark.parametrize("where", ["fallback", "compensate"])
def test_playbook_run_is_no_fallback_or_undo(write: Write, shipped: dict[str, ActionSpec], where: str) -> None:
    path = write(
        f"name: parent\nsteps:\n  - id: s\n    action: core.log\n    with: {{message: x}}\n"
        f"    {where}: {{action: playbook.run, with: {{name: child}}}}\n", "parent.yaml",
    )
    error = only_error(path, shipped)
    assert_located(error, path, 6, "s", f"{where}.action: playbook.run cannot")


def test_a_call_inside_a_foreach_is_checked_like_any_other(write: Write, shipped: dict[str, ActionSpec]) -> None:
    """The call graph walks foreach item steps too: a directory holding a foreach loads (it used to
    crash every load, `dev` included), and a call made per item names its unknown child at its line."""
    text = (
        "name: roll\nsteps:\n  - id: each\n    foreach: [a, b]\n    steps:\n"
        "      - {id: note, action: core.log, with: {message: x}}\n"
        "      - id: call\n        action: playbook.run\n        with: {name: chlid}\n"
    )
    path = write(text, "roll.yaml")
    write("name: child\nsteps:\n  - {id: c, action: core.log, with: {message: x}}\n", "child.yaml")
    messages, exc = errors_of(path.parent, shipped)
    assert len(exc.errors) == 1, messages
    assert_located(exc.errors[0], path, 9, "call", "with.name: unknown playbook 'chlid'", "did you mean 'child'?")
    assert exc.catalog.names() == ["child"]
    path.write_text(text.replace("chlid", "child"))
    assert load_directory(path.parent, actions=shipped).names() == ["child", "roll"]
