"""The console script refuses bad input with one clear line on stderr and a non-zero exit, and
starts nothing. Run as a subprocess, as users run it: this also proves no crash at exit (134/139).

Runs that would be valid go to a real dev server on a task queue no worker polls, so a run that
slipped through would be visible in Temporal; the positive control proves the check can see one.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from bot.playbook.loader import is_rehearsal_file
from tests.e2e.support import ROOT, Result, base_env, cli, free_port, write_policies

PROBE = """\
name: cli-probe
summary: Takes typed params; used to check how the CLI refuses bad ones
owner: sre-oncall
params:
  service: {type: string, pattern: "^[a-z0-9-]+$"}
  environment: {type: string, enum: [staging, production], default: production}
  replicas: {type: integer, default: 1}
steps:
  - id: note
    action: core.log
    with: {message: "{{ params.service }} x{{ params.replicas }} in {{ params.environment }}"}
"""

OTHER = """\
name: cli-other
summary: A second playbook, so an unknown name lists more than one
owner: sre-oncall
steps:
  - id: note
    action: core.log
    with: {message: hello}
"""

# A playbook whose 9th line names an action that does not exist.
BROKEN = """\
name: broken-one
summary: Fails validation on line 9
owner: sre-oncall
steps:
  - id: fine
    action: core.log
    with: {message: hi}
  - id: bad
    action: no.such.action
    with: {}
"""


@dataclass
class Probe:
    env: dict[str, str]
    address: str
    task_queue: str
    data_dir: Path
    tmp: Path


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, dev_env: WorkflowEnvironment) -> Probe:
    tmp = tmp_path_factory.mktemp("cli")
    playbooks = tmp / "playbooks"
    playbooks.mkdir()
    (playbooks / "cli-probe.yaml").write_text(PROBE)
    (playbooks / "cli-other.yaml").write_text(OTHER)
    address = dev_env.client.service_client.config.target_host
    task_queue = f"cli-nobody-polls-{uuid.uuid4().hex[:8]}"
    env = base_env(
        temporal_address=address,
        task_queue=task_queue,
        data_dir=tmp / "data",
        playbooks_dir=playbooks,
        policies_dir=write_policies(tmp / "policies"),
    )
    return Probe(env, address, task_queue, tmp / "data", tmp)


def assert_one_line_error(result: Result, *needles: str, code: int = 1) -> str:
    assert result.code == code, str(result)
    assert result.stdout == "", str(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{result}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


async def probe_run_ids(client: Client) -> set[str]:
    return {wf.id async for wf in client.list_workflows("WorkflowType = 'PlaybookRun'") if wf.id.startswith("cli-probe-")}


# ---- bad params and names: refused before anything reaches Temporal -------------------------

BAD_RUNS = {
    "no_equals": (["run", "cli-probe", "-p", "service=api", "-p", "foo"], ["key=value", "'foo'"]),
    "unknown_playbook": (["run", "cli-prob"], ["unknown playbook 'cli-prob'", "cli-probe", "cli-other"]),
    "missing_required": (["run", "cli-probe"], ["missing required param 'service'"]),
    "enum": (
        ["run", "cli-probe", "-p", "service=api", "-p", "environment=prod"],
        ["'environment'", "'prod'", "staging, production"],
    ),
    "pattern": (["run", "cli-probe", "-p", "service=Bad_Name"], ["'service'", "'Bad_Name'", "^[a-z0-9-]+$"]),
    "integer": (["run", "cli-probe", "-p", "service=api", "-p", "replicas=many"], ["'replicas'", "integer", "'many'"]),
    "unknown_param": (["run", "cli-probe", "-p", "service=api", "-p", "servise=x"], ["unknown param 'servise'"]),
}


UNKNOWN_RUN = {
    "status": ["status", "no-such-run-1"],
    "status-json": ["status", "no-such-run-1", "--json"],
    "cancel": ["cancel", "no-such-run-1"],
    "approve": ["approve", "no-such-run-1", "restart", "--by", "alice"],
    "reject": ["reject", "no-such-run-1", "restart"],
}


@pytest.fixture(scope="module")
def batch(probe: Probe) -> dict[str, Result]:
    """The independent invocations, three at a time: each one is a whole Python start-up."""
    commands = {**{name: args for name, (args, _) in BAD_RUNS.items()}, **UNKNOWN_RUN}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(cli, args, probe.env) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_run_is_refused_with_one_line(case: str, batch: dict[str, Result]) -> None:
    assert_one_line_error(batch[case], *BAD_RUNS[case][1])


async def test_refused_runs_start_nothing_and_a_valid_run_does(
    probe: Probe, batch: dict[str, Result], dev_env: WorkflowEnvironment
) -> None:
    client = dev_env.client
    assert all(batch[name].code == 1 for name in BAD_RUNS)

    ok = cli(["run", "cli-probe", "-p", "service=api", "-p", "replicas=3", "--by", "probe-user", "--json"], probe.env)
    assert ok.code == 0, str(ok)
    run_id = ok.json()["run_id"]
    try:
        assert run_id.startswith("cli-probe-")
        desc = await client.get_workflow_handle(run_id).describe()
        assert desc.workflow_type == "PlaybookRun"
        assert desc.task_queue == probe.task_queue
        # The check below sees a run that did start, so its silence about the refused ones means something.
        for _ in range(50):
            ids = await probe_run_ids(client)
            if run_id in ids:
                break
            await asyncio.sleep(0.1)
        assert ids == {run_id}, f"refused commands started runs: {ids - {run_id}}"
    finally:
        await client.get_workflow_handle(run_id).terminate("test clean-up")


# ---- Temporal unreachable, or never started -------------------------------------------------


def test_closed_port_fails_fast_and_clearly(probe: Probe) -> None:
    port = free_port()  # bound and released: nothing listens there now
    env = {**probe.env, "PLAYBOOK_BOT_TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
    result = cli(["run", "cli-probe", "-p", "service=api"], env, timeout=30)
    assert_one_line_error(result, f"cannot reach Temporal at 127.0.0.1:{port}")
    assert result.elapsed < 12, f"took {result.elapsed:.1f}s"


def test_silent_server_times_out_instead_of_hanging(probe: Probe) -> None:
    """A port that accepts TCP but never speaks gRPC (a wedged proxy): the connect timeout holds."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever answers
        port = silent.getsockname()[1]
        env = {
            **probe.env,
            "PLAYBOOK_BOT_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
            "PLAYBOOK_BOT_TEMPORAL_CONNECT_TIMEOUT": "2",
        }
        result = cli(["status", "some-run"], env, timeout=30)
    assert_one_line_error(result, f"cannot reach Temporal at 127.0.0.1:{port}")
    assert "2s" in result.stderr
    assert result.elapsed < 8, f"took {result.elapsed:.1f}s with a 2s connect timeout"


