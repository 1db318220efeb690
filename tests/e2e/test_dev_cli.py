"""`playbook-bot dev` as users run it, driven by the CLI from "another terminal".

One `dev` process (embedded Temporal + worker + HTTP) serves the module; the other commands find
it through the record under the same DATA_DIR, never through PLAYBOOK_BOT_TEMPORAL_ADDRESS.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from bot.devstack import RECORD_FILE, read_record
from bot.engine.state import RunStatus
from bot.engine.workflow import PlaybookRun
from tests.e2e.support import Service, base_env, cli, descendants, free_port, http_status, pid_alive, wait_until, write_policies

pytestmark = pytest.mark.slow

PLAYBOOKS = {
    "e2e-ok": """\
name: e2e-ok
summary: Two quick steps that succeed
owner: sre-oncall
steps:
  - id: hello
    action: core.log
    with: {message: "hello from {{ run.requested_by }}"}
  - id: touch
    action: shell.run
    with: {argv: [sh, -c, 'echo "ok $1" >> "$0"', "{out}/ok.txt", "{{ run.id }}"]}
""",
    "e2e-fail": """\
name: e2e-fail
summary: Third step fails; the first two are undone in reverse
owner: sre-oncall
steps:
  - id: s1
    action: shell.run
    with: {argv: [sh, -c, 'echo s1 >> "$0"', "{out}/fail.txt"]}
    compensate:
      action: shell.run
      with: {argv: [sh, -c, 'echo undo-s1 >> "$0"', "{out}/fail.txt"]}
  - id: s2
    action: core.log
    with: {message: second}
    compensate:
      action: shell.run
      with: {argv: [sh, -c, 'echo undo-s2 >> "$0"', "{out}/fail.txt"]}
  - id: s3
    action: shell.run
    with: {argv: [sh, -c, 'echo s3 >> "$0"; echo broken >&2; exit 3', "{out}/fail.txt"]}
    retry: {max_attempts: 1}
  - id: s4
    action: core.log
    with: {message: never}
""",
    "e2e-nap": """\
name: e2e-nap
summary: Does something undoable, then sleeps a minute
owner: sre-oncall
steps:
  - id: prep
    action: shell.run
    with: {argv: [sh, -c, 'echo prep >> "$0"', "{out}/nap.txt"]}
    compensate:
      action: shell.run
      with: {argv: [sh, -c, 'echo undo-prep >> "$0"', "{out}/nap.txt"]}
  - id: nap
    action: core.sleep
    with: {duration: 60s}
  - id: after
    action: core.log
    with: {message: woke}
""",
    "e2e-nap-first": """\
name: e2e-nap-first
summary: Sleeps a minute before doing anything
owner: sre-oncall
steps:
  - id: nap
    action: core.sleep
    with: {duration: 60s}
  - id: after
    action: shell.run
    with: {argv: [sh, -c, 'echo after >> "$0"', "{out}/nap-first.txt"]}
