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
    control = cli(["serve"], {**env, "PLAYBOOK_BOT_ALERTMANAGER_TOKEN": "a-token"}, timeout=30)
    assert f"cannot reach Temporal at {address}" in error_line(control)


def test_serve_refuses_to_start_without_the_envelope_key(tmp_path: Path) -> None:
    address = nothing_listens()
    env = env_for(tmp_path, temporal_address=address, alertmanager_token="a-token")
    line = error_line(cli(["serve"], env, timeout=30))
    assert line.startswith("error: serve needs PLAYBOOK_BOT_ENVELOPE_KEY (the same on every front door and worker")
    control = cli(["serve"], {**env, "PLAYBOOK_BOT_ENVELOPE_KEY": "k" * 64}, timeout=30)
    assert f"cannot reach Temporal at {address}" in error_line(control)


@pytest.mark.parametrize("command", ["worker", "dev", "serve"])
def test_a_rego_syntax_error_stops_the_process_naming_file_and_line(tmp_path: Path, command: str) -> None:
    address = nothing_listens()
    env = env_for(tmp_path, temporal_address=address, alertmanager_token="a-token", envelope_key="k" * 64)
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
