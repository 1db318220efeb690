"""`playbook-bot token issue|list|revoke` as users run it: the token is printed once and stored
only as a digest, a re-issue replaces it, `list` never shows a digest, refusals are one line."""

from __future__ import annotations

import json
from pathlib import Path

from bot.identity.tokens import TokenStore, digest
from tests.e2e.support import base_env, cli


def test_issue_list_revoke(tmp_path: Path) -> None:
    env = base_env(data_dir=tmp_path / "data")
    path = tmp_path / "data" / "api-tokens.json"

    issued = cli(["token", "issue", "deploy-bot"], env)
    assert issued.code == 0, issued
    token = issued.stdout.strip()
    assert issued.stdout == token + "\n" and "shown this once" in issued.stderr
    assert TokenStore(path).principal_for(token) == "api:deploy-bot"
    assert token not in path.read_text()

    again = cli(["token", "issue", "deploy-bot"], env)
    assert again.code == 0 and "replaces the earlier one" in again.stderr
    assert TokenStore(path).principal_for(token) is None
    assert TokenStore(path).principal_for(again.stdout.strip()) == "api:deploy-bot"
    assert cli(["token", "issue", "ci"], env).code == 0

    listed = cli(["token", "list"], env)
    assert listed.code == 0, listed
    lines = listed.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["api:ci", "api:deploy-bot"]
    assert all(line.split("\t")[1] for line in lines)  # when each was issued
    for entry in json.loads(path.read_text())["tokens"]:
        assert entry["sha256"] not in listed.stdout and entry["sha256"] not in listed.stderr
    assert digest(again.stdout.strip()) not in listed.stdout

    revoked = cli(["token", "revoke", "deploy-bot"], env)
    assert revoked.code == 0 and revoked.stdout.strip() == "revoked api:deploy-bot"
    assert TokenStore(path).principal_for(again.stdout.strip()) is None
    assert cli(["token", "list"], env).stdout.splitlines()[0].startswith("api:ci")


def test_refusals_are_one_line(tmp_path: Path) -> None:
    env = base_env(data_dir=tmp_path / "data")
    for args, expected in [(["token", "revoke", "nobody"], "no token for api:nobody"),
                           (["token", "issue", "a b"], "is not a principal"),
                           (["token", "issue", "api:x"], "is not a principal")]:
        result = cli(args, env)
        assert result.code == 1 and result.stdout == "", result
        assert result.error_line().startswith("error:") and expected in result.error_line(), result
        assert len(result.stderr.strip().splitlines()) == 1, result
    (tmp_path / "data" / "api-tokens.json").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "api-tokens.json").write_text("{garbled")
    broken = cli(["token", "list"], env)
    assert broken.code == 1 and "not a tokens file" in broken.error_line(), broken


def test_the_tokens_file_setting_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "tokens.json"
    env = base_env(data_dir=tmp_path / "data", api_tokens_file=path)
    token = cli(["token", "issue", "ci"], env).stdout.strip()
    assert TokenStore(path).principal_for(token) == "api:ci"
    assert not (tmp_path / "data" / "api-tokens.json").exists()
