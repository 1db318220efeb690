"""The embedded engine's decision cache: a repeated question never reaches the child, and nothing
stale, unstable or failed is ever answered from it. "Reached the child" is counted by the child
itself (its ping answers how many evaluations it has run)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bot.policy.decision_cache import DecisionCache, unstable_builtin
from bot.policy.embedded import EmbeddedEngine
from bot.policy.models import Decision, Failure, input_digest
from bot.policy.sources import read_sources
from tests.policy.conftest import BASE_INPUT, POLICIES
from tests.policy.test_embedded import AUTHZ, break_policy, until


async def evaluations(engine: EmbeddedEngine) -> int:
    """How many evaluations the engine's current child has run."""
    assert engine._proc is not None
    answer = await engine._proc.request({"op": "ping"}, 10.0)
    return answer["evaluations"]


def other_run(run_id: str) -> dict[str, Any]:
    return {**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": run_id}}


def same_answer(a: Decision, b: Decision) -> bool:
    ignore = {"decision_id"}
    return a.model_dump(exclude=ignore) == b.model_dump(exclude=ignore)


async def test_a_repeated_question_does_not_reach_the_child() -> None:
    async with EmbeddedEngine(POLICIES) as engine:
        first = await engine.decide(BASE_INPUT)
        again = await engine.decide(BASE_INPUT)
        approver = await engine.approver(BASE_INPUT)  # another rule: its own key
        asked = await evaluations(engine)

    assert first.allow and first.failure is None
    assert same_answer(first, again)
    assert again.decision_id != first.decision_id
    assert (again.policy_hash, again.input_digest) == (engine.policy_hash, input_digest(BASE_INPUT))
    assert approver.failure is None
    assert asked == 2
    assert (engine.cache.hits, engine.cache.misses) == (1, 2)


async def test_concurrent_identical_questions_are_evaluated_once() -> None:
    async with EmbeddedEngine(POLICIES) as engine:
        await engine.load()
        decisions = await asyncio.gather(*(engine.decide(BASE_INPUT) for _ in range(20)))
        asked = await evaluations(engine)

    assert all(d.allow and d.failure is None and same_answer(d, decisions[0]) for d in decisions)
    assert asked == 1


async def test_a_different_time_in_the_input_is_a_different_question(policies_copy: Path) -> None:
    data_path = policies_copy / "playbook" / "data.json"
    data = json.loads(data_path.read_text())
    data["freezes"] = [{"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z", "reason": "audit"}]
    data_path.write_text(json.dumps(data))
    async with EmbeddedEngine(policies_copy) as engine:
        during = await engine.decide({**BASE_INPUT, "now": "2025-03-01T10:00:00Z"})
        after = await engine.decide({**BASE_INPUT, "now": "2025-03-02T10:00:00Z"})
        asked = await evaluations(engine)

    assert (during.allow, during.reasons) == (False, ["change freeze 2025-03-01T00:00:00Z until 2025-03-02T00:00:00Z: audit"])
    assert after.allow
    assert asked == 2


async def test_a_policy_change_is_never_answered_from_the_cache(policies_copy: Path) -> None:
    data_path = policies_copy / "playbook" / "data.json"
    original = data_path.read_text()
    async with EmbeddedEngine(policies_copy, reload_interval=0) as engine:
        before = await engine.decide(BASE_INPUT)
        data = json.loads(original)
        data["freezes"] = [{"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z", "reason": "audit"}]
        data_path.write_text(json.dumps(data))
        frozen = await engine.decide(BASE_INPUT)
        break_policy(policies_copy)
        broken = await engine.decide(BASE_INPUT)
        data_path.write_text(original)
        (policies_copy / AUTHZ).write_text((POLICIES / AUTHZ).read_text())
        restored = await engine.decide(BASE_INPUT)
        asked = await evaluations(engine)

    assert before.allow and not frozen.allow
    assert frozen.policy_hash != before.policy_hash
    assert (broken.allow, broken.failure) == (False, Failure.LOAD_ERROR)
    assert same_answer(restored, before)
    assert asked == 3  # before, frozen, restored: each policy asked afresh


async def test_within_the_reload_interval_the_loaded_policy_answers(policies_copy: Path) -> None:
    async with EmbeddedEngine(policies_copy, reload_interval=3600) as engine:
        before = await engine.decide(BASE_INPUT)
        break_policy(policies_copy)
        cached = await engine.decide(BASE_INPUT)

    # What the child would answer too: it holds the policy loaded before the edit.
    assert before.allow and same_answer(before, cached)


async def test_answers_of_a_policy_that_reads_the_clock_are_not_cached(tmp_path: Path) -> None:
    (tmp_path / "authz.rego").write_text(
        "package playbook.authz\n\n"
        "import rego.v1\n\n"
        'decision := {"allow": true, "reasons": [sprintf("at %d", [time . now_ns()])]}\n'
    )
    async with EmbeddedEngine(tmp_path) as engine:
        with capture_logs() as logs:
            await engine.load()
        await engine.decide(BASE_INPUT)
        await engine.decide(BASE_INPUT)
        asked = await evaluations(engine)

    assert asked == 2
    assert len(engine.cache) == 0
    assert {"event": "policy.cache_off", "log_level": "info", "engine": "embedded",
            "reason": f"the policy reads more than its input ({tmp_path / 'authz.rego'}: time.now_ns)"} in logs


async def test_undefined_and_errors_are_asked_again(tmp_path: Path) -> None:
    (tmp_path / "authz.rego").write_text(
        "package playbook.authz\n\n"
        'approver := {"allow": true} if input.never\n\n'
        'decision := {"allow": true} if input.now\n\n'
        'decision := {"allow": false} if input.now\n'
    )
    async with EmbeddedEngine(tmp_path) as engine:
        undefined = [await engine.approver(BASE_INPUT) for _ in range(2)]
        failed = [await engine.decide(BASE_INPUT) for _ in range(2)]
        asked = await evaluations(engine)

    assert [v.failure for v in undefined] == [Failure.UNDEFINED] * 2
    assert [d.failure for d in failed] == [Failure.EVAL_ERROR] * 2
    assert asked == 4
    assert len(engine.cache) == 0


async def test_cached_answers_are_not_served_while_the_child_restarts() -> None:
    async with EmbeddedEngine(POLICIES, restart_delay=0.2) as engine:
        cached = await engine.decide(BASE_INPUT)
        os.kill(engine.pid, signal.SIGKILL)
        at_crash = await engine.decide(other_run("run-crash"))  # a miss finds the child dead
        meanwhile = await engine.decide(BASE_INPUT)

        async def answered() -> Decision | None:
            decision = await engine.decide(BASE_INPUT)
            return decision if decision.failure is None else None

        recovered = await until(answered)
        asked = await evaluations(engine)

    assert cached.allow
    assert (at_crash.failure, meanwhile.failure) == (Failure.ENGINE_CRASHED, Failure.ENGINE_CRASHED)
    assert same_answer(recovered, cached)
    assert asked == 1  # the new child was asked: the cache went with the old one


async def test_the_cache_is_bounded() -> None:
    async with EmbeddedEngine(POLICIES, cache_size=2) as engine:
        for run_id in ("run-a", "run-b", "run-c"):
            await engine.decide(other_run(run_id))
        await engine.decide(other_run("run-c"))  # kept
        await engine.decide(other_run("run-a"))  # evicted: asked again
        asked = await evaluations(engine)

    assert len(engine.cache) == 2
    assert asked == 4


async def test_a_large_input_crosses_the_pipe() -> None:
    large = {**BASE_INPUT, "step": {**BASE_INPUT["step"], "with": {"body": "x" * 8_000_000, "items": list(range(50_000))}}}
    async with EmbeddedEngine(POLICIES, timeout=30.0) as engine:
        decision = await engine.decide(large)
        again = await engine.decide(large)
        asked = await evaluations(engine)

    assert decision.allow and decision.require_approval and decision.failure is None
    assert decision.input_digest == input_digest(large)
    assert same_answer(decision, again) and asked == 1


def test_keys_name_the_policy_hash() -> None:
    cache = DecisionCache(8)
    cache.put(("hash-a", "decision", "digest"), {"allow": True})

    assert cache.get(("hash-a", "decision", "digest")) == (True, {"allow": True})
    assert cache.get(("hash-b", "decision", "digest")) == (False, None)
    assert cache.get(("hash-a", "approver", "digest")) == (False, None)


def test_unstable_builtins_are_found_however_spaced() -> None:
    assert unstable_builtin(read_sources(POLICIES).modules) is None  # the shipped policy is cacheable
    assert unstable_builtin({"a.rego": "x := time.parse_rfc3339_ns(input.now)"}) is None
    assert unstable_builtin({"a.rego": "x := time.now_ns()"}) == "a.rego: time.now_ns"
    assert unstable_builtin({"a.rego": "x := rand . intn(\"k\", 10)"}) == "a.rego: rand.intn"
    assert unstable_builtin({"a.rego": "x := crypto.x509.parse_and_verify_certificates_with_options(c, o)"}) == (
        "a.rego: crypto.x509.parse_and_verify_certificates"
    )
    assert unstable_builtin({"a.rego": "ok", "b.rego": "y := uuid.rfc4122(\"k\")"}) == "b.rego: uuid.rfc4122"
