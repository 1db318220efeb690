"""What the alert path costs in Temporal calls, counted by a client interceptor
(tests/alerts/temporal_calls.py) on a real dev server, front door on real HTTP, worker in its own
process: a new episode's first delivery costs its start, a repeat of an episode this door knows no
call (the audit store says whether its run ended) and one describe once the hint is stale, and a
resolve makes the next firing delivery read the episode again instead of trusting the hint."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator

import pytest_asyncio

from bot.alerts.episodes import episode_id
from bot.alerts.receiver import AlertReceiver
from bot.audit.events import format_ts
from bot.audit.store import AuditUnavailable
from tests.alerts.temporal_calls import TemporalCalls
from tests.waiting import eventually
from tests.reliability.alertmanager_support import BotStack, bot_stack, firing, webhook

STARTS = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)  # firing()'s startsAt
PLAYBOOKS = {
    "hold": """
name: hold
owner: sre
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="Hold"']
      params: {instance: "{{ alert.labels.instance }}"}
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
""",
    "quick": """
name: quick
owner: sre
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="Quick"']
      params: {instance: "{{ alert.labels.instance }}"}
steps:
  - {id: note, action: core.log, with: {message: "quick {{ params.instance }}"}}
""",
}


@pytest_asyncio.fixture
async def counted(dev_env, tmp_path: Path) -> AsyncIterator[tuple[BotStack, TemporalCalls]]:
    calls = TemporalCalls()
    async with bot_stack(calls.client(dev_env.client), tmp_path, PLAYBOOKS, worker="process") as stack:
        yield stack, calls


async def deliver(stack: BotStack, alert: dict[str, Any], url: str | None = None) -> dict[str, Any]:
    response = await stack.deliver(webhook([alert]), url=url)
    assert response.status_code == 200, response.text
    [answer] = response.json()
    return answer


def noted_reads(stack: BotStack, monkeypatch: Any, pause: float = 0.0) -> list[str]:
    """The episode ids the real store is asked for from now on (each read taking `pause` more)."""
    reads: list[str] = []
    read = stack.audit.episode

    def noted(episode: str) -> Any:
        reads.append(episode)
        time.sleep(pause)
        return read(episode)

    monkeypatch.setattr(stack.audit, "episode", noted)
    return reads


def noted_ends(store: Any, monkeypatch: Any, fails: bool = False) -> list[str]:
    """The run ids the real store is asked whether they ended (each refused with `fails`)."""
    asked: list[str] = []
    ended = store.run_ended

    def noted(run_id: str, since: datetime) -> bool:
        asked.append(run_id)
        if fails:
            raise AuditUnavailable("audit store: cannot read it: disk I/O error")
        return ended(run_id, since)

    monkeypatch.setattr(store, "run_ended", noted)
    return asked


async def test_a_new_episode_costs_its_start_and_a_repeat_no_temporal_call(counted, monkeypatch):
    stack, calls = counted
    reads = noted_reads(stack, monkeypatch)
    ends = noted_ends(stack.audit, monkeypatch)
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("hold", fp, STARTS)
    alert = firing(fp, "Hold", instance="a-1")
    calls.clear()
    assert (await deliver(stack, alert))["outcome"] == "started"
    assert calls.made() == [("start_workflow", run_id)]
    assert reads in ([run_id], [run_id] * 2), reads  # (again when the claim committed before the rule answered)
    first = len(reads)
    for _ in range(3):
        calls.clear()
        assert (await deliver(stack, alert))["outcome"] == "attached"
        assert calls.made() == []
    assert len(reads) == first, "a repeat of an episode this door started reads no episode state"
    assert ends == [run_id] * 3, "each repeat asks the store whether the run ended"


async def test_a_repeat_writes_nothing_this_door_already_recorded(counted, monkeypatch):
    """A repeat's receipt and outcome have the first delivery's event ids (natural keys): once this
    door recorded them, a repeat costs no store write (the store would keep the first anyway)."""
    stack, calls = counted
    appended: list[str] = []
    append = stack.audit.append

    def noted(events: Any, **options: Any) -> Any:
        appended.extend(e.event_id for e in events)
        return append(events, **options)

    monkeypatch.setattr(stack.audit, "append", noted)
    fp = uuid.uuid4().hex[:16]
    alert = firing(fp, "Hold", instance="a-8")
    assert (await deliver(stack, alert))["outcome"] == "started"
    first = list(appended)
    assert any(":alert_received:" in i for i in first) and any(":alert_outcome:" in i for i in first), first
    assert (await deliver(stack, alert))["outcome"] == "attached"
    assert [i for i in appended[len(first):] if ":alert_received:" in i] == [], "the receipt is on record"
    assert len(appended) == len(first) + 1, "only the new outcome (attached) is written"
    before = len(appended)
    assert (await deliver(stack, alert))["outcome"] == "attached"
    assert len(appended) == before, "a third delivery writes nothing"
    kinds = [e.kind.value for e in stack.audit.events() if e.details.get("fingerprint") == fp]
    assert kinds.count("alert_outcome") == 2 and kinds.count("alert_received") == 1, kinds
    # Only for KNOWN_FRESH: a store that lost what it had committed gets it again after that.
    monkeypatch.setattr(AlertReceiver, "KNOWN_FRESH", 0.0)
    assert (await deliver(stack, alert))["outcome"] == "attached"
    assert len(appended) == before + 2, "the receipt and the outcome are written again (the store keeps the first)"


async def test_a_repeat_after_the_run_ended_reads_already_handled_from_the_store(counted, monkeypatch):
    """The worker records the run's end in the audit store: a repeat after it says so, and still
    asks Temporal nothing."""
    stack, calls = counted
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("quick", fp, STARTS)
    alert = firing(fp, "Quick", instance="q-1")
    assert (await deliver(stack, alert))["outcome"] == "started"
    await stack.temporal.get_workflow_handle(run_id).result()
    await eventually(lambda: asyncio.to_thread(stack.audit.run_ended, run_id, datetime.now(UTC) - timedelta(hours=1)),
                     what="the run's end recorded")
    ends = noted_ends(stack.audit, monkeypatch)
    calls.clear()
    for _ in range(2):
        answer = await deliver(stack, alert)
        assert (answer["outcome"], answer["run_id"]) == ("already_handled", run_id)
    assert calls.made() == []
    assert ends == [run_id], "once the store said it ended, the hint says so without another read"


async def test_a_run_ended_outside_the_bot_reads_attached_only_while_the_hint_is_fresh(counted, monkeypatch):
    """A run terminated through Temporal itself records no end: a repeat says `attached` for at most
    KNOWN_FRESH, then asks Temporal, which says it ended."""
    stack, calls = counted
    monkeypatch.setattr(AlertReceiver, "KNOWN_FRESH", 3.0)  # start, terminate and a repeat fit in it
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("hold", fp, STARTS)
    alert = firing(fp, "Hold", instance="a-5")
    assert (await deliver(stack, alert))["outcome"] == "started"
    await stack.temporal.get_workflow_handle(run_id).terminate(reason="an operator, outside the bot")
    calls.clear()
    assert (await deliver(stack, alert))["outcome"] == "attached"
    assert calls.made() == []
    await asyncio.sleep(3.1)
    assert (await deliver(stack, alert))["outcome"] == "already_handled"
    assert calls.made() == [("describe_workflow", run_id)]
    calls.clear()
    assert (await deliver(stack, alert))["outcome"] == "already_handled"
    assert calls.made() == [], "what Temporal said is fresh again"


async def test_a_repeat_asks_temporal_when_the_store_cannot_answer(counted, monkeypatch):
    """The store being down costs a repeat one describe, never its answer (a 503 would make
    Alertmanager retry a delivery that needs nothing)."""
    stack, calls = counted
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("hold", fp, STARTS)
    alert = firing(fp, "Hold", instance="a-6")
    assert (await deliver(stack, alert))["outcome"] == "started"
    ends = noted_ends(stack.audit, monkeypatch, fails=True)
    calls.clear()
    assert (await deliver(stack, alert))["outcome"] == "attached"
    assert calls.made() == [("describe_workflow", run_id)] and ends == [run_id]


async def test_a_store_that_hangs_holds_no_repeat_for_its_timeouts(counted, monkeypatch):
    """A store read that outlasts HINT_READ_WAIT is not waited for (a PostgreSQL server gone silent
    holds a read for its TCP timeouts, half a minute): Temporal answers the repeat, and the store is
    not asked again for HINT_READ_PAUSE, so hung reads do not pile up in threads."""
    stack, calls = counted
    monkeypatch.setattr(AlertReceiver, "HINT_READ_WAIT", 0.3)
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("hold", fp, STARTS)
    alert = firing(fp, "Hold", instance="a-8")
    assert (await deliver(stack, alert))["outcome"] == "started"
    released = threading.Event()
    asked: list[str] = []

    def hangs(run_id: str, since: datetime) -> bool:
        asked.append(run_id)
        released.wait(30)
        return False

    monkeypatch.setattr(stack.audit, "run_ended", hangs)
    try:
        for _ in range(2):
            calls.clear()
            began = time.monotonic()
            assert (await deliver(stack, alert))["outcome"] == "attached"
            assert time.monotonic() - began < 5, "the repeat waited for the hung store"
            assert calls.made() == [("describe_workflow", run_id)]
        assert asked == [run_id], "the store was asked again while a read of it hung"
    finally:
        released.set()


async def test_a_repeat_on_a_front_door_that_did_not_start_it_costs_no_temporal_call(counted, monkeypatch):
    """The other door reads the episode as started moments ago: the store says whether its run
    ended. Claimed longer ago than KNOWN_FRESH, Temporal says."""
    stack, calls = counted
    other = await stack.replica()  # same audit file and Temporal: the episode reads as started
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("hold", fp, STARTS)
    alert = firing(fp, "Hold", instance="a-2")
    assert (await deliver(stack, alert))["outcome"] == "started"
    ends = noted_ends(other.audit, monkeypatch)
    calls.clear()
    answer = await deliver(stack, alert, url=other.url)
    assert (answer["outcome"], answer["run_id"]) == ("attached", run_id)
    assert calls.made() == [] and ends == [run_id]
    calls.clear()  # and now the other door knows it too
    assert (await deliver(stack, alert, url=other.url))["outcome"] == "attached"
    assert calls.made() == [] and ends == [run_id] * 2

    late = firing(uuid.uuid4().hex[:16], "Hold", instance="a-7")
    assert (await deliver(stack, late))["outcome"] == "started"
    with sqlite3.connect(stack.audit.path) as db:  # claimed two minutes ago, by the first door's clock
        db.execute("UPDATE episodes SET claimed_at = ? WHERE episode_id = ?",
                   (format_ts(datetime.now(UTC) - timedelta(minutes=2)), episode_id("hold", late["fingerprint"], STARTS)))
    calls.clear()
    answer = await deliver(stack, late, url=other.url)
    assert answer["outcome"] == "attached"
    assert calls.made() == [("describe_workflow", episode_id("hold", late["fingerprint"], STARTS))]


async def test_after_a_resolve_a_firing_delivery_reads_the_episode_and_starts_nothing(counted):
    stack, calls = counted
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("hold", fp, STARTS)
    alert = firing(fp, "Hold", instance="a-3")
    assert (await deliver(stack, alert))["outcome"] == "started"
    gone = await deliver(stack, {**alert, "status": "resolved", "endsAt": "2026-11-22T01:05:00Z"})
    assert gone["outcome"] == "resolved_cancelled"
    calls.clear()
    late = await deliver(stack, alert)
    assert (late["outcome"], late["reason"].split(";")[0]) == ("already_handled", "the alert was already resolved")
    assert late["run_id"] == run_id
    assert "start_workflow" not in [name for name, _ in calls.made()], calls.made()


async def test_copies_arriving_while_the_first_is_decided_cost_no_call_of_their_own(counted, monkeypatch):
    """An HA Alertmanager pair sends each notification from both peers at once (and a retry can
    overtake a slow answer): a copy of a delivery this door is still deciding waits for its
    outcome, with no store read, policy question or Temporal call of its own."""
    stack, calls = counted
    reads = noted_reads(stack, monkeypatch, pause=0.3)  # the first delivery's read is slow: copies arrive meanwhile
    asked: list[dict[str, Any]] = []
    start = stack.policy.start
    monkeypatch.setattr(stack.policy, "start", lambda input: asked.append(input) or start(input))
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("hold", fp, STARTS)
    alert = firing(fp, "Hold", instance="a-4")
    calls.clear()

    answers = await asyncio.gather(*(deliver(stack, alert) for _ in range(3)))

    assert sorted(a["outcome"] for a in answers) == ["attached", "attached", "started"], answers
    assert {a["run_id"] for a in answers} == {run_id}
    assert calls.made() == [("start_workflow", run_id)]
    assert reads == [run_id] and len(asked) == 1, "the copies asked neither the store nor the policy"


async def a_new_episode_starts(stack: BotStack, monkeypatch: Any, instance: str, rule: Any, **store: Any) -> None:
    """A new episode's first delivery, the `start` rule and the named store methods replaced: it starts its run."""
    for name, method in store.items():
        monkeypatch.setattr(stack.audit, name, method)
    monkeypatch.setattr(stack.policy, "start", rule)
    fp = uuid.uuid4().hex[:16]
    answer = await deliver(stack, firing(fp, "Hold", instance=instance))
    assert (answer["outcome"], answer["run_id"]) == ("started", episode_id("hold", fp, STARTS))


