"""/api/v1 on real HTTP with a real worker: starting, reading, voting on and cancelling runs as
the principal of a bearer token, and every refusal a 4xx naming its rule, audited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.testing import WorkflowEnvironment

from bot.api.routes import idempotent_run_id
from bot.engine import runs
from bot.services import api_tokens
from bot.settings import ConfigError, Settings
from tests.api.support import ApiStack, api_stack


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path) as s:
        yield s


async def test_a_started_run_completes_as_the_tokens_principal(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "quick", {"service": "checkout", "replicas": "3"})
    final = await stack.finished(run_id)
    assert final.state == "completed"
    assert (final.requested_by, final.trigger) == ("api:alice", "api")
    assert final.params == {"service": "checkout", "replicas": 3}
    assert final.requester is not None
    assert (final.requester.verified, final.requester.verified_by, final.requester.person) == (True, "api", "alice")
    (started,) = [e for e in stack.audit.events(run_id) if e.kind == "run_started"]
    assert started.details.get("start_asked_by") == "front door"  # the API's sealed answer; the worker did not ask

    response = await stack.call("GET", f"/runs/{run_id}", "bob")
    assert response.status_code == 200
    body = response.json()
    assert body["run_id"] == run_id and body["state"] == "completed" and body["requested_by"] == "api:alice"
    assert [s["id"] for s in body["steps"]] == ["note"] and body["steps"][0]["state"] == "succeeded"


async def test_an_idempotency_key_makes_a_retried_post_attach(stack: ApiStack) -> None:
    ask = {"playbook": "hold", "params": {}}
    first = await stack.call("POST", "/runs", "alice", body=ask, headers={"Idempotency-Key": "incident-42"})
    assert first.status_code == 201, first.text
    run_id = first.json()["run_id"]
    assert run_id == idempotent_run_id("api:alice", "hold", "incident-42")

    again = await stack.call("POST", "/runs", "alice", body=ask, headers={"Idempotency-Key": "incident-42"})
    assert (again.status_code, again.json()) == (200, {"run_id": run_id, "attached": True})
    assert [w.id for w in await stack.settled_runs()] == [run_id]

    other = await stack.call("POST", "/runs", "alice", body={"playbook": "quick", "params": {"service": "x"}},
                             headers={"Idempotency-Key": "incident-43"})
    assert other.status_code == 201
    # Another principal's same key is another run: nobody attaches to someone else's.
    bobs = await stack.call("POST", "/runs", "bob", body=ask, headers={"Idempotency-Key": "incident-42"})
    assert bobs.status_code == 201 and bobs.json()["run_id"] != run_id
    assert len(await stack.settled_runs()) == 3

    # After the run ended, the same request still attaches: nothing starts twice.
    assert (await stack.call("POST", f"/runs/{run_id}/cancel", "alice")).status_code == 200
    await stack.finished(run_id)
    late = await stack.call("POST", "/runs", "alice", body=ask, headers={"Idempotency-Key": "incident-42"})
    assert (late.status_code, late.json()) == (200, {"run_id": run_id, "attached": True})
    assert len(await stack.settled_runs()) == 3


async def test_an_idempotency_key_reused_for_other_params_is_a_conflict(stack: ApiStack) -> None:
    key = {"Idempotency-Key": "deploy-7"}
    first = await stack.call("POST", "/runs", "alice", body={"playbook": "quick", "params": {"service": "a"}}, headers=key)
    assert first.status_code == 201
    other = await stack.call("POST", "/runs", "alice", body={"playbook": "quick", "params": {"service": "b"}}, headers=key)
    assert other.status_code == 409
    assert other.json()["rule"] == "idempotency" and "other params" in other.json()["error"]
    assert len(await stack.settled_runs()) == 1
    bad = await stack.call("POST", "/runs", "alice", body={"playbook": "quick", "params": {"service": "a"}},
                           headers={"Idempotency-Key": "has space"})
    assert bad.status_code == 400 and bad.json()["rule"] == "idempotency"


async def test_another_principal_approves_and_the_step_runs(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "gated")
    await stack.waiting(run_id, "risky")
    response = await stack.call("POST", f"/runs/{run_id}/approvals", "bob",
                                body={"step": "risky", "vote": "approve", "reason": "looks right"})
    assert response.status_code == 200, response.text
    assert response.json()["approvals"] == 1 and response.json()["needed"] == 1
    final = await stack.finished(run_id)
    assert final.state == "completed"
    vote = final.step("risky").approvals[0]
    assert (vote.user, vote.person, vote.verified, vote.reason) == ("api:bob", "bob", True, "looks right")


async def test_a_reject_vote_rolls_the_run_back(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "gated")
    await stack.waiting(run_id, "risky")
    response = await stack.call("POST", f"/runs/{run_id}/approvals", "carol", body={"step": "risky", "vote": "reject"})
    assert response.status_code == 200, response.text
    final = await stack.finished(run_id)
    assert final.step("risky").state == "rejected"


async def test_votes_on_a_step_that_is_not_waiting_or_does_not_exist(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "gated")
    await stack.waiting(run_id, "risky")
    not_waiting = await stack.call("POST", f"/runs/{run_id}/approvals", "bob", body={"step": "prep", "vote": "approve"})
    assert not_waiting.status_code == 409 and not_waiting.json()["rule"] == "step_state"
    missing = await stack.call("POST", f"/runs/{run_id}/approvals", "bob", body={"step": "nope", "vote": "approve"})
    assert missing.status_code == 404 and missing.json()["rule"] == "unknown_step"
    unknown_run = await stack.call("POST", "/runs/no-such-run/approvals", "bob", body={"step": "x", "vote": "approve"})
    assert unknown_run.status_code == 404 and unknown_run.json()["rule"] == "unknown_run"
    assert (await stack.status(run_id)).step("risky").state == "waiting_approval"  # type: ignore[union-attr]
    assert {e.details["rule"] for e in stack.refusals("api:bob")} == {"step_state", "unknown_step", "unknown_run"}


async def test_cancel_by_the_requester_is_recorded(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "hold")
    await stack.step_in(run_id, "wait", "running")
    response = await stack.call("POST", f"/runs/{run_id}/cancel", "alice", body={"reason": "false alarm"})
    assert response.status_code == 200, response.text
    assert response.json()["was"] == "running" and "cancel accepted from api:alice" in response.json()["message"]
    final = await stack.finished(run_id)
    assert (final.cancelled_by, final.cancel_reason) == ("api:alice", "false alarm")
    assert final.state in ("compensated", "cancelled")
    ended = await stack.call("POST", f"/runs/{run_id}/cancel", "alice")
    assert ended.status_code == 409 and ended.json()["rule"] == "run_state"


async def test_the_cancel_rule_lets_bob_cancel_anyones_run(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "hold")
    await stack.step_in(run_id, "wait", "running")
    response = await stack.call("POST", f"/runs/{run_id}/cancel", "bob", content="")
    assert response.status_code == 200, response.text
    assert (await stack.finished(run_id)).cancelled_by == "api:bob"


async def test_listing_shows_runs_of_playbooks_the_principal_may_start(stack: ApiStack) -> None:
    quick = await stack.start("alice", "quick", {"service": "web"})
    hold = await stack.start("bob", "hold")
    await stack.finished(quick)
    await stack.step_in(hold, "wait", "running")

    listed = await stack.call("GET", "/runs", "carol")
    assert listed.status_code == 200, listed.text
    runs = listed.json()["runs"]
    assert [r["run_id"] for r in runs] == [hold, quick]  # newest first
    assert runs[1] == {**runs[1], "playbook": "quick", "state": "completed", "requested_by": "api:alice",
                       "trigger": "api"}
    assert runs[1]["started_at"]

    running = await stack.call("GET", "/runs?state=running", "carol")
    assert [r["run_id"] for r in running.json()["runs"]] == [hold]
    by_playbook = await stack.call("GET", "/runs?playbook=quick&limit=5", "carol")
    assert [r["run_id"] for r in by_playbook.json()["runs"]] == [quick]
    one = await stack.call("GET", "/runs?limit=1", "carol")
    assert [r["run_id"] for r in one.json()["runs"]] == [hold]

    # mallory may start nothing, so she sees nothing (and that is not a refusal): not even how many
    # runs the queue holds (red-team finding: the answer said how many executions it had scanned).
    assert (await stack.call("GET", "/runs", "mallory")).json() == {"runs": []}


async def test_listings_at_once_are_bounded_in_all_and_per_principal(
    stack: ApiStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each listing reads up to SCAN runs from Temporal (and queries the worker for running ones):
    a token holder firing listings in parallel multiplied that without bound (red-team finding).
    One front door serves LISTINGS at once, LISTINGS_EACH per principal, so one principal (even one
    who may read nothing: her listings scan everything) cannot hold them all. One more is turned
    away at once, not queued, and is not a refusal of the caller (nothing audited)."""
    from bot.api import routes

    assert routes.LISTINGS_EACH < routes.LISTINGS
    await stack.finished(await stack.start("alice", "quick", {"service": "web"}))
    held, reading = asyncio.Event(), asyncio.Semaphore(0)
    real = routes.get_status

    async def slow_status(client: Any, run_id: str) -> Any:
        reading.release()
        await held.wait()
        return await real(client, run_id)

    monkeypatch.setattr(routes, "get_status", slow_status)
    refusals = len(stack.audit.events())

    async def hold(who: str, count: int) -> list[asyncio.Task[Any]]:
        listings = [asyncio.create_task(stack.call("GET", "/runs", who)) for _ in range(count)]
        for _ in listings:
            await asyncio.wait_for(reading.acquire(), timeout=30)  # each is reading its runs
        return listings

    mallorys = await hold("mallory", routes.LISTINGS_EACH)
    hers = await stack.call("GET", "/runs", "mallory")
    assert hers.status_code == 503 and hers.json()["rule"] == "busy", hers.text
    assert "of yours" in hers.json()["error"]
    others = await hold("carol", routes.LISTINGS - routes.LISTINGS_EACH)  # the rest are anyone else's
    full = await stack.call("GET", "/runs", "bob")
    assert full.status_code == 503 and full.headers["Retry-After"] == str(routes.LISTING_RETRY_AFTER)
    held.set()
    assert [r.status_code for r in await asyncio.gather(*mallorys, *others)] == [200] * routes.LISTINGS
    assert (await stack.call("GET", "/runs", "mallory")).status_code == 200  # the slots are given back
    assert len(stack.audit.events()) == refusals


