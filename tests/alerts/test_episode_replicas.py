"""Two front doors on one audit store and one Temporal decide an episode together: a resolved
delivery on one stops a firing delivery on the other, concurrent deliveries never remediate an
episode resolved before its claim, and an episode whose run Temporal has forgotten starts again
only when its trigger says `on_rerun: start`.

Real dev server, the real worker and front doors on real HTTP (tests/reliability's bot_stack),
the real SQLite file shared by both doors' stores."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio

from bot.alerts.episodes import episode_id
from bot.alerts.receiver import AlertDeps, AlertReceiver
from bot.audit.events import AuditEvent, EventKind, format_ts
from bot.engine.runs import is_running
from bot.engine.state import RunStatus
from bot.identity.keys import front_door_keyring
from bot.server import Readiness, create_app
from tests.engine.support import wait_for_state
from tests.reliability.alertmanager_support import TOKEN, BotStack, bot_stack, firing, webhook

STARTS = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)  # firing()'s startsAt
WAIT = 120  # generous: a loaded machine

PLAYBOOKS = {
    "heal": """
name: heal
owner: sre
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="Heal"']
      params: {instance: "{{ alert.labels.instance }}"}
steps:
  - id: note
    action: core.log
    with: {message: "healing {{ params.instance }}"}
    compensate: {action: core.log, with: {message: "undo {{ params.instance }}"}}
  - {id: wait, action: core.sleep, with: {duration: 10m}}
""",
    "migrate": """
name: migrate
owner: sre
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="Migrate"']
      params: {instance: "{{ alert.labels.instance }}"}
      on_resolved: continue
    - matchers: ['alertname="MigrateOther"']
      params: {instance: "{{ alert.labels.instance }}"}
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
""",
    "heal-again": """
name: heal-again
owner: sre
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="HealAgain"', 'tier="canary"']
      params: {instance: "{{ alert.labels.instance }}"}
    - matchers: ['alertname="HealAgain"']
      params: {instance: "{{ alert.labels.instance }}"}
      on_rerun: start
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
""",
    "guard": """
name: guard
owner: sre
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="Guard"']
      params: {instance: "{{ alert.labels.instance }}"}