async def test_a_new_episode_is_claimed_while_the_start_rule_answers(counted, monkeypatch):
    """Issue 17: the claim's commit does not wait for the `start` rule's answer (nor the answer
    for the claim): here the rule answers only once the episode is claimed, which deadlocks a
    front door that claims after asking."""
    stack, _ = counted
    loop = asyncio.get_running_loop()
    claimed = asyncio.Event()
    claim = stack.audit.claim_episode

    def noted(episode: str, **kwargs: Any) -> Any:
        result = claim(episode, **kwargs)
        loop.call_soon_threadsafe(claimed.set)
        return result

    start = stack.policy.start

    async def after_the_claim(input: dict[str, Any]) -> Any:
        await asyncio.wait_for(claimed.wait(), 5)
        return await start(input)

    await a_new_episode_starts(stack, monkeypatch, "a-5", after_the_claim, claim_episode=noted)


async def test_a_new_episodes_claim_is_in_its_thread_before_the_start_rule_is_sent(counted, monkeypatch):
    """Issue 17: of the two, the claim goes first. Sending the question to a sleeping policy child
    can hold the front door's loop while the child wakes; a claim whose write had not yet reached
    its thread then waited it out, and finished last. Here the rule waits, holding the loop as
    that send can, for the claim's read to begin: it does only if the claim's write is already in
    its thread."""
    stack, _ = counted
    began = threading.Event()
    read = stack.audit.episode

    def noted(episode: str) -> Any:
        began.set()
        return read(episode)

    start = stack.policy.start
    seen: list[bool] = []

    async def holding_the_loop(input: dict[str, Any]) -> Any:
        seen.append(began.wait(2))
        return await start(input)

    await a_new_episode_starts(stack, monkeypatch, "a-7", holding_the_loop, episode=noted)
    assert seen == [True]


