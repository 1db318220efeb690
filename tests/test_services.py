"""bot/services.py: what a worker does when it starts, on the real dev server."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from bot.engine.schedules import schedule_id
from bot.engine.worker import worker_deps
from bot.services import serve_worker
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
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