concurrency: {key: "guard-{{ params.instance }}", on_busy: refuse}
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
""",
}


@pytest_asyncio.fixture
async def stack(dev_env, tmp_path: Path) -> AsyncIterator[BotStack]:
    async with bot_stack(dev_env.client, tmp_path, PLAYBOOKS) as s:
        yield s


def resolved(alert: dict[str, Any]) -> dict[str, Any]:
    return {**alert, "status": "resolved", "endsAt": "2026-11-22T01:05:00Z"}


async def outcome(stack: BotStack, alert: dict[str, Any], url: str | None = None) -> dict[str, Any]:
    response = await stack.deliver(webhook([alert]), url=url)
    assert response.status_code == 200, response.text
    [answer] = response.json()
    return answer


async def final_state(stack: BotStack, run_id: str) -> str:
    handle = stack.temporal.get_workflow_handle(run_id, result_type=RunStatus)
    return (await asyncio.wait_for(handle.result(), timeout=WAIT)).state


async def test_firing_after_resolved_on_another_front_door_starts_nothing(stack: BotStack):
    other = await stack.replica()
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Heal", instance="a-1")
    assert (await outcome(stack, resolved(alert)))["outcome"] == "resolved_no_run"
    late = await outcome(stack, alert, url=other.url)
    assert (late["outcome"], late["reason"]) == ("already_handled", "the alert was already resolved")
    assert await is_running(stack.temporal, episode_id("heal", fp, STARTS)) is None, "never a run"


async def test_racing_resolved_and_firing_deliveries_never_remediate_a_resolved_episode(stack: BotStack):
    """Per episode, two firing deliveries and one resolved, spread over both front doors in a
    random order with random small delays, all episodes at once."""
    other = await stack.replica()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    episodes = [uuid.uuid4().hex[:16] for _ in range(16)]

    async def deliver(alert: dict[str, Any], url: str) -> dict[str, Any]:
        await asyncio.sleep(rng.uniform(0, 0.6))
        return await outcome(stack, alert, url=url)

    jobs: list[tuple[str, Any]] = []
    for fp in episodes:
        alert = firing(fp, "Heal", instance=f"i-{fp[:4]}")
        for body in (alert, alert, resolved(alert)):
            jobs.append((fp, deliver(body, rng.choice([stack.url, other.url]))))
    rng.shuffle(jobs)
    answers = await asyncio.gather(*(job for _, job in jobs))

    started_runs = 0
    for fp in episodes:
        run_id = episode_id("heal", fp, STARTS)
        mine = [a for (f, _), a in zip(jobs, answers) if f == fp]
        fired = [a for a in mine if a["status"] == "firing"]
        [resolve] = [a for a in mine if a["status"] == "resolved"]
        episode = stack.audit.episode(run_id)
        assert episode.resolved_at is not None, f"seed {seed}: {fp}"
        starts = [a for a in fired if a["outcome"] == "started"]
        assert len(starts) <= 1, f"seed {seed}: two starts for one episode: {mine}"
        running = await is_running(stack.temporal, run_id)
        if not starts:
            assert running is None, f"seed {seed}: a run exists that nobody reported started: {mine}"
            continue
        started_runs += 1
        # A run exists: its claim came before the resolve, and the resolve cancelled it, from
        # whichever delivery saw the other's write.
        assert episode.claimed_at is not None and episode.claimed_at <= episode.resolved_at, f"seed {seed}: {fp}"
        assert await final_state(stack, run_id) in ("compensated", "cancelled"), f"seed {seed}: {mine}"
        cancelled_by = [resolve["outcome"] == "resolved_cancelled", starts[0].get("resolved") == "cancelled",
                        any("its run was cancelled" in (a.get("reason") or "") for a in fired)]
        assert any(cancelled_by), f"seed {seed}: no delivery says it cancelled the run: {mine}"
    # Not an assertion on timing: a note on what this run of the race exercised.
    print(f"seed {seed}: {started_runs} of {len(episodes)} episodes were claimed before their resolve")


class ResolvingBetweenClaimAndStart(AlertReceiver):
    """A front door that, holding the claim, lets the other front door's resolved delivery land
    just before it starts the run: the narrowest window of the race, made deterministic."""

    def __init__(self, deps: AlertDeps, stack: BotStack, alert: dict[str, Any]) -> None:
        super().__init__(deps)
        self.stack, self.alert, self.resolve_answer = stack, alert, None

    async def _start(self, alert, match, trigger, claim, asked):  # type: ignore[no-untyped-def]
        if claim is not None:
            self.resolve_answer = await outcome(self.stack, resolved(self.alert))
        return await super()._start(alert, match, trigger, claim, asked)


async def test_a_resolve_landing_between_claim_and_start_cancels_the_run(stack: BotStack):
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Heal", instance="w-1")
    deps = AlertDeps(stack.temporal, stack.task_queue, lambda: stack.catalog, stack.policy, stack.audit, TOKEN,
                     keyring=front_door_keyring(stack.settings))
    receiver = ResolvingBetweenClaimAndStart(deps, stack, alert)
    app = create_app(Readiness(), [receiver.router()])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door") as http:
        answer = await http.post("/alertmanager", json=webhook([alert]), headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    [started] = answer.json()
    assert receiver.resolve_answer is not None
    assert (receiver.resolve_answer["outcome"], receiver.resolve_answer["run_id"]) == ("resolved_no_run", None), (
        "the resolve found the claim but no run yet")
    assert (started["outcome"], started["resolved"]) == ("started", "cancelled"), repr(started)
    assert "resolved while its run started" in started["reason"]
    assert await final_state(stack, started["run_id"]) == "compensated"
    recorded = [e.details for e in stack.audit.events() if e.kind is EventKind.alert_outcome
                and e.details.get("fingerprint") == fp]
    assert [(d["status"], d["outcome"], d.get("resolved")) for d in recorded] == [
        ("resolved", "resolved_no_run", None), ("firing", "started", "cancelled")]


def ran_and_forgotten(stack: BotStack, run_id: str, fp: str, playbook: str,
                      claimed: timedelta = timedelta(days=-2)) -> None:
    """The store remembers the episode's run (claimed two days ago, or `claimed` from now; started;
    its `started` outcome recorded) while Temporal has no such workflow id: what Temporal's
    retention leaves behind (or, claimed recently, an operator's delete or a lost Temporal)."""
    stack.audit.claim_episode(run_id)
    stack.audit.episode_started(run_id, 1)
    claimed_at(stack, run_id, datetime.now(UTC) + claimed)
    key = f"{playbook}:firing:{STARTS.isoformat()}:started"
    stack.audit.append([AuditEvent(
        event_id=f"alert:{fp}:alert_outcome:{key}", ts=datetime.now(UTC), run_id=run_id, step_id=None,
        kind=EventKind.alert_outcome, actor="alertmanager",
        details={"fingerprint": fp, "status": "firing", "playbook": playbook, "outcome": "started", "run_id": run_id},
    )])


def claimed_at(stack: BotStack, run_id: str, when: datetime) -> None:
    """The episode's claim as stamped by another clock (the store claims at its own now only)."""
    with sqlite3.connect(stack.audit.path) as db:
        db.execute("UPDATE episodes SET claimed_at = ? WHERE episode_id = ?", (format_ts(when), run_id))


async def test_an_episode_claimed_moments_ago_that_temporal_lacks_reruns_once_the_hint_is_stale(stack: BotStack,
                                                                                               monkeypatch):
    """A claim from moments ago is trusted to be running for KNOWN_FRESH (the store says whether
    it ended, Temporal is not asked); after that Temporal says it has no such run, and
    `on_rerun: start` starts it again."""
    monkeypatch.setattr(AlertReceiver, "KNOWN_FRESH", 1.0)
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal-again", fp, STARTS)
    ran_and_forgotten(stack, run_id, fp, "heal-again", claimed=timedelta(0))
    alert = firing(fp, "HealAgain", instance="r-6")
    assert (await outcome(stack, alert))["outcome"] == "attached"
    await asyncio.sleep(1.1)
    again = await outcome(stack, alert)
    assert (again["outcome"], again.get("rerun")) == ("started", 2), again


async def test_a_claim_stamped_by_a_clock_ahead_of_ours_is_no_reason_to_skip_temporal(stack: BotStack, monkeypatch):
    """Red team (stop 41): a claim whose time is in our future was taken as claimed just now on
    every rebuild of the hint, each after Temporal had said it has no such run: a rerun waited for
    the other clock (minutes, or for ever). Now Temporal is asked, and the rerun starts."""
    monkeypatch.setattr(AlertReceiver, "KNOWN_FRESH", 1.0)
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal-again", fp, STARTS)
    ran_and_forgotten(stack, run_id, fp, "heal-again", claimed=timedelta(minutes=3))
    again = await outcome(stack, firing(fp, "HealAgain", instance="r-7"))
    assert (again["outcome"], again.get("rerun")) == ("started", 2), again


async def test_an_earlier_executions_end_is_not_read_as_the_reruns(stack: BotStack):
    """The store reads only ends recorded since the run was known: the episode's earlier run
    ended 11 minutes ago, and its rerun, running now, reads attached."""
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal-again", fp, STARTS)
    ran_and_forgotten(stack, run_id, fp, "heal-again")
    stack.audit.append([AuditEvent(event_id=f"{run_id}/first:run:run_finished:completed",
                                   ts=datetime.now(UTC) - timedelta(minutes=11), run_id=run_id, step_id=None,
                                   kind=EventKind.run_finished, actor="system", details={"state": "completed"})])
    alert = firing(fp, "HealAgain", instance="r-8")
    again = await outcome(stack, alert)
    assert (again["outcome"], again.get("rerun")) == ("started", 2), again
    assert (await outcome(stack, alert))["outcome"] == "attached"


async def test_an_episode_temporal_forgot_is_already_handled_by_default(stack: BotStack):
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal", fp, STARTS)
    ran_and_forgotten(stack, run_id, fp, "heal")
    again = await outcome(stack, firing(fp, "Heal", instance="r-1"))
    assert again["outcome"] == "already_handled" and "on_rerun: already_handled" in again["reason"], again
    assert await is_running(stack.temporal, run_id) is None, "nothing started"
    assert stack.audit.episode(run_id).runs == 1


async def test_on_rerun_start_runs_a_forgotten_episode_again_and_audits_it(stack: BotStack):
    other = await stack.replica()
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal-again", fp, STARTS)
    ran_and_forgotten(stack, run_id, fp, "heal-again")
    alert = firing(fp, "HealAgain", instance="r-2")
    again = await outcome(stack, alert)
    assert (again["outcome"], again["run_id"], again["rerun"]) == ("started", run_id, 2), again
    assert await is_running(stack.temporal, run_id) is True
    episode = stack.audit.episode(run_id)
    assert (episode.runs, episode.started) == (2, True)
    # the rerun's own outcome is on the record next to the first run's, not dropped as its duplicate
    started = [e for e in stack.audit.events() if e.kind is EventKind.alert_outcome
               and e.details.get("fingerprint") == fp and e.details["outcome"] == "started"]
    assert [e.details.get("rerun") for e in started] == [None, 2]
    # another delivery, on either door, attaches to the new run: one rerun, not one per delivery
    assert (await outcome(stack, alert, url=other.url))["outcome"] == "attached"
    assert stack.audit.episode(run_id).runs == 2
    gone = await outcome(stack, resolved(alert), url=other.url)
    assert gone["outcome"] == "resolved_cancelled"
    assert await final_state(stack, run_id) in ("cancelled", "compensated")


async def test_a_copy_in_flight_taken_by_another_trigger_does_not_decide_the_rerun(stack: BotStack, monkeypatch):
    """Red-team (stop 40): a "copy" of a forgotten episode posted with labels another trigger takes
    (its on_rerun: already_handled) was decided while the real delivery (on_rerun: start) waited
    for it, and the real one shared its already_handled: no rerun. Which trigger took a delivery
    is its own; only a delivery taken by the same trigger is waited for."""
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal-again", fp, STARTS)
    ran_and_forgotten(stack, run_id, fp, "heal-again")
    real = firing(fp, "HealAgain", instance="r-3")
    hostile = {**real, "labels": {**real["labels"], "tier": "canary"}}
    read = stack.audit.episode
    monkeypatch.setattr(stack.audit, "episode", lambda e: time.sleep(0.3) or read(e))  # decisions take a while

    async def real_a_moment_later() -> dict[str, Any]:
        await asyncio.sleep(0.1)
        return await outcome(stack, real)

    copy, answer = await asyncio.gather(outcome(stack, hostile), real_a_moment_later())

    assert copy["outcome"] == "already_handled" and "on_rerun" in copy["reason"]
    assert (answer["outcome"], answer.get("rerun")) == ("started", 2), answer


def age_claim(stack: BotStack, run_id: str, by: timedelta) -> None:
    conn = sqlite3.connect(stack.audit.path, isolation_level=None, timeout=30)
    try:
        conn.execute("UPDATE episodes SET claimed_at = ? WHERE episode_id = ?",
                     (format_ts(datetime.now(UTC) - by), run_id))
    finally:
        conn.close()


async def test_a_claimer_that_died_before_starting_is_taken_over(stack: BotStack):
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal", fp, STARTS)
    assert stack.audit.claim_episode(run_id).claimed  # a front door claimed it, then died
    alert = firing(fp, "Heal", instance="d-1")
    # While the claim is fresh, a delivery waits for its start, then asks for a retry (503).
    deps = AlertDeps(stack.temporal, stack.task_queue, lambda: stack.catalog, stack.policy, stack.audit, TOKEN,
                     keyring=front_door_keyring(stack.settings))
    impatient = AlertReceiver(deps)
    impatient.PENDING_WAIT = 0.3
    app = create_app(Readiness(), [impatient.router()])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door") as http:
        pending = await http.post("/alertmanager", json=webhook([alert]), headers={"Authorization": f"Bearer {TOKEN}"})
    assert pending.status_code == 503 and "has not started it yet" in pending.json()["error"], pending.text
    assert await is_running(stack.temporal, run_id) is None
    # Once the claim is older than the stale limit, the next delivery takes it over and starts.
    age_claim(stack, run_id, timedelta(seconds=AlertReceiver.CLAIM_STALE_AFTER + 60))
    taken = await outcome(stack, alert)
    assert (taken["outcome"], taken["run_id"]) == ("started", run_id) and "rerun" not in taken, taken
    assert (stack.audit.episode(run_id).runs, stack.audit.episode(run_id).started) == (1, True)
    assert (await outcome(stack, resolved(alert)))["outcome"] == "resolved_cancelled"
    assert await final_state(stack, run_id) == "compensated"


def door(stack: BotStack, audit: Any) -> httpx.AsyncClient:
    """A front door of its own in this process (audit None: one from before episodes were stored)."""
    deps = AlertDeps(stack.temporal, stack.task_queue, lambda: stack.catalog, stack.policy, audit, TOKEN,
                     keyring=front_door_keyring(stack.settings))
    app = create_app(Readiness(), [AlertReceiver(deps).router()])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door",
                             headers={"Authorization": f"Bearer {TOKEN}"})


