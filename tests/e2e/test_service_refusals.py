"""`serve`, `worker` and `dev` refuse to start on a configuration they cannot run safely, with one
line naming what to fix, before anything starts. Run as users run them (the console script).

Each refusal has a positive control: the same command with that one thing fixed gets past it and
stops later, at a Temporal address where nothing listens, so the refusal was about that thing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.devstack import read_record
from tests.e2e.support import Result, base_env, cli, free_port, kill_strays, write_policies

PLAYBOOK = """\
name: note
steps:
  - {id: note, action: core.log, with: {message: hi}}
"""

# `decision` is not closed on line 5: a syntax error, nothing else wrong.
BROKEN_REGO = """\
package playbook.authz

import rego.v1

decision := {"allow": true,

approver := {"allow": true, "reasons": []}
"""


def env_for(tmp: Path, **settings: object) -> dict[str, str]:
    (tmp / "playbooks").mkdir(exist_ok=True)
    (tmp / "playbooks" / "note.yaml").write_text(PLAYBOOK)
    return base_env(
        data_dir=tmp / "data",
        playbooks_dir=tmp / "playbooks",
        policies_dir=write_policies(tmp / "policies"),
        http_port=free_port(),
        temporal_connect_timeout=3,
        **settings,
    )


def nothing_listens() -> str:
    return f"127.0.0.1:{free_port()}"  # bound and released: connecting is refused at once


def error_line(result: Result) -> str:
    """The one-line reason: exit 1, nothing on stdout, no traceback, `error: ...` last on stderr."""
    assert result.code == 1, str(result)
    assert result.stdout == "" and "Traceback" not in result.stderr, str(result)
    line = result.error_line()
    assert line.startswith("error: "), str(result)
    return line


def test_serve_refuses_to_start_without_the_alertmanager_token(tmp_path: Path) -> None:
    address = nothing_listens()
    env = env_for(tmp_path, temporal_address=address, envelope_key="k" * 64)
    line = error_line(cli(["serve"], env, timeout=30))
    assert line == (
        "error: serve needs PLAYBOOK_BOT_ALERTMANAGER_TOKEN: the Alertmanager webhook must be authenticated"
    )
    control = cli(["serve"], {**env, "PLAYBOOK_BOT_ALERTMANAGER_TOKEN": "a-webhook-token-long-enough"}, timeout=30)
    assert f"cannot reach Temporal at {address}" in error_line(control)


def test_serve_refuses_to_start_without_the_envelope_key(tmp_path: Path) -> None:
    address = nothing_listens()
    env = env_for(tmp_path, temporal_address=address, alertmanager_token="a-webhook-token-long-enough")
    line = error_line(cli(["serve"], env, timeout=30))
    assert line.startswith("error: serve needs PLAYBOOK_BOT_ENVELOPE_KEY (the same on every front door and worker")
    control = cli(["serve"], {**env, "PLAYBOOK_BOT_ENVELOPE_KEY": "k" * 64}, timeout=30)
    assert f"cannot reach Temporal at {address}" in error_line(control)


@pytest.mark.parametrize(("command", "setting", "value", "why"), [
    ("serve", "PLAYBOOK_BOT_ALERTMANAGER_TOKEN", "change-me", "is the example's placeholder"),
    ("serve", "PLAYBOOK_BOT_ALERTMANAGER_TOKEN", "hunter2", "is shorter than 16 characters"),
    ("serve", "PLAYBOOK_BOT_ENVELOPE_KEY", "change-me-to-32-or-more-random-characters", "is the example's placeholder"),
    ("worker", "PLAYBOOK_BOT_ENVELOPE_KEY", "change-me-to-32-or-more-random-characters", "is the example's placeholder"),
    ("dev", "PLAYBOOK_BOT_GRAFANA_TOKEN", "Change_Me", "is the example's placeholder"),
    ("serve", "PLAYBOOK_BOT_HTTP_PORT", "eighty", "is not valid"),  # (was a traceback: "unexpected error")
])
def test_a_guessable_secret_stops_the_process_without_showing_it(
    tmp_path: Path, command: str, setting: str, value: str, why: str
) -> None:
    """Red team: `serve` ran with deploy/env.example's `change-me` token and key (compose's `${VAR:?}`
    stops only an empty one), and `Bearer change-me` started a remediation; the public key would
    sign proofs as anyone. The refusal names the variable, never its value."""
    address = nothing_listens()
    env = env_for(tmp_path, temporal_address=address, alertmanager_token="a-webhook-token-long-enough",
                  envelope_key="k" * 64)
    result = cli([command], {**env, setting: value}, timeout=30)
    line = error_line(result)
    assert line.startswith(f"error: {setting} {why}"), line
    assert "openssl rand -hex 32" in line or setting == "PLAYBOOK_BOT_HTTP_PORT", line
    assert value not in result.stderr
    if command != "dev":  # (dev would start a Temporal server of its own)
        assert f"cannot reach Temporal at {address}" in error_line(cli([command], env, timeout=30))


def test_a_webhook_token_from_a_secret_file_loses_its_newline(tmp_path: Path) -> None:
    """A Kubernetes secret made from a file ends in a newline; Alertmanager trims its credentials_file,
    so the untrimmed token refused every delivery."""
    from bot.settings import Settings

    settings = Settings(alertmanager_token="0123456789abcdef0123\n", data_dir=tmp_path)  # type: ignore[arg-type]
    assert settings.alertmanager_token is not None
    assert settings.alertmanager_token.get_secret_value() == "0123456789abcdef0123"
    # (a token that merely holds the letters is no placeholder)
    Settings(grafana_token="exchange-metrics-grafana-hook-7f3a", data_dir=tmp_path)  # type: ignore[arg-type]


def test_the_env_example_holds_no_secret_value() -> None:
    """Every secret there is empty, so compose refuses to start until each is set."""
    from tests.e2e.support import ROOT

    for line in (ROOT / "deploy" / "env.example").read_text().splitlines():
        key, _, value = line.partition("=")
        if line and not line.startswith("#") and any(w in key for w in ("PASSWORD", "TOKEN", "KEY", "SECRET")):
            assert value == "", f"deploy/env.example sets {key}: leave it empty"


@pytest.mark.parametrize("command", ["worker", "dev", "serve"])
def test_a_rego_syntax_error_stops_the_process_naming_file_and_line(tmp_path: Path, command: str) -> None:
    address = nothing_listens()
    env = env_for(tmp_path, temporal_address=address, alertmanager_token="a-webhook-token-long-enough", envelope_key="k" * 64)
    rego = tmp_path / "policies" / "playbook" / "authz" / "authz.rego"
    good = rego.read_text()
    rego.write_text(BROKEN_REGO)
    line = error_line(cli([command], env, timeout=30))
    assert line.startswith(f"error: {rego}:5:"), line
    rego.write_text(good)  # positive control: the same command and settings, a policy that parses
    assert f"cannot reach Temporal at {address}" in error_line(cli([command], env, timeout=30))


def test_dev_with_a_rego_syntax_error_starts_no_temporal_server(tmp_path: Path) -> None:
    """The embedded stack: policies are loaded before the dev server starts, so nothing is left running."""
    env = env_for(tmp_path, dev_server_port=free_port(), dev_server_ui_port=free_port())  # never 7233 here
    rego = tmp_path / "policies" / "playbook" / "authz" / "authz.rego"
    rego.write_text(BROKEN_REGO)
    try:
        line = error_line(cli(["dev"], env, timeout=30))
    finally:
        strays = kill_strays(str(tmp_path))  # a dev server started anyway lives in its own session
    assert line.startswith(f"error: {rego}:5:"), line
    assert read_record(tmp_path / "data") is None and not strays, "no dev server was started"