async def test_a_listing_past_its_deadline_is_a_503_and_gives_its_slot_back(
    stack: ApiStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red-team: with no worker answering, each running run's status waits out its query timeout,
    and a listing held its slot for minutes (two principals could keep all of them)."""
    from bot.api import routes

    await stack.finished(await stack.start("alice", "quick", {"service": "web"}))
    never = asyncio.Event()

    async def stuck_status(client: Any, run_id: str) -> Any:
        await never.wait()

    monkeypatch.setattr(routes, "get_status", stuck_status)
    monkeypatch.setattr(routes, "LISTING_DEADLINE", 0.5)

    slow = await stack.call("GET", "/runs", "carol")

    assert slow.status_code == 503 and slow.json()["rule"] == "temporal", slow.text
    monkeypatch.undo()
    assert all(s.status_code == 200 for s in await asyncio.gather(
        *(stack.call("GET", "/runs", "carol") for _ in range(routes.LISTINGS_EACH))))  # its slot is free


async def test_bad_listing_queries_are_422_naming_every_problem(stack: ApiStack) -> None:
    response = await stack.call("GET", "/runs?state=bogus&limit=1000&colour=red", "alice")
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert len(problems) == 3 and any("colour" in p for p in problems) and any("limit" in p for p in problems)
    unknown = await stack.call("GET", "/runs?playbook=nope", "alice")
    assert unknown.status_code == 404 and unknown.json()["rule"] == "unknown_playbook"


async def test_bad_starts_are_4xx_naming_what_to_fix_and_start_nothing(stack: ApiStack) -> None:
    unknown = await stack.call("POST", "/runs", "alice", body={"playbook": "nope"})
    assert unknown.status_code == 404 and unknown.json()["rule"] == "unknown_playbook"
    params = await stack.call("POST", "/runs", "alice",
                              body={"playbook": "quick", "params": {"service": "Bad Name", "replicas": "x", "extra": 1}})
    assert params.status_code == 422 and params.json()["rule"] == "params"
    assert len(params.json()["problems"]) == 3
    not_json = await stack.call("POST", "/runs", "alice", content="{playbook: quick")
    assert not_json.status_code == 400 and not_json.json()["rule"] == "body"
    shape = await stack.call("POST", "/runs", "alice", body={"params": [], "requested_by": "api:bob"})
    assert shape.status_code == 422
    assert len(shape.json()["problems"]) == 3  # playbook missing, params not an object, requested_by unknown
    assert await stack.settled_runs() == []
    rules = [e.details["rule"] for e in stack.refusals("api:alice")]
    assert sorted(rules) == ["body", "body", "params", "unknown_playbook"]


def test_a_front_door_does_not_start_with_a_file_that_is_not_a_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"tokens": "everyone"}')
    with pytest.raises(ConfigError, match=f"{path}: not a tokens file"):
        api_tokens(Settings(data_dir=tmp_path, api_tokens_file=path))
    assert api_tokens(Settings(data_dir=tmp_path)).entries() == {}  # no file yet: no tokens, every request 401


# ---- hostile requests (red-team findings) ----------------------------------------------------

ATTACH = """
name: attach
concurrency: {key: "attach-{{ params.service }}", on_busy: attach}
params:
  service: {type: string, pattern: "^[a-z0-9-]+$"}
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
"""


@pytest.mark.parametrize("body", [
    {"step": "s", "choice": "a", "reason": "r" * 1500},
    {"step": "s", "choice": "c" * 1500},
    {"step": "s", "value": "v" * 3000},
    {"step": "s", "value": int("9" * 1200)},
], ids=["long reason", "long choice", "long value", "long number"])
async def test_a_confirmation_too_long_for_the_run_is_a_422_on_record(stack: ApiStack, body: dict) -> None:
    """Red-team finding: the body's limits were 2,000 characters (a value none) where the run's take
    1,000: the request model built after the body's checks raised past the handler, a 500, unaudited."""
    response = await stack.call("POST", "/runs/whatever/confirmations", "alice", body=body)
    assert response.status_code == 422, response.text
    assert len(stack.refusals("api:alice")) == 1


async def test_a_limit_written_in_other_digits_is_a_422(stack: ApiStack) -> None:
    """Red-team finding: `²` passes str.isdigit() and fails int(): a 500."""
    response = await stack.call("GET", "/runs?limit=%C2%B2", "alice")
    assert response.status_code == 422, response.text
    assert "limit" in response.json()["error"]


async def test_a_start_that_meets_a_held_attach_key_answers_the_holder_with_or_without_a_key(
        dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """Red-team finding: with an Idempotency-Key the API answered 201 with a run id under which
    nothing had started (the key's holder was attached to), and its retry once the holder ended
    started a run; without a key, a 201 with the holder's id. Both now say attached, with the holder."""
    async with api_stack(dev_env.client, tmp_path, {"attach": ATTACH}) as stack:
        holder = await stack.start("bob", "attach", {"service": "web"})
        await stack.step_in(holder, "wait", "running")
        body = {"playbook": "attach", "params": {"service": "web"}}
        for headers in ({"Idempotency-Key": "k1"}, {}):
            answer = await stack.call("POST", "/runs", "alice", body=body, headers=headers)
            assert (answer.status_code, answer.json()) == (200, {"run_id": holder, "attached": True}), answer.text
        assert [w.id for w in await stack.settled_runs() if w.workflow_type == "PlaybookRun"] == [holder]


async def test_a_cancel_the_run_does_not_answer_in_time_is_a_503_as_a_vote_is(
        stack: ApiStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red-team finding: the update's timeout (a busy or restarting worker) escaped cancel_run: a 500."""
    run_id = await stack.start("alice", "hold")
    await stack.step_in(run_id, "wait", "running")
    real = runs.pinned

    class NoAnswer:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        async def execute_update(self, *args: Any, **kwargs: Any) -> Any:
            raise WorkflowUpdateRPCTimeoutOrCancelledError()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    monkeypatch.setattr(runs, "pinned", lambda client, run, execution: NoAnswer(real(client, run, execution)))
    answer = await stack.call("POST", f"/runs/{run_id}/cancel", "alice", body={})
    assert answer.status_code == 503 and answer.json()["rule"] == "unavailable", answer.text
    assert "no answer within 30s" in answer.json()["error"]
