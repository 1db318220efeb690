"""A param's or a typed answer's `pattern:` is the author's, the value is the requester's (Slack
text, an API body, an alert label). Run by Python's backtracking `re`, an innocent-looking
pattern and a 40-character value held the front door's event loop for minutes (every other ack
waits behind it); RE2 (bot/playbook/patterns.py) answers in linear time. Each attack runs in a
child with a generous limit, so a backtracking engine fails the test instead of hanging it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bot.playbook.loader import PlaybookLoadErrors, load_text

ATTACK = r"""
from bot.playbook.loader import load_text
from bot.playbook.params import ParamError, coerce_params

hostile = "a" * 40 + "!"
playbook = load_text('''
name: words
params:
  note: {type: string, pattern: '^(\w+\s?)*$'}
steps:
  - {id: say, action: core.log, with: {message: "{{ params.note }}"}}
''').playbook
for value in (hostile, "two words"):
    try:
        coerce_params(playbook, {"note": value})
        print("accepted")
    except ParamError:
        print("refused")
"""


def test_a_hostile_param_value_cannot_stall_its_pattern_check() -> None:
    try:
        done = subprocess.run([sys.executable, "-c", ATTACK], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the pattern check did not finish within 20 s: the regex engine backtracks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "accepted"]


def test_a_pattern_re2_cannot_run_in_linear_time_is_a_load_error() -> None:
    with pytest.raises(PlaybookLoadErrors, match="is not a valid regular expression for RE2"):
        load_text("""
name: lookahead
params:
  host: {type: string, pattern: '^(?!prod-).*$'}
steps:
  - {id: say, action: core.log, with: {message: "{{ params.host }}"}}
""")
