"""Two front doors and two workers on one Temporal and one PostgreSQL, as real processes.

An alert storm whose deliveries (two firing, and for some alerts a resolved one, all at once)
are spread across both front doors: exactly one run per episode, no resolved episode ever
remediated, and one hash chain that `audit verify` accepts holding every event of every run.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.alerts.episodes import episode_id
from bot.audit.backend import open_store
from bot.settings import Settings
from tests.e2e.support import ROOT, Service, base_env, cli, free_port, wait_until
from tests.reliability.alertmanager_support import AUTH, ENVELOPE_KEY, TOKEN, firing, webhook

PLAYBOOK = """\
name: storm
summary: Wait, then fix
owner: sre  # the shipped cancel rule lets a resolved alert cancel the runs of an owned playbook
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="Storm"']
      params: {instance: "{{ alert.labels.instance }}"}
steps:
  - {id: settle, action: core.sleep, with: {duration: 3s}}
  - {id: fix, action: core.log, with: {message: "fixing {{ params.instance }}"}}
"""
STARTS = "2026-12-03T02:00:00Z"
FIRING_ONLY = 16  # alerts delivered firing three times
RACED = 8  # alerts delivered firing twice and resolved once, all at once


def resolved(alert: dict[str, Any]) -> dict[str, Any]:
    return {**alert, "status": "resolved", "endsAt": "2026-12-03T02:05:00Z"}


@pytest.fixture
def hosts(dev_env: Any, pg_url: str, tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Two `serve` and two `worker` processes, each with its own data dir (nothing shared on disk),
    sharing Temporal, the task queue and the audit store (PostgreSQL)."""
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "storm.yaml").write_text(PLAYBOOK)
    common = dict(
        temporal_address=dev_env.client.service_client.config.target_host,
        task_queue=f"tq-{uuid.uuid4()}",
        playbooks_dir=tmp_path / "playbooks",
        policies_dir=ROOT / "policies",
        alertmanager_token=TOKEN,
        envelope_key=ENVELOPE_KEY,
        audit_url=pg_url,
        log_level="WARNING",
    )
    services: list[Service] = []
    urls: list[str] = []
    try:
        for n in range(2):
            worker_port = free_port()
            env = base_env(**common, data_dir=tmp_path / f"worker{n}", worker_metrics_port=worker_port)
            services.append(Service(["worker"], env, tmp_path / "logs", f"worker{n}"))
            port = free_port()
            env = base_env(**common, data_dir=tmp_path / f"serve{n}", http_port=port)
            services.append(Service(["serve"], env, tmp_path / "logs", f"serve{n}"))
            urls.append(f"http://127.0.0.1:{port}")
        for n, service in enumerate(services):
            url = urls[n // 2] if service.args == ["serve"] else None
            if url:
                wait_until(lambda u=url: _ready(u), 60, f"{service}")
        yield urls, base_env(**common, data_dir=tmp_path / "cli")
    finally:
        for service in services:
            service.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def test_storm_across_two_front_doors_one_chain(hosts: tuple[list[str], dict[str, str]], dev_env: Any) -> None:
    urls, env = hosts
    alerts = [firing(f"{n:016x}", "Storm", starts=STARTS, instance=f"host-{n}") for n in range(FIRING_ONLY + RACED)]
    deliveries: list[tuple[str, dict[str, Any]]] = []
    for n, alert in enumerate(alerts):
        doors = [urls[0], urls[1], urls[n % 2]]
        third = resolved(alert) if n >= FIRING_ONLY else alert
        deliveries += [(doors[0], alert), (doors[1], alert), (doors[2], third)]
    random.Random(14).shuffle(deliveries)

    async with httpx.AsyncClient(timeout=60) as http:
        async def deliver(url: str, alert: dict[str, Any]) -> dict[str, Any]:
            answer = await http.post(f"{url}/alertmanager", json=webhook([alert]), headers=AUTH)
            assert answer.status_code == 200, answer.text
            [outcome] = answer.json()
            return outcome

        outcomes = await asyncio.gather(*(deliver(url, alert) for url, alert in deliveries))

    by_episode: dict[str, list[str]] = defaultdict(list)
    for outcome in outcomes:
        by_episode[outcome["fingerprint"]].append(outcome["outcome"])
    ids = {a["fingerprint"]: episode_id("storm", a["fingerprint"], _starts()) for a in alerts}
    client = dev_env.client

    async def executions(workflow_id: str) -> list[Any]:
        return [w async for w in client.list_workflows(f'WorkflowId = "{workflow_id}"')]

    async def all_closed() -> bool:
        for workflow_id in ids.values():
            for w in await executions(workflow_id):
                if w.status is not None and w.status.name == "RUNNING":
                    return False
        return True

    deadline = asyncio.get_running_loop().time() + 120
    while not await all_closed():
        assert asyncio.get_running_loop().time() < deadline, "runs still open after 120 s"
        await asyncio.sleep(0.5)

    store = open_store(Settings(audit_url=env["PLAYBOOK_BOT_AUDIT_URL"], data_dir=Path(env["PLAYBOOK_BOT_DATA_DIR"])))
    try:
        events = await asyncio.to_thread(store.events)
    finally:
        store.close()
    kinds = Counter((e.run_id, e.kind.value) for e in events)
    fixed = {e.run_id for e in events if e.kind.value == "step_succeeded" and e.step_id == "fix"}

    for n, alert in enumerate(alerts):
        workflow_id = ids[alert["fingerprint"]]
        runs = await executions(workflow_id)
        if n < FIRING_ONLY:
            assert len(runs) == 1, (workflow_id, by_episode[alert["fingerprint"]])
            assert workflow_id in fixed, f"{workflow_id} never fixed"
        else:
            assert len(runs) <= 1, (workflow_id, by_episode[alert["fingerprint"]])
            story = [(e.kind.value, e.step_id, e.details.get("outcome"), e.details.get("status"),
                      e.details.get("reason"), e.details.get("reasons"), e.details.get("accepted")) for e in events
                     if e.run_id == workflow_id or e.details.get("fingerprint") == alert["fingerprint"]]
            assert workflow_id not in fixed, f"resolved episode {workflow_id} was remediated: {story}"
        for _ in runs:
            assert kinds[(workflow_id, "run_started")] == 1, workflow_id
            assert kinds[(workflow_id, "run_finished")] == 1, workflow_id

    result = cli(["audit", "verify"], env, timeout=60)
    assert result.code == 0, str(result)


def _starts() -> Any:
    from datetime import datetime

    return datetime.fromisoformat(STARTS.replace("Z", "+00:00"))