async def test_a_run_the_store_never_claimed_is_still_cancelled_by_the_resolve(stack: BotStack):
    """Started before the store kept episodes (or through a front door with a store of its own):
    the episode reads runs=0, and the resolve still asks Temporal and cancels the run."""
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Heal", instance="old-1")
    async with door(stack, None) as old:
        [started] = (await old.post("/alertmanager", json=webhook([alert]))).json()
    assert started["outcome"] == "started" and stack.audit.episode(started["run_id"]).runs == 0
    assert (await outcome(stack, resolved(alert)))["outcome"] == "resolved_cancelled"
    assert await final_state(stack, started["run_id"]) == "compensated"


async def test_a_claim_that_meets_a_run_the_store_never_claimed_attaches_and_records_it(stack: BotStack):
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Heal", instance="old-2")
    async with door(stack, None) as old:
        [started] = (await old.post("/alertmanager", json=webhook([alert]))).json()
    again = await outcome(stack, alert)  # the store's claim meets Temporal's run
    assert (again["outcome"], again["run_id"]) == ("attached", started["run_id"])
    episode = stack.audit.episode(started["run_id"])
    assert (episode.runs, episode.started) == (1, True), "the episode now knows its run"
    assert (await outcome(stack, resolved(alert)))["outcome"] == "resolved_cancelled"
    assert await final_state(stack, started["run_id"]) == "compensated"


