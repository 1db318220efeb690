"""The embedded engine's pipe to its child: questions pipelined and answered by id, never crossed
between askers; a hung child killed for making no progress, not a question for waiting its turn;
a child that dies with questions pending restarted once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bot import eventloop
from bot.policy import rego_process, wire
from bot.policy.embedded import EmbeddedEngine
from bot.policy.models import Failure
from bot.policy.rego_process import ChildCrashed, RegoProcess
from tests.policy.conftest import BASE_INPUT, POLICIES
from tests.policy.test_embedded import until

# Each question costs the child tens of milliseconds (a count over `input.work` numbers).
SLOW_POLICY = """package playbook.authz

decision := {"allow": true, "require_approval": false, "reasons": [], "n": n} if {
	n := count([x | some x in numbers.range(1, input.work)])
}
"""


def asked_in(environment: str, index: int) -> dict[str, Any]:
    """A new question each (its own run id: no cache hit), its answer decided by `environment`."""
    return {**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": f"run-{index}"},
            "params": {**BASE_INPUT["params"], "environment": environment}}


def slow_policies(root: Path) -> Path:
    (root / "authz.rego").write_text(SLOW_POLICY)
    return root


@contextlib.contextmanager
def stopped(engine: EmbeddedEngine) -> Iterator[int]:
    """The engine's child stopped (SIGSTOP): questions pile up unanswered until the block ends."""
    pid = engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


async def pending(engine: EmbeddedEngine, count: int) -> None:
    """Wait until `count` questions are written to the child and unanswered."""
    async def written() -> bool | None:
        assert engine._proc is not None
        return True if len(engine._proc._pending) == count else None
    await until(written, timeout=5.0)


async def test_concurrent_questions_each_get_their_own_answer() -> None:
    """The attack: answers matched to the wrong asker would hand one caller another's allow.
    Forty questions at once, production (approval required) and staging (none) alternating."""
    async with EmbeddedEngine(POLICIES) as engine:
        await engine.load()
        environments = ["production" if i % 2 else "staging" for i in range(40)]
        decisions = await asyncio.gather(*(engine.decide(asked_in(env, i)) for i, env in enumerate(environments)))

    assert all(d.failure is None and d.allow for d in decisions)
    assert [d.require_approval for d in decisions] == [env == "production" for env in environments]


async def test_questions_are_written_while_the_child_is_busy() -> None:
    """Pipelined: a burst is in the child's pipe at once, not waiting on a lock for each answer
    (the child goes from one to the next without a round trip through this process's loop)."""
    async with EmbeddedEngine(POLICIES) as engine:
        await engine.load()
        with stopped(engine):
            asked = [asyncio.create_task(engine.decide(asked_in("staging", i))) for i in range(3)]
            await pending(engine, 3)
        decisions = await asyncio.gather(*asked)

    assert all(d.failure is None and d.allow and not d.require_approval for d in decisions)


async def test_waiting_behind_slow_questions_is_not_a_timeout(tmp_path: Path) -> None:
    """Twenty questions of ~40 ms each take longer together than the 0.3 s timeout: the child makes
    progress all along, so none is killed for waiting its turn."""
    async with EmbeddedEngine(slow_policies(tmp_path), timeout=0.3) as engine:
        await engine.load()
        pid = engine.pid
        loop = asyncio.get_running_loop()
        began = loop.time()
        decisions = await asyncio.gather(*(engine.decide({"work": 30_000 + i}) for i in range(20)))
        took = loop.time() - began
        after = engine.pid

    assert [d.failure for d in decisions] == [None] * 20
    assert took > 0.3, f"the questions took {took:.2f}s: too fast to show waiting is not a timeout"
    assert after == pid is not None  # the same child: never killed for a slow turn


async def test_a_hung_child_times_out_every_pending_question_and_restarts_once(policies_copy: Path) -> None:
    async with EmbeddedEngine(policies_copy, timeout=0.3, restart_delay=0.1) as engine:
        await engine.load()
        hung = engine.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        with capture_logs() as logs:
            decisions = await asyncio.gather(*(engine.decide(asked_in("staging", i)) for i in range(5)))

        async def answered() -> Any:
            decision = await engine.decide(asked_in("staging", 99))
            return decision if decision.failure is None else None

        recovered = await until(answered)
        restarted = engine.pid

    assert [(d.allow, d.failure) for d in decisions] == [(False, Failure.TIMEOUT)] * 5
    assert decisions[0].reasons == ["policy evaluation timed out after 0.3s; restarting the policy engine"]
    crashes = [log for log in logs if log["event"] == "policy.engine_crashed"]
    assert len(crashes) == 1 and crashes[0]["restart_in"] == 0.1  # one restart, not one per question
    assert recovered.allow and restarted not in (None, hung)


