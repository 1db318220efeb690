"""The click path (issue 17.3): a vote as a front door sends it (bot/engine/runs.py `vote`) is one
Temporal call, the `approver` question is asked once, by the worker, and the workflow task that
accepts the deciding vote also schedules the step's action. Real worker activities (embedded
policy, SQLite audit store, envelope keys), a real dev server, a local HTTP target.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from bot.audit.events import EventKind
from bot.engine import runs
from bot.engine.runs import RunError
from bot.engine.state import ConfirmRequest, RunStatus, TriggerContext, VoteRequest
from bot.engine.worker import WorkerDeps, make_worker, worker_deps, workflow_runner
from bot.engine.workflow import PlaybookRun
from bot.identity.keys import front_door_keyring
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring
from bot.playbook.loader import LoadedPlaybook
from bot.settings import Settings
from tests.alerts.temporal_calls import TemporalCalls
from tests.engine.support import catalog_of, playbook, wait_for_state
from tests.http_server import serving
from tests.slack.support import ENVELOPE_KEY, POLICY

PB = """
name: clicked
owner: sre
steps:
  - {id: prep, action: core.log, with: {message: prepare}}
  - {id: risky, action: http.request, impact: high, with: {method: POST, url: "TARGET/acted"}}
"""

PICKED = """
name: picked
owner: sre
steps:
  - {id: pick, action: core.confirm, with: {message: "Restart?", choices: [restart, wait]}}
  - {id: act, action: http.request, with: {method: POST, url: "TARGET/{{ steps.pick.output.choice }}"}}
"""

ALICE = Actor("slack:U0ALICE", "alice", (), "slack")  # the requester
BOB = Actor("slack:U0BOB", "bob", ("sre",), "slack")  # an approver: POLICY admits members of sre
MALLORY = Actor("slack:U0MALLORY", "mallory", ("web",), "slack")
ROGUE = Keyring(b"rogue-envelope-key-nobody-deployed-0123456789")


class Target(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        Target.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Clicks:
    """A run of PB waiting for one approval on `risky`, the front door's counted client and keyring,
    and every `approver` question the worker's policy engine was asked (the users asked about)."""

    handle: WorkflowHandle[PlaybookRun, RunStatus]
    front_door: Client
    calls: TemporalCalls
    keyring: Keyring
    deps: WorkerDeps
    asked: list[dict[str, Any]] = field(default_factory=list)


@asynccontextmanager
async def waiting_run(dev_env: Any, tmp_path: Path, text: str = PB, step: str = "risky") -> AsyncIterator[Clicks]:
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    settings = Settings(data_dir=tmp_path / "data", policies_dir=tmp_path / "policies", envelope_key=ENVELOPE_KEY)
    calls = TemporalCalls()
    front_door = calls.client(dev_env.client)
    with serving(Target) as url:
        pb = playbook(text.replace("TARGET", url))
        async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
            clicks = Clicks(None, front_door, calls, front_door_keyring(settings), deps)  # type: ignore[arg-type]
            engine_approver = deps.policy.approver

            async def approver(input: dict[str, Any]) -> Any:
                clicks.asked.append(input["user"])
                return await engine_approver(input)

            deps.policy.approver = approver  # type: ignore[method-assign]  (counted, still the real engine)
            async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as w:
                loaded = LoadedPlaybook(pb, Path("clicked.yaml"), pb.content_hash())
                trigger = TriggerContext(kind="slack", requested_by=ALICE.principal)
                clicks.handle = await runs.start_run(
                    dev_env.client, w.task_queue, loaded, {}, trigger, actor=ALICE, keyring=clicks.keyring
                )
                await wait_for_state(clicks.handle, lambda s: s.step(step).state == "waiting_approval", timeout=60)
                calls.clear()
                yield clicks


def _kind(event: Any) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


