"""`playbook-bot dev` SIGKILLed (as the OOM killer does) mid-run, then `dev` again on the same
data dir: it starts, and the run that was in flight completes. Real processes throughout.

Its Temporal server dies with it (parent-death signal); a server that does not (here: stopped
with SIGSTOP, so it cannot act on that signal) is an orphan the next `dev` stops before starting.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from bot.devstack import read_record
from tests.e2e.support import Service, cli, pid_alive, wait_until
from tests.e2e.test_dev_cli import make_env, start_dev, stop_dev

pytestmark = pytest.mark.slow

DOZE = """\
name: e2e-doze
summary: Does something, sleeps a while, does something else
owner: sre-oncall
steps:
  - id: prep
    action: shell.run
    with: {argv: [sh, -c, 'echo prep >> "$0"', "{out}/doze.txt"]}
  - id: nap
    action: core.sleep
    with: {duration: 8s}  # outlasts the kill and the next dev's start; the timer is durable either way
  - id: after
    action: shell.run
    with: {argv: [sh, -c, 'echo after >> "$0"', "{out}/doze.txt"]}
"""

ORPHAN_NOTE = "stopping an orphaned temporal dev server"


def env_for(tmp: Path) -> dict[str, str]:
    (tmp / "playbooks").mkdir()
    (tmp / "out").mkdir()
    (tmp / "playbooks" / "e2e-doze.yaml").write_text(DOZE.replace("{out}", str(tmp / "out")))
    return make_env(tmp, tmp / "data")


def status(env: dict[str, str], run_id: str) -> dict:
    result = cli(["status", run_id, "--json"], env)
    assert result.code == 0, str(result)
    return result.json()


def start_napping_run(env: dict[str, str]) -> str:
    started = cli(["run", "e2e-doze", "--json"], env)
    assert started.code == 0, str(started)
    run_id = started.json()["run_id"]
    wait_until(lambda: {s["id"]: s["state"] for s in status(env, run_id)["steps"]}["nap"] == "running", 60, "the nap")
    return run_id


def sigkill(dev: Service) -> None:
    """The dev process alone, as the OOM killer picks it; not its group."""
    os.kill(dev.pid, signal.SIGKILL)
    dev.proc.wait(30)
    dev.close()


def assert_run_completes(env: dict[str, str], run_id: str, tmp: Path) -> None:
    final = wait_until(lambda: (s := status(env, run_id))["state"] not in ("pending", "running") and s, 120, "run end")
    assert final["state"] == "completed", final
    assert [(s["id"], s["state"]) for s in final["steps"]] == [("prep", "succeeded"), ("nap", "succeeded"),
                                                              ("after", "succeeded")]
    assert (tmp / "out" / "doze.txt").read_text().splitlines() == ["prep", "after"]


def test_sigkilled_dev_takes_its_server_along_and_the_next_dev_finishes_the_run(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    data_dir = tmp_path / "data"
    first = start_dev(env, tmp_path / "logs", "first")
    second: Service | None = None
    server = read_record(data_dir)
    try:
        assert server is not None and server.owner == first.pid
        run_id = start_napping_run(env)

        sigkill(first)
        wait_until(lambda: not pid_alive(server.pid), 60, f"the dev server (pid {server.pid}) to die with its dev")
        assert read_record(data_dir) is None, "a record naming a dead server is no record"

        second = start_dev(env, tmp_path / "logs", "second")
        again = read_record(data_dir)
        assert again is not None and again.owner == second.pid and again.pid != server.pid
        assert again.address == server.address
        assert ORPHAN_NOTE not in second.stderr(), "the parent-death signal should have left no orphan"
        assert_run_completes(env, run_id, tmp_path)
    finally:
        if second is not None:
            stop_dev(second, data_dir)
        first.close()
        if server is not None and pid_alive(server.pid):
            os.kill(server.pid, signal.SIGKILL)


# `make chaos` (26 s; `make test` must stay under 10 minutes on 2 cores): the SIGKILL test above
# keeps the common case, a dev killed with its server, in `make test`.
@pytest.mark.chaos
def test_a_server_that_outlives_its_dev_is_stopped_by_the_next_dev(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    data_dir = tmp_path / "data"
    first = start_dev(env, tmp_path / "logs", "first")
    second: Service | None = None
    server = read_record(data_dir)
    try:
        assert server is not None
        run_id = start_napping_run(env)

        os.kill(server.pid, signal.SIGSTOP)  # a hung server: the parent-death SIGTERM stays pending
        sigkill(first)
        assert pid_alive(server.pid)
        assert read_record(data_dir) == server and not server.owner_alive(), "an orphan, recorded"

        second = start_dev(env, tmp_path / "logs", "second")
        assert not pid_alive(server.pid), "the orphan was stopped (SIGKILL after the grace period)"
        assert ORPHAN_NOTE in second.stderr()
        again = read_record(data_dir)
        assert again is not None and again.owner == second.pid and again.address == server.address
        assert_run_completes(env, run_id, tmp_path)
    finally:
        if second is not None:
            stop_dev(second, data_dir)
        first.close()
        if server is not None and pid_alive(server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGKILL)