async def test_a_child_killed_with_questions_pending_restarts_once(policies_copy: Path) -> None:
    async with EmbeddedEngine(policies_copy, restart_delay=0.1) as engine:
        await engine.load()
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGSTOP)
        with capture_logs() as logs:
            asked = [asyncio.create_task(engine.decide(asked_in("staging", i))) for i in range(5)]
            await pending(engine, 5)
            os.kill(engine.pid, signal.SIGKILL)
            decisions = await asyncio.gather(*asked)

    assert [(d.allow, d.failure) for d in decisions] == [(False, Failure.ENGINE_CRASHED)] * 5
    assert decisions[0].reasons == ["policy engine process killed by SIGKILL; restarting it"]
    assert len([log for log in logs if log["event"] == "policy.engine_crashed"]) == 1


async def test_a_cancelled_question_leaves_the_child_and_the_next_answer_alone() -> None:
    """A caller that gives up (its request cancelled mid-question) neither kills the child nor
    leaves its late answer to be read as someone else's."""
    async with EmbeddedEngine(POLICIES) as engine:
        await engine.load()
        with stopped(engine) as pid:
            gone = asyncio.create_task(engine.decide(asked_in("production", 1)))
            await pending(engine, 1)
            gone.cancel()
            later = asyncio.create_task(engine.decide(asked_in("staging", 2)))
            await pending(engine, 1)  # the cancelled one is no longer waited for; the later one is
        decision = await later
        after = engine.pid

    assert gone.cancelled()
    assert decision.failure is None and decision.allow and not decision.require_approval
    assert after == pid  # the same child answered: the cancel did not kill it


async def test_a_cancelled_first_asker_does_not_fail_the_identical_question_waiting_on_it() -> None:
    async with EmbeddedEngine(POLICIES) as engine:
        await engine.load()
        with stopped(engine):
            first = asyncio.create_task(engine.decide(asked_in("production", 1)))
            await pending(engine, 1)
            same = asyncio.create_task(engine.decide(asked_in("production", 1)))
            await asyncio.sleep(0.05)  # it waits on the first asker's question
            first.cancel()
            await pending(engine, 1)  # it asked again itself

        decision = await same

    assert first.cancelled()
    assert decision.failure is None and decision.require_approval


async def test_a_corrupt_answer_fails_every_pending_question_and_kills_the_child() -> None:
    """A stream that no longer parses cannot be trusted to pair answers with questions."""
    process = RegoProcess()
    await process.start()
    try:
        assert process.pid is not None
        os.kill(process.pid, signal.SIGSTOP)
        asked = asyncio.create_task(process.request({"op": "ping"}, 5.0))
        await asyncio.sleep(0.05)
        process._received(b"\x00\x00\x00\x05hello")  # what the pipe would carry from a broken child
        with pytest.raises(ChildCrashed, match="protocol error: frame is not JSON"):
            await asked
        assert not process.alive
        with pytest.raises(ChildCrashed, match="protocol error"):
            await process.request({"op": "ping"}, 5.0)
    finally:
        await process.stop()


async def test_an_answer_to_no_question_is_a_protocol_error() -> None:
    process = RegoProcess()
    await process.start()
    try:
        process._received(wire.encode({"id": 7, "ok": True}))  # nothing was asked
        with pytest.raises(ChildCrashed, match="protocol error: answer 7 to no request"):
            await process.request({"op": "ping"}, 5.0)
    finally:
        await process.stop()


async def test_a_load_cut_off_midway_never_leaves_answers_under_another_policys_name(policies_copy: Path) -> None:
    """The attack: a readiness probe's timeout cancels a reload after its frame went out, the child
    takes the new policy while the engine still names the old one, and the operator's revert to
    the old files is then read as "unchanged": the new (say, looser) policy keeps answering under
    the old policy's hash. The child of a load cut off midway is killed, and the files read again."""
    data_path = policies_copy / "playbook" / "data.json"
    original = data_path.read_text()
    frozen = json.loads(original)
    frozen["freezes"] = [{"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z", "reason": "audit"}]
    async with EmbeddedEngine(policies_copy, reload_interval=0, restart_delay=0.05) as engine:
        before = await engine.decide(BASE_INPUT)
        data_path.write_text(json.dumps(frozen))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.ready(), 0.0001)  # cut off once the load frame is written
        data_path.write_text(original)  # the operator reverts

        async def answered() -> Any:
            decision = await engine.decide(BASE_INPUT)
            return decision if decision.failure is None else None

        after = await until(answered)

    assert before.allow and before.failure is None
    assert (after.allow, after.reasons, after.policy_hash) == (True, before.reasons, before.policy_hash)


