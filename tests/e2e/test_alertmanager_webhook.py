"""A real Alertmanager posts to the bot's /alertmanager: one run per episode, resolve cancels.

Alertmanager (Debian's prometheus-alertmanager) runs on 127.0.0.1 with clustering off and a
webhook receiver pointing at the front door with the bearer token; alerts are posted to its API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio
from temporalio.client import WorkflowExecutionStatus

from bot.alerts.episodes import episode_id
from bot.audit.store import SqliteAuditStore
from bot.devstack import free_port
from bot.engine.runs import get_status, is_running
from bot.engine.state import RunStatus
from bot.playbook.loader import load_directory
from bot.server import Readiness, create_app
from bot.settings import Settings
from tests.reliability.alertmanager_support import AM_CONFIG, TOKEN, bot_stack, webhook
from tests.waiting import eventually, settled_runs

ROOT = Path(__file__).resolve().parents[2]
STARTS_AT = datetime(2026, 11, 22, 1, 0, tzinfo=timezone.utc)  # the startsAt of `firing()`

PLAYBOOK = """
name: disk-remediation
owner: sre
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="DiskAlmostFull"', 'severity=~"page|critical"']
      params: {instance: "{{ alert.labels.instance }}"}
steps:
  - id: note
    action: core.log
    with: {message: "cleaning {{ params.instance }}"}
    compensate: {action: core.log, with: {message: "undo cleaning {{ params.instance }}"}}
  - id: wait
    action: core.sleep
    with: {duration: 10m}
"""

MORE_PLAYBOOKS = """
name: flappy-note
params:
  host: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="Flappy"']
      params: {host: "{{ alert.labels.instance }}"}
      on_resolved: continue
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
---
name: typed
params:
  shards: {type: integer}
triggers:
  alertmanager:
    - matchers: ['alertname="Typed"']
      params: {shards: "{{ alert.labels.shards }}"}
steps:
  - {id: note, action: core.log, with: {message: "{{ params.shards }}"}}
"""


@pytest_asyncio.fixture
async def stack(dev_env, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Worker + front door (real HTTP) + a real Alertmanager wired to it."""
    playbooks = {"disk": PLAYBOOK, **{f"more-{k}": text for k, text in enumerate(MORE_PLAYBOOKS.split("---"))}}
    async with bot_stack(dev_env.client, tmp_path, playbooks, alertmanager_config=AM_CONFIG) as s:
        assert s.am is not None
        yield {
            "settings": s.settings,
            "client": s.http,
            "am": s.am.url,
            "bot": s.url,
            "temporal": s.temporal,
            "audit": s.audit,
        }


def alert(instance: str, starts: datetime, ends: datetime | None = None, **labels: str) -> dict[str, Any]:
    body = {
        "labels": {"alertname": "DiskAlmostFull", "severity": "page", "instance": instance, **labels},
        "annotations": {"summary": f"{instance} disk 95% full"},
        "startsAt": starts.isoformat(),
    }
    if ends:
        body["endsAt"] = ends.isoformat()
    return body


def outcomes(store: SqliteAuditStore, fingerprint: str) -> list[str]:
    return [
        e.details["outcome"]
        for e in store.events()
        if e.kind.value == "alert_outcome" and e.details.get("fingerprint") == fingerprint
    ]


async def fired(stack: dict[str, Any]) -> tuple[str, datetime, str, str]:
    """An alert of a new instance posted to Alertmanager, once its run started: (instance,
    startsAt, Alertmanager's fingerprint, the run id)."""
    client, am = stack["client"], stack["am"]
    starts = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=5)
    instance = f"db-{uuid.uuid4().hex[:6]}"
    assert (await client.post(f"{am}/api/v2/alerts", json=[alert(instance, starts)])).status_code == 200

    async def fingerprint() -> str | None:
        alerts = (await client.get(f"{am}/api/v2/alerts", params={"filter": f'instance="{instance}"'})).json()
        return alerts[0]["fingerprint"] if alerts else None

    fp = await eventually(fingerprint, what="alert in Alertmanager")
    await eventually(lambda: _async(outcomes(stack["audit"], fp)[:1] == ["started"]), what="run started")
    return instance, starts, fp, episode_id("disk-remediation", fp, starts)


