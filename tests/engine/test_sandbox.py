"""The worker's workflow runner: the sandbox, minus its per-payload context lookups where the
converter makes no use of them (bot/engine/sandbox.py)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    PayloadCodec,
    WorkflowSerializationContext,
)
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from bot.engine import worker as worker_module
from bot.engine.sandbox import ContextBlindRunner, SharedPayloadConverter, context_blind, workflow_runner
from bot.engine.state import RunStatus, StepStatus, VoteRequest
from bot.engine.worker import make_worker
from bot.engine.workflow import PlaybookRun
from tests.engine.support import Recorder, playbook, run_input, wait_for_state
from tests.engine.test_approvals import APPROVAL, gated, policy, vote

TWO_STEPS = """
name: two
steps:
  - {id: first, action: t.ok}
  - {id: second, action: t.ok}
"""


class _Identity(PayloadCodec):
    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


def test_the_bots_converters_are_context_blind_and_others_are_not():
    assert context_blind(pydantic_data_converter)
    assert context_blind(DataConverter.default)
    assert not context_blind(dataclasses.replace(pydantic_data_converter, payload_codec=_Identity()))
    assert not context_blind(dataclasses.replace(pydantic_data_converter, payload_converter_class=_Custom))


class _Custom(pydantic_data_converter.payload_converter_class):  # type: ignore[misc,name-defined]
    """Any converter the bot does not know might read the context."""


async def test_every_context_encodes_the_same_bytes():
    """What ContextBlindRunner relies on: for the bot's converter, the run's context, an activity's
    and none give byte-identical payloads (a context-aware converter or codec would not)."""
    values: list[Any] = [
        VoteRequest(step_id="risky", user="slack:U1", vote="approve"),
        RunStatus(run_id="r", playbook="p", playbook_hash="h", state="running", requested_by="cli:alice",
                  trigger="cli", started_at=datetime(2026, 12, 4, tzinfo=UTC), steps=[StepStatus(id="s", action="core.log")]),
        {"any": ["json", 1, None]},
        b"raw bytes",
        None,
    ]
    workflow = WorkflowSerializationContext(namespace="default", workflow_id="run-1")
    activity = ActivitySerializationContext(
        namespace="default", workflow_id="run-1", workflow_type="PlaybookRun", activity_type="http.request",
        activity_task_queue="tq", is_local=False, activity_id="1",
    )
    for converter in (pydantic_data_converter, shared_data_converter()):
        plain = await converter.encode(values)
        for context in (workflow, activity):
            assert await converter.with_context(context).encode(values) == plain


def shared_data_converter() -> DataConverter:
    return dataclasses.replace(pydantic_data_converter, payload_converter_class=SharedPayloadConverter)


class _Spy(WorkflowRunner):
    """The sandbox, counting the context lookups its instances are asked for."""

    def __init__(self) -> None:
        self.inner = workflow_runner()
        self.asked = 0

    def prepare_workflow(self, defn: Any) -> None:
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        instance = self.inner.create_instance(det)
        original = instance.get_serialization_context

        def counted(command_info: Any) -> Any:
            self.asked += 1
            return original(command_info)

        instance.get_serialization_context = counted  # type: ignore[method-assign]
        return instance

    def set_worker_level_failure_exception_types(self, types: Sequence[type[BaseException]]) -> None:
        self.inner.set_worker_level_failure_exception_types(types)


async def test_runs_never_ask_the_sandbox_for_a_context(dev_env, monkeypatch):
    """A run with activities, an approval vote (an update) and local activities completes under
    ContextBlindRunner, and not one payload's context lookup enters the sandbox; the plain sandbox
    asks for every payload."""
    rec = Recorder()
    blind, plain = _Spy(), _Spy()
    for runner in (ContextBlindRunner(blind), plain):
        monkeypatch.setattr(worker_module, "workflow_runner", lambda converter, runner=runner: runner)
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", rec.activities() + policy(APPROVAL)) as w:
            handle = await dev_env.client.start_workflow(PlaybookRun.run, gated("carl"), id=f"run-{uuid.uuid4()}",
                                                         task_queue=w.task_queue)
            await wait_for_state(handle, lambda s: s.state == "waiting_approval")
            await handle.execute_update(PlaybookRun.vote, vote("risky", "dana"))
            await handle.execute_update(PlaybookRun.vote, vote("risky", "erin"))
            assert (await handle.result()).state == "completed"
    assert blind.asked == 0
    assert plain.asked > 10  # every payload of every activation and completion, three passes each


async def test_the_worker_is_blind_only_when_its_converter_is(dev_env):
    rec = Recorder()
    async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", rec.activities()) as w:
        assert isinstance(w.config()["workflow_runner"], ContextBlindRunner)
        handle = await dev_env.client.start_workflow(PlaybookRun.run, run_input(playbook(TWO_STEPS)),
                                                     id=f"run-{uuid.uuid4()}", task_queue=w.task_queue)
        assert (await handle.result()).state == "completed"
    config = dev_env.client.config()
    config["data_converter"] = dataclasses.replace(pydantic_data_converter, payload_codec=_Identity())
    with_codec = Client(**config)
    async with make_worker(with_codec, f"tq-{uuid.uuid4()}", rec.activities()) as w:
        assert isinstance(w.config()["workflow_runner"], SandboxedWorkflowRunner)
        handle = await with_codec.start_workflow(PlaybookRun.run, run_input(playbook(TWO_STEPS)),
                                                 id=f"run-{uuid.uuid4()}", task_queue=w.task_queue)
        assert (await handle.result()).state == "completed"