async def _between_accepted_and_acting(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The history's events from the (only) update's acceptance to the http.request's scheduling."""
    history = await handle.fetch_history()
    kinds = [_kind(e) for e in history.events]
    acted = next(i for i, e in enumerate(history.events) if _kind(e) == "ACTIVITY_TASK_SCHEDULED"
                 and e.activity_task_scheduled_event_attributes.activity_type.name == "http.request")
    return kinds[kinds.index("WORKFLOW_EXECUTION_UPDATE_ACCEPTED"):acted]


async def test_the_deciding_vote_schedules_the_step_in_the_task_that_accepts_it(dev_env, tmp_path):
    Target.hits = []
    async with waiting_run(dev_env, tmp_path) as clicks:
        # The execution the request was drawn for, as a Slack button carries it: no call to learn it.
        result = await runs.vote(clicks.front_door, clicks.handle.id, VoteRequest(step_id="risky", user=""), BOB,
                                 clicks.keyring, execution=clicks.handle.first_execution_run_id)
        assert (result.approvals, result.needed) == (1, 1)
        assert clicks.calls.made() == [("start_workflow_update", clicks.handle.id)], "the front door's one Temporal call"
        assert [u["id"] for u in clicks.asked] == [BOB.principal], "one approver question, by the worker"
        assert clicks.asked[0]["groups"] == ["sre"] and clicks.asked[0]["verified"] is True
        status = await clicks.handle.result()
        trail = [(e.kind, e.step_id) for e in await asyncio.to_thread(clicks.deps.audit.events, clicks.handle.id)]

        with pytest.raises(RunError) as over:  # the run is closed: said plainly, from its result
            await runs.vote(clicks.front_door, clicks.handle.id, VoteRequest(step_id="risky", user=""), BOB,
                            clicks.keyring)
        assert (over.value.code, over.value.rule) == ("conflict", "run_state")
        assert str(over.value) == f"run {clicks.handle.id!r} has already ended (completed): nothing to vote on"
    assert status.state == "completed" and Target.hits == ["/acted"]
    assert [v.user for v in status.step("risky").approvals] == [BOB.principal]

    between = await _between_accepted_and_acting(clicks.handle)
    assert "WORKFLOW_TASK_SCHEDULED" not in between and "WORKFLOW_TASK_STARTED" not in between, between
    assert "ACTIVITY_TASK_SCHEDULED" not in between, "the approver question is no activity task of its own"
    assert "MARKER_RECORDED" in between and "WORKFLOW_EXECUTION_UPDATE_COMPLETED" in between, between

    # The vote's record is durable before the step acts (the action carries it and writes it first).
    vote_at = trail.index((EventKind.approval_vote, "risky"))
    assert vote_at < trail.index((EventKind.step_started, "risky")), trail

    replayer = Replayer(workflows=[PlaybookRun], data_converter=pydantic_data_converter, workflow_runner=workflow_runner())
    history = await clicks.handle.fetch_history()
    assert (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None


async def test_votes_without_a_valid_proof_are_refused_by_the_run_and_audited(dev_env, tmp_path):
    """A forged proof (bob's name and groups, signed with a key nobody deployed) is refused by the
    worker's check before any policy question; a vote with no proof is asked about as unverified,
    without the groups it claims, and refused. Both are on the run's record; bob's own vote still
    counts, and a voter the rule refused (mallory, through the front door) is asked about once."""
    Target.hits = []
    async with waiting_run(dev_env, tmp_path) as clicks:
        with pytest.raises(RunError) as forged:
            await runs.vote(clicks.front_door, clicks.handle.id, VoteRequest(step_id="risky", user=""), BOB, ROGUE)
        assert (forged.value.code, forged.value.rule) == ("refused", "approver")
        assert "proof does not verify" in str(forged.value)
        assert clicks.asked == [], "a proof that does not hold is refused before policy is asked"

        with pytest.raises(WorkflowUpdateFailedError) as bare:
            await clicks.handle.execute_update(
                PlaybookRun.vote, VoteRequest(step_id="risky", user=BOB.principal, groups=["sre"])
            )
        assert "may not approve" in str(bare.value.cause)
        (unverified,) = clicks.asked
        assert (unverified["id"], unverified["groups"], unverified["verified"]) == (BOB.principal, [], False)

        for _ in range(3):  # refused once by the rule; the repeats by the run's validator, unasked
            with pytest.raises(RunError) as refused:
                await runs.vote(clicks.front_door, clicks.handle.id, VoteRequest(step_id="risky", user=""), MALLORY,
                                clicks.keyring)
            assert (refused.value.code, refused.value.rule) == ("refused", "approver")
        assert [u["id"] for u in clicks.asked].count(MALLORY.principal) == 1
        assert Target.hits == [], "nothing acted"

        await runs.vote(clicks.front_door, clicks.handle.id, VoteRequest(step_id="risky", user=""), BOB, clicks.keyring)
        status = await clicks.handle.result()
        votes = [e for e in await asyncio.to_thread(clicks.deps.audit.events, clicks.handle.id)
                 if e.kind == EventKind.approval_vote]
    assert status.state == "completed" and Target.hits == ["/acted"]
    assert [v.user for v in status.step("risky").approvals] == [BOB.principal]
    assert [u["id"] for u in clicks.asked].count(BOB.principal) == 2, "the bare vote's question, then his own"
    refused_votes = [(e.actor, e.details["message"]) for e in votes if not e.details["accepted"]]
    assert [actor for actor, _ in refused_votes] == [BOB.principal, BOB.principal, MALLORY.principal]
    assert "proof does not verify" in refused_votes[0][1] and "may not approve" in refused_votes[1][1]
    assert [e.actor for e in votes if e.details["accepted"]] == [BOB.principal]


async def test_a_confirm_answer_starts_the_next_step_in_the_task_that_accepts_it(dev_env, tmp_path):
    """core.confirm answers share the vote's path: one update, one approver question, and the next
    step's action scheduled by the task that took the answer."""
    Target.hits = []
    async with waiting_run(dev_env, tmp_path, PICKED, "pick") as clicks:
        answer = ConfirmRequest(step_id="pick", user="", answer="restart")
        result = await runs.confirm(clicks.front_door, clicks.handle.id, answer, BOB, clicks.keyring)
        assert result.answer == "restart"
        # No execution given (the API, the CLI, an older button): one describe learns it first.
        assert clicks.calls.made() == [("describe_workflow", clicks.handle.id), ("start_workflow_update", clicks.handle.id)]
        assert [u["id"] for u in clicks.asked] == [BOB.principal]
        status = await clicks.handle.result()
    assert status.state == "completed" and Target.hits == ["/restart"]
    between = await _between_accepted_and_acting(clicks.handle)
    assert "WORKFLOW_TASK_SCHEDULED" not in between and "WORKFLOW_TASK_STARTED" not in between, between
