"""The API's token store (bot/identity/tokens.py): shown once, stored as a digest, replaced on
re-issue, revoked for a running front door without a restart, and a bad file is a named error."""

from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bot.identity.tokens import PREFIX, TokenError, TokenStore, digest


def test_an_issued_token_maps_to_its_principal_and_only_its_digest_is_stored(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token = store.issue("deploy-bot")
    assert token.startswith(PREFIX) and len(token) > 40
    assert store.principal_for(token) == "api:deploy-bot"
    text = (tmp_path / "tokens.json").read_text()
    assert token not in text and token[len(PREFIX):] not in text
    assert json.loads(text)["tokens"][0]["sha256"] == digest(token)
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["bob\n", "bob\napi:alice", ""])
def test_a_token_is_issued_only_for_a_name_that_makes_a_principal(tmp_path: Path, name: str) -> None:
    """Red-team finding: `token issue $'bob\\n'` made the principal `api:bob\\n` (a `$` pattern)."""
    store = TokenStore(tmp_path / "tokens.json")
    with pytest.raises(ValueError):
        store.issue(name)
    assert not (tmp_path / "tokens.json").exists() or "bob" not in (tmp_path / "tokens.json").read_text()


def test_tokens_that_are_not_issued_map_to_nobody(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token = store.issue("ci")
    for other in ("", " ", token.upper(), token[:-1], token + "x", digest(token), "\udcff" + token):
        assert store.principal_for(other) is None, other
    assert TokenStore(tmp_path / "absent.json").principal_for(token) is None


def test_reissuing_replaces_the_earlier_token(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    first = store.issue("ci")
    second = store.issue("ci")
    assert first != second
    assert store.principal_for(first) is None and store.principal_for(second) == "api:ci"
    assert list(store.entries()) == ["ci"]


def test_a_running_front_door_sees_a_revoke_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    cli, front_door = TokenStore(path), TokenStore(path)
    alice, bob = cli.issue("alice"), cli.issue("bob")
    assert front_door.principal_for(bob) == "api:bob"
    assert cli.revoke("bob") is True
    assert front_door.principal_for(bob) is None
    assert front_door.principal_for(alice) == "api:alice"
    assert cli.revoke("bob") is False


def test_names_are_principal_names(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    for bad in ("", "a b", "api:x", "../x", "x" * 65):
        with pytest.raises(TokenError):
            store.issue(bad)
    assert store.entries() == {}


@pytest.mark.parametrize("content", ["not json", '{"tokens": [{"name": "x"}]}', '{"tokens": [{"name": "x", "sha256": "abc"}]}',
                                     '{"tokens": [{"name": "bad name", "sha256": "' + "0" * 64 + '"}]}', "[1, 2]"])
def test_a_file_that_is_not_a_tokens_file_is_a_named_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(TokenError, match="not a tokens file"):
        TokenStore(path).principal_for("pbt_anything")


def test_concurrent_issues_lose_none(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    names = [f"bot-{i}" for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = dict(zip(names, pool.map(lambda n: TokenStore(path).issue(n), names)))
    store = TokenStore(path)
    assert sorted(store.entries()) == sorted(names)
    assert all(store.principal_for(token) == f"api:{name}" for name, token in tokens.items())
