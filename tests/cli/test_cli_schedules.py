"""`playbook-bot schedules`, run as users run it (a subprocess, clean exit), against the real dev
server: this task queue's schedules with their next run times, and file entries not yet created."""

from __future__ import annotations

import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from bot.engine.schedules import schedule_id, sync_schedules
from bot.identity.proofs import Keyring
from bot.playbook.loader import load_directory
from tests.e2e.support import base_env, cli

PLAYBOOK = """\
name: NAME
summary: Weekly failover drill
owner: sre-oncall
params:
  region: {type: string}
triggers:
  schedule:
    - {id: weekly, cron: "0 10 * * mon", timezone: America/New_York, params: {region: us-east-1}}
steps:
  - {id: note, action: core.log, with: {message: "drill {{ params.region }}"}}
"""


async def test_it_lists_this_queues_schedules_with_next_runs_and_warns_of_uncreated_ones(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    name, queue = f"drill-{uuid.uuid4().hex[:8]}", f"cli-sched-{uuid.uuid4()}"
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "drill.yaml").write_text(PLAYBOOK.replace("NAME", name))
    env = base_env(temporal_address=dev_env.client.service_client.config.target_host, task_queue=queue,
                   playbooks_dir=playbooks, data_dir=tmp_path / "data")

    before = cli(["schedules"], env)
    assert before.code == 0, before
    assert f"no schedules on task queue {queue!r}" in before.stdout
    assert f"warning: {schedule_id(name, 'weekly')} is in the playbooks but not in Temporal" in before.stderr

    await sync_schedules(dev_env.client, load_directory(playbooks), Keyring(b"k" * 32), queue)
    listed = cli(["schedules", "--json"], env)
    assert listed.code == 0, listed
    [view] = listed.json()
    assert (view["id"], view["playbook"], view["cron"], view["timezone"], view["paused"]) == (
        schedule_id(name, "weekly"), name, "0 10 * * mon", "America/New_York", False)
    assert len(view["next_runs"]) >= 3 and view["recent_runs"] == []
    assert "warning" not in listed.stderr

    table = cli(["schedules"], {**env, "COLUMNS": "250"})
    assert table.code == 0, table
    assert "0 10 * * mon (America/New_York)" in table.stdout and " 10:00 E" in table.stdout  # EST/EDT, its own zone
    await dev_env.client.get_schedule_handle(schedule_id(name, "weekly")).delete()