async def test_episode_runs_once_through_repeats_and_peers_then_resolve_cancels(stack):
    client, am, store = stack["client"], stack["am"], stack["audit"]
    instance, starts, fp, run_id = await fired(stack)
    # repeat_interval (2 s) re-delivers the same alert: it attaches, it does not start again
    await eventually(lambda: _async("attached" in outcomes(store, fp)), timeout=15, what="a repeat delivery")

    # an HA peer posts the same notification: still the same run
    peer = await client.post(
        f"{stack['bot']}/alertmanager",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json=webhook([{**alert(instance, starts), "status": "firing", "fingerprint": fp, "endsAt": "0001-01-01T00:00:00Z",
                       "generatorURL": ""}]),
    )
    assert peer.status_code == 200, peer.text
    assert [(o["outcome"], o["run_id"]) for o in peer.json()] == [("attached", run_id)]
    runs = [w async for w in stack["temporal"].list_workflows(f'WorkflowId = "{run_id}"')]
    assert len(runs) == 1

    status = await get_status(stack["temporal"], run_id)
    assert status.trigger == "alertmanager" and status.requested_by == "alertmanager"
    assert status.params == {"instance": instance}

    # resolve: Alertmanager sends the resolved notification, the run is cancelled and undone
    ended = datetime.now(timezone.utc)
    assert (await client.post(f"{am}/api/v2/alerts", json=[alert(instance, starts, ends=ended)])).status_code == 200

    # the run's result, not its status query: the state reads final a moment before the execution
    # closes (its last audit flush), and a delivery in that moment rightly attaches
    handle = stack["temporal"].get_workflow_handle(run_id, result_type=RunStatus)
    final = await asyncio.wait_for(handle.result(), timeout=20)
    execution = (await handle.describe()).run_id
    assert final.state == "compensated"
    assert final.step("note").state == "compensated" and final.step("wait").state == "cancelled"
    # the receiver records its outcome once the cancel request returns, and the run's short undo can
    # finish first: the outcome is on record before Alertmanager has its answer, not before the run ends
    await eventually(lambda: _async("resolved_cancelled" in outcomes(store, fp)), what="the resolve's outcome")

    # the same firing alert re-delivered after its episode ended starts nothing
    late = await client.post(
        f"{stack['bot']}/alertmanager",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json=webhook([{**alert(instance, starts), "status": "firing", "fingerprint": fp, "endsAt": "0001-01-01T00:00:00Z",
                       "generatorURL": ""}]),
    )
    assert [o["outcome"] for o in late.json()] == ["already_handled"]
    latest = await handle.describe()  # the id's latest execution, read directly: still the one that ended
    assert (latest.run_id, latest.status) == (execution, WorkflowExecutionStatus.COMPLETED)


async def test_a_startsat_moved_earlier_by_alertmanager_is_the_same_episode_and_its_resolve_ends_it(stack):
    """Alertmanager keeps the earliest startsAt when copies of one alert merge (an HA Prometheus
    pair whose rule went active at different times, or anyone who can post to its API). Its next
    notification then names an earlier startsAt than the run's: that must not be a second run
    (two restarts of one service), and the resolve, which carries the merged startsAt, must end
    the run that is going, not miss it. Both held before this was fixed: two runs, and the first
    left running after the alert resolved."""
    client, am, store, temporal = stack["client"], stack["am"], stack["audit"], stack["temporal"]
    instance, starts, fp, run_id = await fired(stack)

    earlier = starts - timedelta(seconds=40)  # the HA peer's copy: its rule went active 40 s before
    assert (await client.post(f"{am}/api/v2/alerts", json=[alert(instance, earlier)])).status_code == 200

    def merged_deliveries() -> list[dict[str, Any]]:
        return [e.details for e in store.events() if e.kind.value == "alert_outcome"
                and e.details.get("fingerprint") == fp and "moved this alert's startsAt earlier" in e.details.get("reason", "")]

    [merged] = await eventually(lambda: _async(merged_deliveries()[:1]), timeout=15,
                                what="a notification with the merged (earlier) startsAt")
    assert (merged["outcome"], merged["run_id"]) == ("attached", run_id)
    prefix = f"alert-disk-remediation-{fp}-"
    runs = [w.id async for w in temporal.list_workflows(f'WorkflowId STARTS_WITH "{prefix}"')]
    assert runs == [run_id], f"one alert, one episode: {runs}"

    ended = datetime.now(timezone.utc)
    assert (await client.post(f"{am}/api/v2/alerts", json=[alert(instance, earlier, ends=ended)])).status_code == 200
    final = await asyncio.wait_for(temporal.get_workflow_handle(run_id, result_type=RunStatus).result(), timeout=20)
    assert final.state == "compensated"  # the resolve (startsAt: the merged one) cancelled the run that was going
    await eventually(lambda: _async("resolved_cancelled" in outcomes(store, fp)), what="the resolve's outcome")
    assert "started" not in outcomes(store, fp)[1:]


async def _async(value: Any) -> Any:
    return value


def firing(fingerprint: str, **labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "DiskAlmostFull", "severity": "page", "instance": "x", **labels},
        "annotations": {},
        "startsAt": "2026-11-22T01:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint,
    }


