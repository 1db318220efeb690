"""bot/worker_service.py: what a worker does when it starts, on the real dev server, and what it
does not load."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from bot.engine.schedules import SPEC_MEMO, schedule_id
from bot.engine.worker import worker_deps
from bot.settings import Settings
from bot.worker_service import serve_worker
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
# The front door's libraries: a worker holds every waiting run in memory, and these cost it about 10 MB.
FRONT_DOOR = ("slack_bolt", "fastapi", "starlette", "uvicorn", "bot.server", "bot.slack.app", "bot.alerts.receiver", "bot.api.routes")
PLAYBOOK = """\
name: NAME
params:
  host: {type: string}
triggers:
  schedule:
    - {cron: "0 3 * * *", params: {host: a.example}}
steps:
  - {id: note, action: core.log, with: {message: "{{ params.host }}"}}
"""


async def test_a_starting_worker_brings_its_schedules_in_step_unless_told_not_to(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = dev_env.client
    names = {flag: f"boot-{uuid.uuid4().hex[:8]}" for flag in (True, False)}
    for sync, name in names.items():
        playbooks = tmp_path / name
        playbooks.mkdir()
        (playbooks / "p.yaml").write_text(PLAYBOOK.replace("NAME", name))
        settings = Settings(data_dir=tmp_path / f"data-{name}", playbooks_dir=playbooks, policies_dir=ROOT / "policies",
                            task_queue=f"boot-{uuid.uuid4()}", envelope_key="e" * 32, schedules_sync=sync)
        stop = asyncio.Event()
        stop.set()  # start, sync, poll, and stop again at once
        async with worker_deps(settings) as deps:
            await serve_worker(settings, client, deps, stop)
    created = client.get_schedule_handle(schedule_id(names[True], "0"))
    desc = await created.describe()
    assert desc.info.next_action_times
    await created.delete()
    with pytest.raises(RPCError) as refused:  # PLAYBOOK_BOT_SCHEDULES_SYNC=false: nothing created
        await client.get_schedule_handle(schedule_id(names[False], "0")).describe()
    assert refused.value.status == RPCStatusCode.NOT_FOUND


async def test_a_reloaded_catalog_brings_the_schedules_in_step_again(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """Edit the file under a running worker: the reload (here forced, as SIGHUP does) re-syncs."""
    client, name = dev_env.client, f"reload-{uuid.uuid4().hex[:8]}"
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    path = playbooks / "p.yaml"
    path.write_text(PLAYBOOK.replace("NAME", name))
    settings = Settings(data_dir=tmp_path / "data", playbooks_dir=playbooks, policies_dir=ROOT / "policies",
                        task_queue=f"reload-{uuid.uuid4()}", envelope_key="e" * 32)
    handle = client.get_schedule_handle(schedule_id(name, "0"))
    stop = asyncio.Event()
    async with worker_deps(settings) as deps:
        assert deps.live is not None
        serving = asyncio.create_task(serve_worker(settings, client, deps, stop))
        try:
            await eventually(lambda: _cron(handle), what="the schedule created at start")
            path.write_text(PLAYBOOK.replace("NAME", name).replace("0 3 * * *", "45 5 * * *"))
            await deps.live.reload(force=True)
            assert await eventually(lambda: _cron(handle, "45 5 * * *"), what="the schedule updated") == "45 5 * * *"
            assert gc.get_freeze_count() > 0, "a started worker's objects are out of the collector's walks (bot/heap.py)"
        finally:
            stop.set()
            await serving
    assert gc.get_freeze_count() == 0
    await handle.delete()


async def _cron(handle: Any, wanted: str | None = None) -> str | None:
    """The cron the schedule was built from (its action's memo), once it exists (and is `wanted`)."""
    try:
        desc = await handle.describe()
    except RPCError:
        return None
    memo = desc.schedule.action.memo[SPEC_MEMO]
    cron = str(desc.data_converter.payload_converter.from_payload(memo)["cron"])
    return cron if wanted in (None, cron) else None


def test_the_worker_process_does_not_load_the_front_door():
    """What `playbook-bot worker` imports before it runs: the CLI and bot.worker_service."""
    code = ("import sys, bot.cli, bot.worker_service; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRONT_DOOR!r} or m in {FRONT_DOOR!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "[]"