async def test_a_resolve_recorded_before_episodes_were_stored_still_stops_a_firing_delivery(stack: BotStack):
    """A v1 audit file knows a resolve only as its `resolved_no_run` outcome event."""
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal", fp, STARTS)
    key = f"heal:resolved:{STARTS.isoformat()}:resolved_no_run"
    stack.audit.append([AuditEvent(
        event_id=f"alert:{fp}:alert_outcome:{key}", ts=datetime.now(UTC), run_id=None, step_id=None,
        kind=EventKind.alert_outcome, actor="alertmanager",
        details={"fingerprint": fp, "status": "resolved", "playbook": "heal", "outcome": "resolved_no_run"},
    )])
    late = await outcome(stack, firing(fp, "Heal", instance="v1-1"))
    assert (late["outcome"], late["reason"]) == ("already_handled", "the alert was already resolved")
    assert stack.audit.episode(run_id).resolved_at is not None, "carried over into the episode table"
    assert await is_running(stack.temporal, run_id) is None


# Alertmanager keeps the earliest startsAt when copies of one alert merge: its next notification
# can name an earlier startsAt than the run's (tests/e2e/test_alertmanager_webhook.py runs this
# against the real Alertmanager; here the deliveries are spread over two front doors).
EARLIER = "2026-11-22T00:59:20Z"