""",
}

STATUS_KEYS = {"run_id", "playbook", "state", "requested_by", "trigger", "steps", "compensations"}
STEP_KEYS = {"id", "action", "state", "attempts", "error", "decision", "approvals"}
COMPENSATION_KEYS = {"step", "state"}


@dataclass
class Stack:
    env: dict[str, str]
    tmp: Path
    data_dir: Path
    out: Path
    http: str
    dev: Service


def make_env(tmp: Path, data_dir: Path) -> dict[str, str]:
    playbooks = tmp / "playbooks"
    if not playbooks.exists():
        playbooks.mkdir()
        for name, text in PLAYBOOKS.items():
            (playbooks / f"{name}.yaml").write_text(text.replace("{out}", str(tmp / "out")))
        (tmp / "out").mkdir()
    return base_env(
        data_dir=data_dir,
        playbooks_dir=playbooks,
        policies_dir=write_policies(tmp / "policies"),
        http_port=free_port(),
        dev_server_port=free_port(),
        dev_server_ui_port=free_port(),
        shell_allow="sh",
    )


def start_dev(env: dict[str, str], logs: Path, name: str) -> Service:
    dev = Service(["dev"], env, logs, name)
    url = f"http://127.0.0.1:{env['PLAYBOOK_BOT_HTTP_PORT']}/readyz"
    try:
        deadline = time.monotonic() + 60
        while http_status(url) != 200:
            assert dev.proc.poll() is None, f"dev exited early:\n{dev}"
            assert time.monotonic() < deadline, f"dev not ready in 60s:\n{dev}"
            time.sleep(0.2)
    except BaseException:
        stop_dev(dev, Path(env["PLAYBOOK_BOT_DATA_DIR"]))
        raise
    return dev


def stop_dev(dev: Service, data_dir: Path) -> None:
    """Tear-down that leaves nothing behind, even if `dev` misbehaves: its group, then whatever
    it started in other sessions (the Temporal server)."""
    record = read_record(data_dir)
    leftovers = descendants(dev.pid) | ({record.pid} if record else set())
    dev.terminate(15)
    dev.close()
    for pid in leftovers:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dev")
    data_dir = tmp / "data"
    env = make_env(tmp, data_dir)
    dev = start_dev(env, tmp / "logs", "dev")
    try:
        yield Stack(env, tmp, data_dir, tmp / "out", f"http://127.0.0.1:{env['PLAYBOOK_BOT_HTTP_PORT']}", dev)
    finally:
        stop_dev(dev, data_dir)


@pytest_asyncio.fixture(scope="module")
async def client(stack: Stack) -> AsyncIterator[Client]:
    """For watching runs between CLI calls (cheaper than a CLI poll); the CLI does the acting."""
    record = read_record(stack.data_dir)
    assert record is not None
    yield await Client.connect(record.address, data_converter=pydantic_data_converter)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def status_of(stack: Stack, run_id: str) -> dict:
    result = cli(["status", run_id, "--json"], stack.env)
    assert result.code == 0, str(result)
    return result.json()


async def wait_for(handle: WorkflowHandle, predicate, timeout: float = 15) -> RunStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = await handle.query(PlaybookRun.status)
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"never reached; last {status.state} {[(s.id, s.state) for s in status.steps]}"
        await asyncio.sleep(0.1)


# ---- the stack is up ------------------------------------------------------------------------


def test_ready_and_recorded(stack: Stack) -> None:
    assert http_status(f"{stack.http}/healthz") == 200
    record = read_record(stack.data_dir)
    assert record is not None and pid_alive(record.pid)
    assert record.address == f"127.0.0.1:{stack.env['PLAYBOOK_BOT_DEV_SERVER_PORT']}"
    assert (stack.data_dir / "temporal.db").exists()


def test_a_playbook_added_under_dev_runs_without_a_restart(stack: Stack) -> None:
    """dev's front door and its worker child both pick the new file up (bot/playbook/reload.py)."""
    def catalog() -> dict:
        with urllib.request.urlopen(f"{stack.http}/readyz", timeout=5) as response:
            return json.load(response)["catalog"]

    before = catalog()
    (stack.tmp / "playbooks" / "e2e-added.yaml").write_text(
        "name: e2e-added\nsteps:\n  - {id: hi, action: core.log, with: {message: added}}\n")
    wait_until(lambda: catalog()["playbooks"] == before["playbooks"] + 1, 20, "dev serving the added playbook")
    assert catalog()["hash"] != before["hash"] and catalog()["errors"] is None
    result = cli(["run", "e2e-added", "--wait", "--json"], stack.env)
    assert result.code == 0, str(result)
    assert result.json()["state"] == "completed"


# ---- runs -----------------------------------------------------------------------------------


def test_run_wait_json_completes(stack: Stack) -> None:
    result = cli(["run", "e2e-ok", "--wait", "--json"], stack.env)
    assert result.code == 0, str(result)
    status = result.json()
    assert status["state"] == "completed"
    assert [(s["id"], s["state"], s["attempts"]) for s in status["steps"]] == [
        ("hello", "succeeded", 1),
        ("touch", "succeeded", 1),
    ]
    assert status["requested_by"] == f"cli:{getpass.getuser()}"
    assert status["trigger"] == "cli"
    assert f"ok {status['run_id']}" in lines(stack.out / "ok.txt")
    # The CLI asked `start` on the worker's own input and sealed its allow: the worker did not ask again.
    exported = cli(["audit", "export", status["run_id"], "--format", "json"], stack.env)
    (started,) = [e for e in exported.json() if e["kind"] == "run_started"]
    assert started["details"].get("start_asked_by") == "front door", started


