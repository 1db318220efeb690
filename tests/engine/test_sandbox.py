"""The worker's workflow runner: the sandbox, minus its per-payload context lookups where no codec
or external storage reads them (bot/engine/sandbox.py)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from bot.engine import worker as worker_module
from bot.engine.sandbox import ContextBlindRunner, context_blind, workflow_runner
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


def test_only_a_worker_without_codec_or_external_storage_is_context_blind():
    assert context_blind(pydantic_data_converter)
    assert context_blind(DataConverter.default)
    assert not context_blind(dataclasses.replace(pydantic_data_converter, payload_codec=_Identity()))
    assert type(workflow_runner(pydantic_data_converter)) is ContextBlindRunner
    assert type(workflow_runner(dataclasses.replace(pydantic_data_converter, payload_codec=_Identity()))) \
        is SandboxedWorkflowRunner
    assert type(workflow_runner()) is SandboxedWorkflowRunner


def test_the_sdks_own_adjustments_of_a_sandbox_keep_it_context_blind():
    """Debug mode and plugins add passthrough modules with dataclasses.replace on whatever is a
    SandboxedWorkflowRunner: the blind runner is one, and stays blind."""
    runner = workflow_runner(pydantic_data_converter)
    adjusted = dataclasses.replace(runner, restrictions=runner.restrictions.with_passthrough_modules("_pydevd_bundle"))
    assert isinstance(runner, SandboxedWorkflowRunner) and type(adjusted) is ContextBlindRunner


@dataclass(frozen=True)
class _Counting(SandboxedWorkflowRunner):
    """The sandbox, counting the context lookups (serialization, external store) its instances are asked for."""

    asked: list[int] = field(default_factory=list, compare=False)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        instance = super().create_instance(det)
        for name in ("get_serialization_context", "get_external_store_context"):
            original = getattr(instance, name)

            def counted(command_info: Any, original: Any = original) -> Any:
                self.asked.append(1)
                return original(command_info)

            setattr(instance, name, counted)
        return instance


@dataclass(frozen=True)
class _CountingBlind(ContextBlindRunner, _Counting):
    """ContextBlindRunner over the counting sandbox: what it lets through to the sandbox is counted."""


async def test_runs_never_ask_the_sandbox_for_a_context(dev_env, monkeypatch):
    """A run with activities, an approval vote (an update) and local activities completes under
    ContextBlindRunner, and not one payload's context lookup enters the sandbox; the plain sandbox
    is asked for every payload."""
    rec = Recorder()
    restrictions = workflow_runner().restrictions
    blind, plain = _CountingBlind(restrictions=restrictions), _Counting(restrictions=restrictions)
    for runner in (blind, plain):
        monkeypatch.setattr(worker_module, "workflow_runner", lambda converter, runner=runner: runner)
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", rec.activities() + policy(APPROVAL)) as w:
            assert w.config()["workflow_runner"] is runner
            handle = await dev_env.client.start_workflow(PlaybookRun.run, gated("carl"), id=f"run-{uuid.uuid4()}",
                                                         task_queue=w.task_queue)
            await wait_for_state(handle, lambda s: s.state == "waiting_approval")
            await handle.execute_update(PlaybookRun.vote, vote("risky", "dana"))
            await handle.execute_update(PlaybookRun.vote, vote("risky", "erin"))
            assert (await handle.result()).state == "completed"
    assert blind.asked == []
    assert len(plain.asked) > 10  # every payload of every activation and completion, three passes each


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
        assert type(w.config()["workflow_runner"]) is SandboxedWorkflowRunner
        handle = await with_codec.start_workflow(PlaybookRun.run, run_input(playbook(TWO_STEPS)),
                                                 id=f"run-{uuid.uuid4()}", task_queue=w.task_queue)
        assert (await handle.result()).state == "completed"