async def test_a_merged_earlier_startsat_on_another_front_door_attaches_and_its_resolve_ends_the_run(stack: BotStack):
    other = await stack.replica()
    fp = uuid.uuid4().hex[:16]
    first, merged = firing(fp, "Heal", instance="m-1"), firing(fp, "Heal", starts=EARLIER, instance="m-1")
    run_id = episode_id("heal", fp, STARTS)
    assert (await outcome(stack, first))["outcome"] == "started"

    again = await outcome(stack, merged, url=other.url)

    assert (again["outcome"], again["run_id"]) == ("attached", run_id)
    assert "moved this alert's startsAt earlier" in again["reason"]
    earlier_id = episode_id("heal", fp, datetime(2026, 11, 22, 0, 59, 20, tzinfo=UTC))
    assert await is_running(stack.temporal, earlier_id) is None, "a second run of one alert"

    gone = await outcome(stack, resolved(merged))  # the resolve carries the merged startsAt
    assert (gone["outcome"], gone["run_id"]) == ("resolved_cancelled", run_id)
    assert await final_state(stack, run_id) == "compensated"
    late = await outcome(stack, merged, url=other.url)  # a late retry of the merged firing
    assert late["outcome"] == "already_handled"
    assert await is_running(stack.temporal, earlier_id) is None


async def test_a_merged_copy_of_an_episode_holding_its_key_attaches_to_it_not_busy(stack: BotStack):
    """The episode under way holds its playbook's concurrency key (on_busy: refuse). Its merged
    copy (an earlier startsAt) is that episode, not another run wanting the key: attached to it,
    as any other copy, never `busy` with its own run named as the holder. A later episode of the
    alert (a re-fire past the merge window) is another run, and still reads busy."""
    other = await stack.replica()
    fp = uuid.uuid4().hex[:16]
    first = firing(fp, "Guard", instance="g-1")
    run_id = episode_id("guard", fp, STARTS)
    assert (await outcome(stack, first))["outcome"] == "started"
    await wait_for_state(stack.temporal.get_workflow_handle(run_id), lambda s: s.step("wait").state == "running",
                         timeout=WAIT)

    again = await outcome(stack, firing(fp, "Guard", starts=EARLIER, instance="g-1"), url=other.url)

    assert (again["outcome"], again["run_id"]) == ("attached", run_id), again
    assert "moved this alert's startsAt earlier" in again["reason"]
    refire = await outcome(stack, firing(fp, "Guard", starts="2026-11-22T01:10:00Z", instance="g-1"), url=other.url)
    assert (refire["outcome"], refire["holder"]) == ("busy", run_id), refire


async def test_an_episode_seen_before_is_not_taken_for_a_merged_copy_of_a_later_one(stack: BotStack):
    """Red-team (stop 40): episode A's run ended while the alert still fired, and a later episode B
    of the alert holds the key. A repeat of A is A's (its episode was seen), not a merged copy of B:
    its claim would say so, and so does the busy path."""
    other = await stack.replica()
    fp = uuid.uuid4().hex[:16]
    a_id = episode_id("guard", fp, STARTS)
    b_id = episode_id("guard", fp, datetime(2026, 11, 22, 1, 0, 30, tzinfo=UTC))
    a = firing(fp, "Guard", instance="g-2")
    assert (await outcome(stack, a))["outcome"] == "started"
    await stack.temporal.get_workflow_handle(a_id).terminate("its run ended (the alert still fires)")
    b = await outcome(stack, firing(fp, "Guard", starts="2026-11-22T01:00:30Z", instance="g-2"))
    assert (b["outcome"], b["run_id"]) == ("started", b_id)
    await wait_for_state(stack.temporal.get_workflow_handle(b_id), lambda s: s.step("wait").state == "running",
                         timeout=WAIT)

    again = await outcome(stack, a, url=other.url)

    assert (again["outcome"], again.get("holder")) == ("busy", b_id), again
    assert "moved this alert's startsAt earlier" not in again.get("reason", "")


async def test_a_hostile_copy_in_flight_does_not_decide_a_real_delivery_of_its_episode(stack: BotStack, monkeypatch):
    """Red-team (stop 40): whoever holds the webhook token posts a "copy" of a real alert (its
    fingerprint and startsAt) with other labels, whose concurrency key another run holds. A real
    delivery arriving while that copy is decided must not share its `busy`: what the labels
    decide (the key, the start rule) is each delivery's own. Only the episode's own outcome (its
    run started, found or over) is shared."""
    holder_fp = uuid.uuid4().hex[:16]
    holder = episode_id("guard", holder_fp, STARTS)
    assert (await outcome(stack, firing(holder_fp, "Guard", instance="db-1")))["outcome"] == "started"
    await wait_for_state(stack.temporal.get_workflow_handle(holder), lambda s: s.step("wait").state == "running",
                         timeout=WAIT)
    read = stack.audit.episode
    monkeypatch.setattr(stack.audit, "episode", lambda e: time.sleep(0.3) or read(e))  # decisions take a while
    fp = uuid.uuid4().hex[:16]
    real = firing(fp, "Guard", instance="web-1")
    hostile = {**real, "labels": {**real["labels"], "instance": "db-1"}}  # same episode id, the held key

    async def real_a_moment_later() -> dict[str, Any]:
        await asyncio.sleep(0.1)
        return await outcome(stack, real)

    copy, answer = await asyncio.gather(outcome(stack, hostile), real_a_moment_later())

    assert (copy["outcome"], copy["holder"]) == ("busy", holder)
    assert (answer["outcome"], answer["run_id"]) == ("started", episode_id("guard", fp, STARTS)), answer