async def test_a_first_delivery_the_rule_refuses_gives_its_claim_back(counted, monkeypatch):
    """The claim is taken while the rule answers; refused, the delivery gives it back, so the
    episode reads as never claimed and the next delivery (the policy changed) starts at once
    instead of waiting for a claim nobody will use to go stale (503 after PENDING_WAIT)."""
    stack, calls = counted
    start = stack.policy.start
    refusing = True

    async def maybe_refused(input: dict[str, Any]) -> Any:
        verdict = await start(input)
        return verdict.model_copy(update={"allow": False, "reasons": ["not tonight"]}) if refusing else verdict

    monkeypatch.setattr(stack.policy, "start", maybe_refused)
    monkeypatch.setattr(AlertReceiver, "PENDING_WAIT", 1.0)
    fp = uuid.uuid4().hex[:16]
    run_id = episode_id("hold", fp, STARTS)
    alert = firing(fp, "Hold", instance="a-6")
    refused = await deliver(stack, alert)
    assert (refused["outcome"], refused["reason"]) == ("rejected", "start refused: not tonight")
    episode = stack.audit.episode(run_id)
    assert (episode.runs, episode.started, episode.claimed_at) == (0, False, None), "the claim was given back"
    refusing = False
    calls.clear()
    assert (await deliver(stack, alert))["outcome"] == "started"
    assert calls.made() == [("start_workflow", run_id)]