def test_no_recorded_server_and_no_address_says_how_to_start_one(probe: Probe, tmp_path: Path) -> None:
    env = {k: v for k, v in probe.env.items() if k != "PLAYBOOK_BOT_TEMPORAL_ADDRESS"}
    env["PLAYBOOK_BOT_DATA_DIR"] = str(tmp_path / "empty")
    result = cli(["run", "cli-probe", "-p", "service=api"], env)
    assert_one_line_error(result, "make run", "playbook-bot dev", str(tmp_path / "empty"), "PLAYBOOK_BOT_TEMPORAL_ADDRESS")


def test_stale_record_of_a_dead_dev_server_is_not_used(probe: Probe, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    data = tmp_path / "stale"
    data.mkdir()
    (data / "devserver.json").write_text(
        f'{{"address": "{probe.address}", "ui_url": "http://127.0.0.1:1", "pid": {dead.pid}}}'
    )
    env = {k: v for k, v in probe.env.items() if k != "PLAYBOOK_BOT_TEMPORAL_ADDRESS"}
    env["PLAYBOOK_BOT_DATA_DIR"] = str(data)
    result = cli(["status", "anything"], env)
    assert_one_line_error(result, "no Temporal server", "playbook-bot dev")


# ---- unknown runs ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(UNKNOWN_RUN))
def test_unknown_run_is_one_line(command: str, batch: dict[str, Result]) -> None:
    assert_one_line_error(batch[command], "unknown run 'no-such-run-1'")


# ---- validate and schema --------------------------------------------------------------------


def test_validate_broken_dir_names_file_line_and_step(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    (tmp_path / "fine.yaml").write_text(OTHER)
    result = cli(["validate", str(tmp_path)], base_env(data_dir=tmp_path / "data"))
    assert_one_line_error(result, f"{tmp_path / 'broken.yaml'}:9:", "step 'bad'", "no.such.action")


def test_validate_missing_path_is_an_error(tmp_path: Path) -> None:
    result = cli(["validate", str(tmp_path / "nope")], base_env())
    assert_one_line_error(result, str(tmp_path / "nope"))


def test_validate_shipped_playbooks_passes() -> None:
    shipped = sorted(p for p in (ROOT / "playbooks").glob("*.y*ml") if not is_rehearsal_file(p))
    assert shipped, "no shipped playbooks"
    result = cli(["validate"], base_env(playbooks_dir=ROOT / "playbooks"), cwd=ROOT)
    assert result.code == 0, str(result)
    oks = [line for line in result.stdout.splitlines() if line.startswith("ok  ")]
    assert len(oks) == len(shipped), result.stdout


def test_schema_prints_json_schema() -> None:
    result = cli(["schema"], base_env())
    assert result.code == 0, str(result)
    schema = result.json()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"name", "steps"} <= set(schema["properties"])
    assert "name" in schema.get("required", [])


def test_a_confirm_answer_longer_than_a_run_takes_is_a_usage_error_and_sends_nothing(probe: Probe) -> None:
    """Red-team finding: the request model refused it after the command had started, a traceback."""
    result = cli(["confirm", "some-run", "pick", "x" * 1500], probe.env, timeout=30)
    assert_one_line_error(result, "ANSWER: at most 1000 characters, got 1500", "nothing was sent", code=2)