async def test_a_resolved_later_episode_does_not_swallow_an_alert_that_began_before_it(stack: BotStack):
    """The attack: through Alertmanager's API (or the webhook token) someone fires and resolves a
    copy of an alert that is still pending on Prometheus (its `for:` not yet over). The real
    notification, whose startsAt is earlier, must still remediate: only an open episode takes it."""
    fp = uuid.uuid4().hex[:16]
    planted = firing(fp, "Heal", instance="p-1")
    assert (await outcome(stack, planted))["outcome"] == "started"
    assert (await outcome(stack, resolved(planted)))["outcome"] == "resolved_cancelled"

    real = await outcome(stack, firing(fp, "Heal", starts=EARLIER, instance="p-1"))

    earlier_id = episode_id("heal", fp, datetime(2026, 11, 22, 0, 59, 20, tzinfo=UTC))
    assert (real["outcome"], real["run_id"]) == ("started", earlier_id)
    assert await is_running(stack.temporal, earlier_id) is True


async def test_a_resolve_ends_the_run_of_a_playbook_whose_matchers_were_edited_since_it_fired(stack: BotStack):
    """Red-team finding (stop 38): an operator narrows a playbook's matchers while its run goes on
    (mid-incident), and the alert's resolve no longer matched it: the run went on remediating a
    resolved alert. The resolve now settles every episode this alert started, matching or not."""
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Heal", instance="e-1")
    run_id = episode_id("heal", fp, STARTS)
    assert (await outcome(stack, alert))["outcome"] == "started"
    edit(stack, "heal", ('alertname="Heal"', 'alertname="HealNow"'))  # the front door reloaded

    answer = await outcome(stack, resolved(alert))

    assert (answer["outcome"], answer["playbook"], answer["run_id"]) == ("resolved_cancelled", "heal", run_id)
    assert "no longer match" in answer["reason"]
    assert await final_state(stack, run_id) == "compensated"
    assert stack.audit.episode(run_id).resolved_at is not None  # a late firing retry starts nothing
    other = firing(uuid.uuid4().hex[:16], "Heal", instance="e-2")  # an alert that never ran: still unmatched
    assert (await outcome(stack, resolved(other)))["outcome"] == "unmatched"


async def test_a_copy_posted_with_a_future_startsat_swallows_no_real_episode(stack: BotStack):
    """Attack (red-team of the merge rule): anyone who can post to Alertmanager's API sends the
    alert's labels with startsAt in 2099. It gets its run (as any posted alert does), but the real
    alert's episodes, each with an earlier startsAt, must still remediate."""
    fp = uuid.uuid4().hex[:16]
    planted = await outcome(stack, firing(fp, "Heal", starts="2099-01-01T00:00:00Z", instance="f-1"))
    assert planted["outcome"] == "started"

    real = await outcome(stack, firing(fp, "Heal", instance="f-1"))

    assert (real["outcome"], real["run_id"]) == ("started", episode_id("heal", fp, STARTS))


async def test_a_resolve_with_a_made_up_startsat_cancels_no_live_run(stack: BotStack):
    """Attack (red-team of the merge rule): a resolve whose own episode was never seen ended the
    latest later episode of the alert whatever its startsAt, so `startsAt: 1970-01-01` with a far
    endsAt cancelled the live run without knowing when it began."""
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Heal", instance="r-1")
    run_id = episode_id("heal", fp, STARTS)
    assert (await outcome(stack, alert))["outcome"] == "started"

    for starts, ends in (("1970-01-01T00:00:00Z", "2099-01-01T00:00:00Z"), ("2026-11-22T00:59:00Z", "2099-01-01T00:00:00Z"),
                         ("1970-01-01T00:00:00Z", "2026-11-22T01:05:00Z")):
        forged = {**firing(fp, "Heal", starts=starts, instance="r-1"), "status": "resolved", "endsAt": ends}
        assert (await outcome(stack, forged))["outcome"] == "resolved_no_run", (starts, ends)
    assert await is_running(stack.temporal, run_id) is True


def edit(stack: BotStack, name: str, *changes: tuple[str, str]) -> None:
    """The front door's catalog as if `name`'s file was edited (each `old` -> `new`) and reloaded."""
    import yaml

    from bot.playbook.loader import LoadedPlaybook
    from bot.playbook.model import Playbook

    before, text = stack.catalog.get(name), PLAYBOOKS[name]
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    edited = Playbook.model_validate(yaml.safe_load(text))
    stack.catalog._by_name[name] = LoadedPlaybook(edited, before.path, edited.content_hash())


