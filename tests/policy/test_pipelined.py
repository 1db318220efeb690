"""The embedded engine's questions pipelined to its child: a burst is sent back to back, every
answer still names the policy that gave it (even across a reload), a crash with questions in
flight restarts the child once, and a caller that gives up leaves the stream in step."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from structlog.testing import capture_logs

from bot.policy.embedded import EmbeddedEngine
from bot.policy.models import Failure
from bot.policy.rego_process import RegoProcess
from tests.policy.conftest import BASE_INPUT, POLICIES

FREEZE = [{"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z", "reason": "audit"}]


def distinct(i: int) -> dict:
    """BASE_INPUT as a new run asks it: never a decision-cache hit."""
    return {**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": f"run-{i}"}}


async def test_a_burst_is_sent_before_its_first_answer_is_read(monkeypatch) -> None:
    in_flight: list[int] = []
    send = RegoProcess.send

    def counting(self: RegoProcess, message: dict, **encoded: bytes):  # noqa: ANN202
        sent = send(self, message, **encoded)
        in_flight.append(len(self._waiting))
        return sent

    monkeypatch.setattr(RegoProcess, "send", counting)
    async with EmbeddedEngine(POLICIES) as engine:
        await engine.load()
        in_flight.clear()
        decisions = await asyncio.gather(*(engine.decide(distinct(i)) for i in range(30)))
    assert all(d.allow and d.failure is None for d in decisions)
    assert max(in_flight) >= 10, in_flight  # one at a time, this never passed 1


async def test_every_answer_names_the_policy_that_gave_it_across_a_reload(policies_copy: Path) -> None:
    data_path = policies_copy / "playbook" / "data.json"
    data = json.loads(data_path.read_text())
    async with EmbeddedEngine(policies_copy, reload_interval=0) as engine:
        await engine.load()
        thawed = engine.policy_hash
        before = [asyncio.ensure_future(engine.decide(distinct(i))) for i in range(30)]
        await asyncio.sleep(0)  # sent, not yet answered
        data_path.write_text(json.dumps({**data, "freezes": FREEZE}))
        after = [asyncio.ensure_future(engine.decide(distinct(i))) for i in range(30, 60)]  # the first one reloads
        decisions = await asyncio.gather(*before, *after)
        frozen = engine.policy_hash
    assert frozen != thawed
    by_hash = {(d.policy_hash, d.allow) for d in decisions}
    assert by_hash <= {(thawed, True), (frozen, False)}, by_hash  # never the freeze under the old hash
    assert (frozen, False) in by_hash, "some questions were answered by the changed policy"


async def test_a_crash_with_questions_in_flight_denies_them_all_and_restarts_once(policies_copy: Path) -> None:
    async with EmbeddedEngine(policies_copy, restart_delay=0.2) as engine:
        await engine.load()
        dead = engine.pid
        asks = [asyncio.ensure_future(engine.decide(distinct(i))) for i in range(20)]
        await asyncio.sleep(0)  # all sent
        with capture_logs() as logs:
            os.kill(dead, signal.SIGKILL)
            decisions = await asyncio.gather(*asks)
        for _ in range(200):
            if engine.pid not in (None, dead) and not engine._restarting():
                break
            await asyncio.sleep(0.05)
        after = await engine.decide(distinct(99))
    failed = [d for d in decisions if d.failure is not None]
    assert failed and all(d.failure is Failure.ENGINE_CRASHED and not d.allow for d in failed)
    assert all(d.allow for d in decisions if d.failure is None)  # answered before the kill landed
    crashes = [entry for entry in logs if entry["event"] == "policy.engine_crashed"]
    assert len(crashes) == 1, crashes  # one restart (and one crash counted), not one per question in flight
    assert after.allow and after.failure is None and engine.pid != dead


async def test_a_caller_that_gives_up_leaves_the_stream_in_step() -> None:
    async with EmbeddedEngine(POLICIES) as engine:
        await engine.load()
        pid = engine.pid
        given_up = asyncio.ensure_future(engine.decide(distinct(1)))
        await asyncio.sleep(0)
        given_up.cancel()
        rule_answers = await asyncio.gather(engine.start(distinct(2)), engine.decide(distinct(3)),
                                            engine.approver(distinct(4)))
        assert engine.pid == pid  # no restart: before pipelining, a cancelled request killed the child
    start, decision, approver = rule_answers
    assert start.failure is None and decision.failure is None and decision.require_approval
    assert approver.failure is None and not approver.allow  # each its own rule's answer