def test_failing_run_exits_1_and_undoes_in_reverse(stack: Stack) -> None:
    result = cli(["run", "e2e-fail", "--wait", "--json"], stack.env)
    assert result.code == 1, str(result)
    status = result.json()
    assert status["state"] == "compensated"
    steps = {s["id"]: s for s in status["steps"]}
    assert steps["s3"]["state"] == "failed" and steps["s3"]["attempts"] == 1
    assert "exited with code 3" in steps["s3"]["error"] and "broken" in steps["s3"]["error"]
    assert (steps["s1"]["state"], steps["s2"]["state"], steps["s4"]["state"]) == ("compensated", "compensated", "pending")
    assert [(c["step"], c["state"]) for c in status["compensations"]] == [("s2", "succeeded"), ("s1", "succeeded")]
    assert lines(stack.out / "fail.txt") == ["s1", "s3", "undo-s2", "undo-s1"]

    shown = status_of(stack, status["run_id"])
    assert shown["state"] == "compensated"
    assert [s["state"] for s in shown["steps"]] == ["compensated", "compensated", "failed", "pending"]
    for comp in shown["compensations"]:
        assert COMPENSATION_KEYS <= set(comp), COMPENSATION_KEYS - set(comp)


def test_run_json_prints_run_id_and_status_has_design_keys(stack: Stack) -> None:
    started = cli(["run", "e2e-ok", "--json", "--by", "U024BE7LH"], stack.env)
    assert started.code == 0, str(started)
    run_id = started.json()["run_id"]
    assert run_id.startswith("e2e-ok-")

    status = wait_until(lambda: (s := status_of(stack, run_id))["state"] == "completed" and s, 20, "run completed")
    assert STATUS_KEYS <= set(status), STATUS_KEYS - set(status)
    assert status["run_id"] == run_id and status["playbook"] == "e2e-ok"
    assert status["requested_by"] == "cli:U024BE7LH" and status["trigger"] == "cli"
    # `--by` on the embedded stack is verified: the CLI signed the start with the dev key beside it
    assert status["requester"] == {"principal": "cli:U024BE7LH", "person": "cli:U024BE7LH", "verified": True,
                                   "verified_by": "dev"}
    assert [s["id"] for s in status["steps"]] == ["hello", "touch"]
    for step in status["steps"]:
        assert STEP_KEYS <= set(step), STEP_KEYS - set(step)
        assert step["approvals"] == [] and step["error"] is None

    table = cli(["status", run_id], stack.env)
    assert table.code == 0, str(table)
    assert "completed" in table.stdout and "touch" in table.stdout


async def test_cancel_sleeping_run_compensates(stack: Stack, client: Client) -> None:
    started = cli(["run", "e2e-nap", "--json", "--by", "bob"], stack.env)
    assert started.code == 0, str(started)
    run_id = started.json()["run_id"]
    handle = client.get_workflow_handle(run_id, result_type=RunStatus)
    await wait_for(handle, lambda s: s.step("nap").state == "running")

    cancelled = cli(["cancel", run_id, "--by", "carol", "--reason", "wrong service"], stack.env)
    assert cancelled.code == 0, str(cancelled)
    assert run_id in cancelled.stdout and "cancel accepted from cli:carol" in cancelled.stdout

    final = await asyncio.wait_for(handle.result(), 20)  # far less than the 60 s nap
    assert final.state == "compensated"
    assert final.requested_by == "cli:bob"
    assert (final.cancelled_by, final.cancel_reason, final.error) == ("cli:carol", "wrong service",
                                                                      "cancelled by cli:carol: wrong service")
    assert [(s.id, s.state) for s in final.steps] == [("prep", "compensated"), ("nap", "cancelled"), ("after", "pending")]
    assert [(c.step, c.state) for c in final.compensations] == [("prep", "succeeded")]
    assert lines(stack.out / "nap.txt") == ["prep", "undo-prep"]

    shown = status_of(stack, run_id)
    assert shown["state"] == "compensated"
    again = cli(["cancel", run_id], stack.env)
    assert again.code == 1 and "already ended" in again.stderr, str(again)