async def test_a_resolve_that_no_longer_matches_keeps_the_on_resolved_its_run_started_with(stack: BotStack):
    """Red-team of the edited-away resolve: it cancelled with the playbook's first `cancel`
    trigger, whichever trigger had started the run, so narrowing the matchers of a trigger that
    says `on_resolved: continue` (a migration) aborted its run. The run's memo says which."""
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Migrate", instance="g-1")
    run_id = episode_id("migrate", fp, STARTS)
    assert (await outcome(stack, alert))["outcome"] == "started"
    edit(stack, "migrate", ('alertname="Migrate"', 'alertname="Migrate", severity="critical"'))

    answer = await outcome(stack, resolved(alert))

    assert (answer["outcome"], answer["run_id"]) == ("resolved_ignored", run_id)
    assert "cancel refused" not in answer.get("reason", ""), answer  # ignored by its trigger, not by policy
    assert await is_running(stack.temporal, run_id) is True


async def test_a_resolve_settles_the_run_of_a_playbook_whose_triggers_were_all_removed(stack: BotStack):
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Heal", instance="h-1")
    run_id = episode_id("heal", fp, STARTS)
    assert (await outcome(stack, alert))["outcome"] == "started"
    edit(stack, "heal", ("""triggers:
  alertmanager:
    - matchers: ['alertname="Heal"']
      params: {instance: "{{ alert.labels.instance }}"}
""", ""))

    answer = await outcome(stack, resolved(alert))

    assert (answer["outcome"], answer["run_id"]) == ("resolved_cancelled", run_id)
    assert await final_state(stack, run_id) == "compensated"


async def test_repeats_of_a_merged_startsat_take_the_fast_path(stack: BotStack, monkeypatch):
    """Red-team (performance): a merged copy's repeats (Alertmanager re-sends it every repeat
    interval, each HA peer too) each paid a store read, a policy question, a lock check and a
    claim write, because only the episode's own id was remembered."""
    fp = uuid.uuid4().hex[:16]
    assert (await outcome(stack, firing(fp, "Heal", instance="k-1")))["outcome"] == "started"
    merged = firing(fp, "Heal", starts=EARLIER, instance="k-1")
    assert (await outcome(stack, merged))["outcome"] == "attached"
    claims: list[str] = []
    real = type(stack.audit).claim_episode

    def counted(store: Any, episode_id: str, **kwargs: Any) -> Any:
        claims.append(episode_id)
        return real(store, episode_id, **kwargs)

    monkeypatch.setattr(type(stack.audit), "claim_episode", counted)

    again = await outcome(stack, merged)

    assert (again["outcome"], again["run_id"]) == ("attached", episode_id("heal", fp, STARTS))
    assert "moved this alert's startsAt earlier" in again["reason"]
    assert claims == [], "a repeat of a merged copy went to the store"


async def test_a_merged_copy_remembered_on_a_door_starts_its_own_run_once_the_later_episode_resolved(stack: BotStack):
    """Red-team (third round): the fast path remembered "D is answered as E" and kept answering D
    as E after E was resolved on its own, so on that door the real alert never started again (the
    other doors, asking the store, started it). A remembered mapping now holds only while E runs."""
    fp = uuid.uuid4().hex[:16]
    later, merged = firing(fp, "Heal", instance="p-2"), firing(fp, "Heal", starts=EARLIER, instance="p-2")
    earlier_id = episode_id("heal", fp, datetime(2026, 11, 22, 0, 59, 20, tzinfo=UTC))
    assert (await outcome(stack, later))["outcome"] == "started"
    assert (await outcome(stack, merged))["outcome"] == "attached"
    assert (await outcome(stack, resolved(later)))["outcome"] == "resolved_cancelled"  # E resolved alone

    again = await outcome(stack, merged)

    assert (again["outcome"], again["run_id"]) == ("started", earlier_id)


async def test_a_matching_resolve_keeps_the_on_resolved_its_run_started_with(stack: BotStack):
    """Red-team (third round): the memo was read only for a resolve that matched no trigger; one
    that now matches another trigger of the playbook (a `cancel` one) aborted a run its `continue`
    trigger had started, once that trigger was narrowed."""
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Migrate", instance="m-2")
    run_id = episode_id("migrate", fp, STARTS)
    assert (await outcome(stack, alert))["outcome"] == "started"
    edit(stack, "migrate", ('alertname="Migrate"', 'alertname="Migrate", severity="critical"'),
         ('alertname="MigrateOther"', 'alertname=~"Migrate.*"'))  # now only the cancel trigger matches

    answer = await outcome(stack, resolved(alert))

    assert (answer["outcome"], answer["run_id"]) == ("resolved_ignored", run_id), answer
    assert await is_running(stack.temporal, run_id) is True


