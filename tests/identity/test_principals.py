"""Principals (bot/identity/principals.py): the forms a principal may take, and nothing after them.

Red-team finding: the patterns ended in `$`, which `re.match` lets match before a final newline,
so `slack:U0BOB\\n`, `cli:alice\\n` and `api:bob\\n` were principals: a second line in the audit
trail's actor and `requested_by`, and a login `data.playbook.people` does not map."""

from __future__ import annotations

import pytest

from bot.identity import principals


@pytest.mark.parametrize("principal", ["slack:U0BOB", "cli:alice", "api:deploy-bot", "alertmanager"])
def test_the_forms_of_a_principal(principal: str) -> None:
    assert principals.check(principal) == principal


@pytest.mark.parametrize("principal", [
    "slack:U0BOB\n", "cli:alice\n", "api:bob\n", "slack:U0BOB\nslack:U0ALICE", "alertmanager\n", "slack:",
    "bob", "system", "cli:" + "a" * 65,
])
def test_anything_else_is_refused(principal: str) -> None:
    with pytest.raises(principals.PrincipalError):
        principals.check(principal)


def test_the_constructors_refuse_a_trailing_newline() -> None:
    for make, name in ((principals.slack, "U0BOB\n"), (principals.cli, "alice\n"), (principals.api, "bob\n")):
        with pytest.raises(principals.PrincipalError):
            make(name)