async def test_cancel_before_anything_ran_is_cancelled(stack: Stack, client: Client) -> None:
    started = cli(["run", "e2e-nap-first", "--json"], stack.env)
    assert started.code == 0, str(started)
    handle = client.get_workflow_handle(started.json()["run_id"], result_type=RunStatus)
    await wait_for(handle, lambda s: s.step("nap").state == "running")

    assert cli(["cancel", handle.id], stack.env).code == 0
    final = await asyncio.wait_for(handle.result(), 20)
    assert final.state == "cancelled"
    assert final.compensations == []
    assert [(s.id, s.state) for s in final.steps] == [("nap", "cancelled"), ("after", "pending")]
    assert not (stack.out / "nap-first.txt").exists()


# ---- dev refuses what would clash -----------------------------------------------------------


def test_second_dev_on_same_data_dir_is_refused(stack: Stack) -> None:
    env = {
        **stack.env,
        "PLAYBOOK_BOT_HTTP_PORT": str(free_port()),
        "PLAYBOOK_BOT_DEV_SERVER_PORT": str(free_port()),
        "PLAYBOOK_BOT_DEV_SERVER_UI_PORT": str(free_port()),
    }
    before = read_record(stack.data_dir)
    result = cli(["dev"], env, timeout=30)
    assert result.code == 1, str(result)
    assert "already running" in result.error_line() and str(before.pid) in result.error_line()
    assert read_record(stack.data_dir) == before
    assert http_status(f"{stack.http}/readyz") == 200


def test_dev_with_taken_port_exits_with_a_clear_message(tmp_path: Path) -> None:
    env = make_env(tmp_path, tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env["PLAYBOOK_BOT_DEV_SERVER_PORT"] = str(port)
        result = cli(["dev"], env, timeout=30)
    assert result.code == 1, str(result)
    line = result.error_line()
    assert f"port {port}" in line and "PLAYBOOK_BOT_DEV_SERVER_PORT" in line, line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / RECORD_FILE).exists()
    assert http_status(f"http://127.0.0.1:{env['PLAYBOOK_BOT_HTTP_PORT']}/healthz") is None


# ---- a clean stop ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how", ["sigterm-to-dev", "ctrl-c-to-group"], ids=["sigterm", "sigint"]
)
def test_signal_stops_dev_and_its_temporal(tmp_path: Path, how: str) -> None:
    data_dir = tmp_path / "data"
    env = make_env(tmp_path, data_dir)
    dev = start_dev(env, tmp_path / "logs", "dev-" + how)
    try:
        record = read_record(data_dir)
        assert record is not None and pid_alive(record.pid)
        children = descendants(dev.pid)
        assert record.pid in children
        started = time.monotonic()
        if how == "sigterm-to-dev":
            code = dev.terminate(15)
        else:  # a terminal sends SIGINT to the whole foreground group
            code = dev.terminate(15, sig=signal.SIGINT, group=True)
        elapsed = time.monotonic() - started
        assert code == 0, f"dev did not exit 0 within 15 s after {how} (code {code}):\n{dev}"
        assert elapsed < 15
        wait_until(lambda: not any(pid_alive(pid) for pid in children), 5, f"dev's children {children} to go")
        assert not (data_dir / RECORD_FILE).exists()
        assert http_status(f"http://127.0.0.1:{env['PLAYBOOK_BOT_HTTP_PORT']}/healthz") is None
        assert "stopping" in dev.stderr()
        assert "Traceback" not in dev.stderr(), f"traceback on a clean stop:\n{dev}"
    finally:
        stop_dev(dev, data_dir)
