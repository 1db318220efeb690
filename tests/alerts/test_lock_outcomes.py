"""/alertmanager with per-target locks: a second alert for a held key answers `busy` naming the
holder (on_busy: refuse) or `attached` to the holder's run (on_busy: attach), and starts nothing.
Real dev server, real worker (tests/engine/test_locks.py's rig), the receiver on real HTTP (ASGI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from bot.alerts.receiver import AlertDeps, AlertReceiver
from bot.playbook.loader import Catalog, LoadedPlaybook
from bot.policy.models import Verdict
from tests.engine.support import playbook, wait_for_state
from tests.engine.test_locks import WAIT, Rig, rig  # noqa: F401  (the fixture)
from tests.reliability.alertmanager_support import firing, webhook

TOKEN = "lock-test-token"

PLAYBOOK = """
name: restart-{mode}
params:
  service: {{type: string}}
triggers:
  alertmanager:
    - matchers: ['alertname="Down{mode}"']
      params: {{service: "{{{{ alert.labels.service }}}}"}}
concurrency: {{key: "{{{{ alert.labels.service }}}}", on_busy: {mode}}}
steps:
  - {{id: work, action: t.gate}}
"""


class AllowAll:
    async def start(self, input: dict[str, Any]) -> Verdict:
        return Verdict(allow=True)


async def deliver(stack: Rig, mode: str, fingerprint: str) -> list[dict[str, Any]]:
    pb = playbook(PLAYBOOK.format(mode=mode))  # t.gate is the test's action: no registry check
    loaded = LoadedPlaybook(pb, Path(f"{pb.name}.yaml"), pb.content_hash())
    receiver = AlertReceiver(AlertDeps(
        client=stack.client, task_queue=stack.task_queue, catalog=lambda: Catalog([loaded]),
        policy=AllowAll(), audit=None, token=TOKEN,  # type: ignore[arg-type]
    ))
    app = FastAPI()
    app.include_router(receiver.router())
    body = webhook([firing(fingerprint, f"Down{mode}", service=stack.service)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot") as http:
        answer = await http.post("/alertmanager", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_refuse_answers_busy_naming_the_holder(rig: Rig):  # noqa: F811
    [first] = await deliver(rig, "refuse", "aaa1")
    assert first["outcome"] == "started"
    holder = rig.client.get_workflow_handle(first["run_id"])
    await wait_for_state(holder, lambda s: s.step("work").state == "running", timeout=WAIT)
    [second] = await deliver(rig, "refuse", "bbb2")
    assert second["outcome"] == "busy" and second["holder"] == first["run_id"] and second["run_id"] is None
    assert first["run_id"] in second["reason"]
    rig.gates.open(first["run_id"])
    await holder.result()
    assert rig.gates.started == [first["run_id"]]


async def test_attach_answers_attached_with_the_holders_run(rig: Rig):  # noqa: F811
    [first] = await deliver(rig, "attach", "ccc3")
    holder = rig.client.get_workflow_handle(first["run_id"])
    await wait_for_state(holder, lambda s: s.step("work").state == "running", timeout=WAIT)
    [second] = await deliver(rig, "attach", "ddd4")
    assert (second["outcome"], second["run_id"]) == ("attached", first["run_id"])
    rig.gates.open(first["run_id"])
    await holder.result()
    assert rig.gates.started == [first["run_id"]]