def own_door(stack: BotStack, pending_wait: float | None = None) -> httpx.AsyncClient:
    """A front door of its own on the stack's store, policy and Temporal, in this loop (ASGI):
    a test can cancel one of its requests as a shutdown would."""
    deps = AlertDeps(stack.temporal, stack.task_queue, lambda: stack.catalog, stack.policy, stack.audit, TOKEN,
                     keyring=front_door_keyring(stack.settings))
    receiver = AlertReceiver(deps)
    if pending_wait is not None:
        receiver.PENDING_WAIT = pending_wait
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(Readiness(), [receiver.router()])),
                             base_url="http://door", headers={"Authorization": f"Bearer {TOKEN}"})


async def test_a_resolve_recorded_while_the_start_rule_answers_starts_no_run(stack: BotStack, monkeypatch):
    """The episode is claimed while the `start` rule answers; a resolve that lands on another
    front door in between is looked for before the start, so the run never starts (it would
    otherwise start, act, and only then be cancelled)."""
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal", fp, STARTS)
    alert = firing(fp, "Heal", instance="w-9")
    start = stack.policy.start
    resolves: list[dict[str, Any]] = []

    async def resolve_first(doc: Any) -> Any:
        deadline = time.monotonic() + 2
        while stack.audit.episode(run_id).claimed_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        resolves.append(await outcome(stack, resolved(alert)))
        return await start(doc)

    monkeypatch.setattr(stack.policy, "start", resolve_first)
    async with own_door(stack) as http:
        [answer] = (await http.post("/alertmanager", json=webhook([alert]))).json()
    assert [r["outcome"] for r in resolves] == ["resolved_no_run"]
    assert (answer["outcome"], answer["reason"]) == ("already_handled", "the alert was already resolved"), answer
    assert await is_running(stack.temporal, run_id) is None
    episode = stack.audit.episode(run_id)
    assert (episode.runs, episode.claimed_at, episode.resolved_at is not None) == (0, None, True), episode


@pytest.mark.parametrize("refused", [True, False], ids=["refused", "allowed"])
async def test_a_delivery_cancelled_while_its_claim_commits_gives_the_claim_back(stack: BotStack, monkeypatch,
                                                                                  refused: bool):
    """Cancelled (a shutdown) after the rule answered, while its claim is being committed: the
    claim still commits, and the delivery gives it back on its way out, so Alertmanager's retry
    claims and starts at once instead of answering 503 until the claim goes stale (120 s)."""
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal", fp, STARTS)
    alert = firing(fp, "Heal", instance=f"c-{refused}")
    answered, refusing = asyncio.Event(), refused
    start, claim = stack.policy.start, stack.audit.claim_episode

    async def maybe_refused(doc: Any) -> Any:
        verdict = await start(doc)
        answered.set()
        return verdict.model_copy(update={"allow": False, "reasons": ["not tonight"]}) if refusing else verdict

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.6)  # a slow fsync, a busy group
        return claim(*args, **kwargs)

    monkeypatch.setattr(stack.policy, "start", maybe_refused)
    monkeypatch.setattr(stack.audit, "claim_episode", slow_claim)
    async with own_door(stack) as http:
        post = asyncio.create_task(http.post("/alertmanager", json=webhook([alert])))
        await asyncio.wait_for(answered.wait(), 5)
        await asyncio.sleep(0.1)  # waiting for its claim now
        post.cancel()
        with pytest.raises(asyncio.CancelledError):
            await post  # (its way out included)
    held = stack.audit.episode(run_id)
    assert (held.runs, held.claimed_at) == (0, None), held
    refusing = False
    async with own_door(stack, pending_wait=0.5) as http:  # Alertmanager's retry
        retry = await http.post("/alertmanager", json=webhook([alert]))
    assert retry.status_code == 200, retry.text
    assert retry.json()[0]["outcome"] == "started"


async def test_a_refused_delivery_that_takes_over_a_stale_claim_keeps_it_for_the_run_that_exists(
        stack: BotStack, monkeypatch):
    """A claimer stalled past CLAIM_STALE_AFTER and then started the run after all. A delivery the
    rule now refuses takes the stale claim over and finds that run: the claim is recorded as the
    run's start, not given back (given back, the episode would read as never run)."""
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("heal", fp, STARTS)
    alert = firing(fp, "Heal", instance="s-1")
    assert (await outcome(stack, alert))["outcome"] == "started"
    with sqlite3.connect(stack.audit.path) as db:  # the slow claimer's start, not yet on record
        db.execute("UPDATE episodes SET started = 0 WHERE episode_id = ?", (run_id,))
    age_claim(stack, run_id, timedelta(seconds=AlertReceiver.CLAIM_STALE_AFTER + 60))
    start = stack.policy.start

    async def refused(doc: Any) -> Any:
        return (await start(doc)).model_copy(update={"allow": False, "reasons": ["frozen"]})

    monkeypatch.setattr(stack.policy, "start", refused)
    async with own_door(stack) as http:  # a door with no hint of the run
        [answer] = (await http.post("/alertmanager", json=webhook([alert]))).json()
    assert (answer["outcome"], answer["run_id"]) == ("attached", run_id), answer
    episode = stack.audit.episode(run_id)
    assert (episode.runs, episode.started) == (1, True), episode
    assert (await outcome(stack, resolved(alert)))["outcome"] == "resolved_cancelled"