async def test_a_question_pending_when_the_engine_closes_is_denied_at_once() -> None:
    """Closing the engine (the worker stopping) does not leave a question waiting out its timeout
    on a child that will never answer: it is denied once the child is gone."""
    engine = EmbeddedEngine(POLICIES, timeout=30.0)
    await engine.load()
    assert engine.pid is not None
    os.kill(engine.pid, signal.SIGSTOP)  # it will not answer, nor exit when its input closes
    asked = asyncio.create_task(engine.decide(asked_in("staging", 1)))
    await pending(engine, 1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await engine.close()  # closes the child's input, then kills it after a second
    decision = await asyncio.wait_for(asked, 5)

    assert (decision.allow, decision.failure) == (False, Failure.ENGINE_CRASHED)
    assert decision.reasons == ["policy engine process stopped; the engine is closing"]
    assert loop.time() - began < 5


def test_the_loop_polls_for_an_answer_only_while_one_is_due_and_comes_quickly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """RegoProcess tells bot.eventloop an answer is due while it waits for one, says when it has
    none pending, and stops asking after an answer slower than it polls for (the loop then sleeps).
    The poll is made 0.5 s here so that a loaded machine's wake-ups never count as slow; a slow
    answer is one the child gives only after being stopped for 1.5 s."""
    monkeypatch.setattr(rego_process, "SPIN", 0.5)
    idle = tmp_path / "loadavg"  # the host as idle, whatever the machine is doing (bot.eventloop)
    idle.write_text("0.50 0.40 0.30 1/321 4242\n")
    monkeypatch.setattr(eventloop, "LOADAVG", str(idle))

    async def main() -> list[bool]:
        due, seen = eventloop.spinner().due, []
        process = RegoProcess()
        await process.start()

        async def ask(stopped_for: float) -> None:
            """One ping, the child stopped for `stopped_for` s after it is asked (0: not stopped)."""
            if not stopped_for:
                await process.request({"op": "ping"}, 5.0)
                return
            assert process.pid is not None
            os.kill(process.pid, signal.SIGSTOP)
            try:
                asked = asyncio.create_task(process.request({"op": "ping"}, 5.0))
                await asyncio.sleep(0.01)
                seen.append(process in due)  # asked and unanswered: polled for?
                await asyncio.sleep(stopped_for)
            finally:
                os.kill(process.pid, signal.SIGCONT)
            await asked

        try:
            for _ in range(2):  # the first waits for the child's start-up; the second is quick
                await ask(0)
            await ask(1.5)  # polled for; its answer comes late
            seen.append(process in due)  # answered: nothing pending
            await ask(0.01)  # after a late answer: not polled for (and this answer is quick)
            await ask(0.01)  # polled for again
        finally:
            await process.stop()
        seen.append(process in due)
        return seen

    assert eventloop.run(main()) == [True, False, False, True, False]


async def test_the_policy_child_holds_none_of_the_processs_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team: the child inherited the whole environment, and Rego reads it (`opa.runtime().env`),
    so a policy or data change could put the envelope key or a playbook secret into a decision's
    reasons (history, audit, Slack). It gets what Python needs, and nothing of ours."""
    monkeypatch.setenv("PLAYBOOK_BOT_ENVELOPE_KEY", "k" * 64)
    monkeypatch.setenv("PLAYBOOK_BOT_SECRET_DEPLOY_TOKEN", "tok-123")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    module = "package leak\n\nimport rego.v1\n\nenv := opa.runtime().env\n"
    loaded, seen = rego_process.run_once([
        {"op": "load", "modules": {"leak.rego": module}, "data": {}, "entrypoints": ["leak/env"]},
        {"op": "eval", "entrypoint": "leak/env", "input": {}},
    ])
    assert loaded["ok"] and seen["ok"], (loaded, seen)
    assert not any(name.startswith("PLAYBOOK_BOT_") for name in seen["value"]), sorted(seen["value"])
    assert seen["value"]["LC_ALL"] == "C.UTF-8" and "PATH" in seen["value"]

    async with EmbeddedEngine(POLICIES) as engine:  # the long-lived child, as workers and front doors run it
        await engine.load()
        environ = Path(f"/proc/{engine.pid}/environ").read_bytes().split(b"\0")
    assert not any(entry.startswith(b"PLAYBOOK_BOT_") for entry in environ)