BAD_INPUTS = {
    "no token": ({}, json.dumps(webhook([firing("a1")])), 401),
    "wrong token": ({"Authorization": "Bearer nope"}, json.dumps(webhook([firing("a2")])), 401),
    "not bearer": ({"Authorization": f"Basic {TOKEN}"}, json.dumps(webhook([firing("a3")])), 401),
    "non-ascii token": ({"Authorization": "Bearer café".encode()}, json.dumps(webhook([firing("a8")])), 401),
    "malformed json": (None, '{"version": "4", "alerts": [', 400),
    "version 3": (None, json.dumps(webhook([firing("a4")], version="3")), 400),
    "no labels": (None, json.dumps(webhook([{**firing("a5"), "labels": {}}])), 400),
    "no fingerprint": (None, json.dumps(webhook([{k: v for k, v in firing("a6").items() if k != "fingerprint"}])), 400),
    "too large": (None, json.dumps(webhook([firing("a7", pad="x" * 70_000)])), 413),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
async def test_bad_input_is_refused_and_starts_nothing(stack, case):
    headers, body, expected = BAD_INPUTS[case]
    headers = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
    before = len(stack["audit"].events())
    response = await stack["client"].post(
        f"{stack['bot']}/alertmanager", content=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == expected, response.text
    assert "error" in response.json()
    recorded = [(e.kind.value, e.details.get("operation")) for e in stack["audit"].events()[before:]]
    if expected == 413:  # (refused before the body is read)
        assert recorded == [], "nothing recorded, nothing started"
    else:  # a caller turned away, or an authenticated body refused, is on record, and nothing else
        assert recorded == [("access_refused", "webhook:alertmanager")], recorded
    if expected == 400:  # the sender drops what a 4xx answered: the record says what was refused
        [event] = stack["audit"].events()[before:]
        assert event.details["reason"].startswith("payload refused (400): ")
        again = await stack["client"].post(  # its retry records nothing more
            f"{stack['bot']}/alertmanager", content=body, headers={**headers, "Content-Type": "application/json"})
        assert again.status_code == 400 and len(stack["audit"].events()) == before + 1
    assert not await settled_runs(stack["temporal"], stack["settings"].task_queue)


async def test_unmatched_and_rejected_outcomes_are_reported(stack):
    """Unmatched: no playbook's matchers match. Rejected: a playbook matches but its params cannot
    be made from the alert (a label missing, a label of the wrong type); the reason says which."""
    no_instance = {k: v for k, v in firing("r1")["labels"].items() if k != "instance"}
    response = await stack["client"].post(
        f"{stack['bot']}/alertmanager",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json=webhook([firing("u1", alertname="SomethingElse"), firing("u2", severity="info"),
                      {**firing("r1"), "labels": no_instance}, firing("r2", alertname="Typed", shards="many")]),
    )
    assert response.status_code == 200
    answers = [(o["fingerprint"], o["outcome"], o.get("playbook")) for o in response.json()]
    assert answers == [("u1", "unmatched", None), ("u2", "unmatched", None),
                       ("r1", "rejected", "disk-remediation"), ("r2", "rejected", "typed")]
    reasons = {o["fingerprint"]: o["reason"] for o in response.json() if o["outcome"] == "rejected"}
    template = "template '{{ alert.labels.instance }}'"
    assert reasons["r1"].startswith(f"playbook 'disk-remediation' trigger 0 params: {template}: ")
    assert reasons["r1"].endswith("has no attribute 'instance'") and "Traceback" not in reasons["r1"]
    assert reasons["r2"] == "playbook 'typed' trigger 0 params: param 'shards': expected an integer, got 'many'"
    recorded = {(e.details["fingerprint"], e.details["outcome"]) for e in stack["audit"].events()
                if e.kind.value == "alert_outcome"}
    assert recorded == {("u1", "unmatched"), ("u2", "unmatched"), ("r1", "rejected"), ("r2", "rejected")}
    for playbook, fingerprint in [("disk-remediation", "r1"), ("typed", "r2")]:  # by id: no run at all
        assert await is_running(stack["temporal"], episode_id(playbook, fingerprint, STARTS_AT)) is None


def post(stack, alerts: list[dict[str, Any]]):
    return stack["client"].post(
        f"{stack['bot']}/alertmanager", headers={"Authorization": f"Bearer {TOKEN}"}, json=webhook(alerts)
    )


async def test_resolved_outcomes_and_rejected_params(stack):
    fp = uuid.uuid4().hex[:16]
    flappy = firing(fp, alertname="Flappy", instance="web-1")
    started = (await post(stack, [flappy])).json()
    assert [o["outcome"] for o in started] == ["started"]
    resolved = {**flappy, "status": "resolved", "endsAt": "2026-11-22T01:05:00Z"}
    ignored = (await post(stack, [resolved])).json()
    assert [(o["outcome"], o["run_id"]) for o in ignored] == [("resolved_ignored", started[0]["run_id"])]
    status = await get_status(stack["temporal"], started[0]["run_id"])
    assert status.state == "running", "on_resolved: continue leaves the run going"
    await stack["temporal"].get_workflow_handle(started[0]["run_id"]).cancel()

    never = {**firing(uuid.uuid4().hex[:16]), "status": "resolved", "endsAt": "2026-11-22T01:05:00Z"}
    assert [o["outcome"] for o in (await post(stack, [never])).json()] == ["resolved_no_run"]

    typed = (await post(stack, [firing(uuid.uuid4().hex[:16], alertname="Typed", shards="many")])).json()
    assert [o["outcome"] for o in typed] == ["rejected"]
    assert "shards" in typed[0]["reason"]


async def test_temporal_down_is_a_503_and_the_retry_starts_exactly_one_run(tmp_path: Path):
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from bot.alerts.receiver import AlertDeps, AlertReceiver
    from bot.devstack import DevServer
    from bot.policy.engine import make_engine

    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "disk.yaml").write_text(PLAYBOOK)
    catalog = load_directory(tmp_path / "playbooks")
    server = DevServer(tmp_path / "temporal", port=free_port(), ui_port=free_port())
    await server.start()
    policy = make_engine(Settings(policies_dir=ROOT / "policies"))
    await policy.load()
    store = SqliteAuditStore(tmp_path / "audit.db")
    try:
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        receiver = AlertReceiver(AlertDeps(client, "no-worker-queue", lambda: catalog, policy, store, TOKEN))
        app = create_app(Readiness(), [receiver.router()])
        body = webhook([firing("f00d", instance="db9")])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot") as http:
            await server.stop()
            down = await http.post("/alertmanager", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            assert down.status_code == 503, down.text
            await server.start()  # same port, same database
            first = await http.post("/alertmanager", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            again = await http.post("/alertmanager", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert [o["outcome"] for o in first.json()] == ["started"]
        assert [o["outcome"] for o in again.json()] == ["attached"]
        run_id = first.json()[0]["run_id"]
        assert len([w async for w in client.list_workflows(f'WorkflowId = "{run_id}"')]) == 1
    finally:
        await policy.close()
        store.close()
        await server.stop()


async def test_a_firing_delivery_after_its_resolved_one_starts_nothing(stack):
    fp = uuid.uuid4().hex[:16]
    firing_alert = firing(fp, instance="late-1")
    resolved = {**firing_alert, "status": "resolved", "endsAt": "2026-11-22T01:05:00Z"}
    assert [o["outcome"] for o in (await post(stack, [resolved])).json()] == ["resolved_no_run"]
    late = (await post(stack, [firing_alert])).json()
    assert [(o["outcome"], o.get("reason")) for o in late] == [("already_handled", "the alert was already resolved")]
    run_id = episode_id("disk-remediation", fp, STARTS_AT)
    assert await is_running(stack["temporal"], run_id) is None, "by its id, not the listing (which lags a start)"


async def test_a_replica_whose_start_policy_refuses_still_attaches_to_a_running_episode(stack):
    from bot.alerts.receiver import AlertDeps, AlertReceiver
    from bot.policy.models import Verdict

    class Refusing:
        async def start(self, input: dict[str, Any]) -> Verdict:
            return Verdict(allow=False, reasons=["changed its mind"])

    fp = uuid.uuid4().hex[:16]
    body = [firing(fp, instance="replica-1")]
    started = (await post(stack, body)).json()
    assert [o["outcome"] for o in started] == ["started"]
    catalog = load_directory(stack["settings"].playbooks_dir)
    other = AlertReceiver(AlertDeps(stack["temporal"], stack["settings"].task_queue, lambda: catalog, Refusing(), None, TOKEN))
    app = create_app(Readiness(), [other.router()])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as http:
        again = await http.post("/alertmanager", json=webhook(body), headers={"Authorization": f"Bearer {TOKEN}"})
        fresh = await http.post(
            "/alertmanager", json=webhook([firing(uuid.uuid4().hex[:16], instance="replica-2")]),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert [(o["outcome"], o["run_id"]) for o in again.json()] == [("attached", started[0]["run_id"])]
    assert [o["outcome"] for o in fresh.json()] == ["rejected"]
    assert "changed its mind" in fresh.json()[0]["reason"]
    await stack["temporal"].get_workflow_handle(started[0]["run_id"]).cancel()
