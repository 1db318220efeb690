"""Rehearsal files are hostile input: every mistake is refused before anything runs, naming the
file and line; the playbook loader leaves them alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.playbook.loader import load_directory
from bot.rehearse.cases import RehearsalFileError, generic, load_rehearsal, parse_address
from tests.rehearse.support import ROLL, directory


def load(tmp_path: Path, text: str) -> object:
    path = directory(tmp_path, text)
    return load_rehearsal(path / "tiny.test.yaml", load_directory(path))


def refused(tmp_path: Path, text: str) -> RehearsalFileError:
    with pytest.raises(RehearsalFileError) as info:
        load(tmp_path, text)
    return info.value


GOOD = """\
playbook: tiny
cases:
  - name: ok
    params: {service: a}
    mocks: {drain: {output: {x: 1}}, "undo:drain": {fail: "no"}, "fallback:restart": {output: {}}}
    expect: {state: completed, steps: {drain: succeeded, "undo:drain": succeeded}, order: [drain]}
"""


def test_the_loader_skips_rehearsal_files(tmp_path):
    catalog = load_directory(directory(tmp_path, GOOD))
    assert catalog.names() == ["tiny"]


def test_a_good_file_loads_with_the_line_of_each_case(tmp_path):
    loaded = load(tmp_path, GOOD)
    assert [c.line for c in loaded.cases] == [3]  # type: ignore[attr-defined]
    assert loaded.playbook.name == "tiny"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD.replace("    params:", "    parms:"), 4, ["unknown key 'parms'", "did you mean 'params'"]),
        (GOOD.replace("drain: {output", "drian: {output"), 5, ["no step 'drian'", "did you mean 'drain'"]),
        (GOOD.replace("steps: {drain: succeeded", "steps: {dran: succeeded"), 6, ["no step 'dran'"]),
        (GOOD.replace("order: [drain]", "order: [drain, reboot]"), 6, ["expect.order[1]", "no step 'reboot'"]),
        (GOOD.replace('"undo:drain": {fail', '"undo:restart": {fail'), 5, ["has no compensate:"]),
        (GOOD.replace('"fallback:restart"', '"fallback:drain"'), 5, ["has no fallback:"]),
        (GOOD.replace("drain: {output", "note: {output"), 5, ["core.* actions are never mocked"]),
        (GOOD.replace("drain: {output", "'drain[2]': {output"), 5, ["not in a foreach"]),
        (GOOD.replace("drain: {output", "drain/child: {output"), 5, ["not a playbook.run step"]),
        (GOOD.replace("drain: {output", "'drain; rm': {output"), 5, ["is not a step address"]),
        (GOOD.replace("playbook: tiny", "playbook: tinny"), 1, ["unknown playbook 'tinny'"]),
        (GOOD.replace("{x: 1}}", "{x: 1}, attempts: 0}"), 5, ["greater than or equal to 1"]),
        (GOOD + "    expect: {}\n", 7, ["duplicate key 'expect'", "also at line 6"]),
        (GOOD.replace("params: {service: a}", "params: {service: [a"), 5, ["invalid YAML", "line 4"]),
        (GOOD.replace("expect: {state: completed,", "expect: {error: x, no_error: true, state: completed,"), 6,
         ["not both"]),
        (GOOD.replace("state: completed,", "state: completed, params: {servic: a},"), 6, ["no param 'servic'"]),
        (GOOD + GOOD.split("cases:\n")[1], 7, ["'ok' names two cases"]),
        ("- just\n- a list\n", 1, ["one mapping"]),
    ],
)
def test_a_bad_file_names_file_line_and_the_mistake(tmp_path, text, line, words):
    error = refused(tmp_path, text)
    shown = str(error)
    assert shown.startswith(f"{tmp_path / 'tiny.test.yaml'}:{line}: "), shown
    for word in words:
        assert word in shown, shown


def test_lists_are_bounded(tmp_path):
    votes = ", ".join(f'{{by: "slack:U{i:04d}"}}' for i in range(21))
    error = refused(tmp_path, GOOD.replace("    expect:", f"    votes: {{restart: [{votes}]}}\n    expect:"))
    assert "at most 20 votes" in str(error)
    many = "playbook: tiny\ncases:\n" + "".join(f"  - {{name: c{i}, expect: {{}}}}\n" for i in range(201))
    assert "at most 200 items" in str(refused(tmp_path, many))


def test_a_huge_file_is_refused_unread(tmp_path):
    error = refused(tmp_path, "# " + "x" * 1_000_001 + "\n" + GOOD)
    assert "at most 1000000" in str(error)


def test_addresses():
    addr = parse_address("undo:roll[3].drain")
    assert (addr.kind, addr.path, addr.call, addr.target) == ("undo", "roll[3].drain", None, "roll[3].drain")
    child = parse_address("fallback:call/roll[1].x")
    assert (child.kind, child.call, child.path, child.target) == ("fallback", "call", "roll[1].x", "call/roll[1].x")
    assert generic("undo:call/roll[1].x") == "undo:call/x" and generic("roll[2]") == "roll[2]"
    for bad in ("undo:", "a/b/c", "roll[1]x", "roll[12345]", "undo:undo:x", "roll[1].a.b"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Nine levels of nine aliases spell 387 million values; validating them would hang the runner."""
    lines = ["playbook: tiny", "bomb: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"b{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines += ["cases:", "  - name: boom", "    params: {service: *l9}", "    expect: {}"]
    error = refused(tmp_path, "\n".join(lines) + "\n")
    assert "expands to more than" in str(error) and ":1: " in str(error)


ROLL_OK = """\
playbook: roll
cases:
  - name: ok
    params: {hosts: [a, b]}
    mocks: {drain: {output: {}}, "check[1]": {fail: "x"}, "call/drain": {output: {}}}
    confirm: {pick: {choice: go, by: "slack:U0BOB"}}
    expect: {steps: {roll: succeeded, "roll[1]": failed, "drain[0]": succeeded}, order: ["roll[0].drain"]}
"""


def load_roll(tmp_path: Path, text: str) -> Any:
    path = directory(tmp_path, text, name="roll.test.yaml", extra={"roll.yaml": ROLL})
    return load_rehearsal(path / "roll.test.yaml", load_directory(path))


def test_item_and_child_addresses_load_as_the_engine_names_them(tmp_path):
    [loaded] = load_roll(tmp_path, ROLL_OK).cases
    case = loaded.case
    assert list(case.mocks) == ["drain", "roll[1].check", "call/drain"]  # `drain`: every item's
    assert list(case.expect.steps) == ["roll", "roll[1]", "roll[0].drain"]
    assert case.confirm["pick"].answer == "go"


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('steps: {roll: succeeded', 'steps: {drain: succeeded', ["runs once per item of foreach 'roll'", "roll[0].drain"]),
        ('mocks: {drain:', 'mocks: {roll:', ["is a foreach group: name one of its steps"]),
        ('order: ["roll[0].drain"]', 'order: ["roll[0]"]', ["is a foreach item: name one of its steps"]),
        ('"call/drain": {output: {}}', 'call: {output: {}}', ["runs a child run (playbook.run): mock its steps, as call/"]),
        ('"call/drain"', '"call/drian"', ["no step 'drian' in playbook 'tiny'", "did you mean 'drain'"]),
        ('"call/drain"', '"drain/x"', ["'drain' is not a playbook.run step"]),
        ('"check[1]"', '"roll[1].chek"', ["foreach 'roll' has no step 'chek'", "did you mean 'check'"]),
        ('"check[1]"', '"pick[1]"', ["[i] addresses a foreach item, and 'pick' is not in a foreach"]),
        ('{drain: {output: {}},', '{"drain[0]": {output: {}}, "roll[0].drain": {output: {}},', ["names the same step as another"]),
        ("confirm: {pick:", "confirm: {drain:", ["confirm: answers core.confirm steps"]),
        ("choice: go,", "choice: go, value: go,", ["choice: (one of the step's choices) or value:"]),
    ],
)
def test_item_and_child_address_mistakes(tmp_path, old, new, words):
    text = ROLL_OK.replace(old, new)
    assert text != ROLL_OK
    with pytest.raises(RehearsalFileError) as info:
        load_roll(tmp_path, text)
    for word in words:
        assert word in str(info.value), str(info.value)
