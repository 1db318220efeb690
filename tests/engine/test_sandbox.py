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
from bot.engine import sandbox
from bot.engine.sandbox import ContextBlindRunner, context_blind, skip_plain_payload_passes, workflow_runner
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


def _with_the_sdks_passes(monkeypatch: Any) -> None:
    """The SDK's payload passes back in place for this test, plain converter or not."""
    from temporalio.bridge import worker as bridge

    for name, original in sandbox._SDK_PASSES.items():
        monkeypatch.setattr(bridge, name, original)


async def test_runs_never_ask_the_sandbox_for_a_context(dev_env, monkeypatch):
    """A run with activities, an approval vote (an update) and local activities completes under
    ContextBlindRunner, and not one payload's context lookup enters the sandbox; the plain sandbox
    is asked for every payload (by the SDK's payload passes, which a plain worker now skips too:
    put back here, to show what the runner alone saves)."""
    _with_the_sdks_passes(monkeypatch)
    rec = Recorder()
    restrictions = workflow_runner().restrictions
    blind, plain = _CountingBlind(restrictions=restrictions), _Counting(restrictions=restrictions)
    for runner in (blind, plain):
        monkeypatch.setattr(worker_module, "workflow_runner", lambda converter, on_instance=None, runner=runner: runner)
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", rec.activities() + policy(APPROVAL)) as w:
            assert w.config()["workflow_runner"] is runner
            handle = await dev_env.client.start_workflow(PlaybookRun.run, gated("cli:carl"), id=f"run-{uuid.uuid4()}",
                                                         task_queue=w.task_queue)
            await wait_for_state(handle, lambda s: s.state == "waiting_approval")
            await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:dana"))
            await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:erin"))
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


class _Marking(PayloadCodec):
    """A codec whose encoding is visible in history: every payload's data reversed, marked."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [Payload(metadata={**p.metadata, "reversed": b"1"}, data=p.data[::-1]) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            metadata = {k: v for k, v in p.metadata.items() if k != "reversed"}
            out.append(Payload(metadata=metadata, data=p.data[::-1]) if "reversed" in p.metadata else p)
        return out


async def test_the_sdks_payload_passes_run_only_for_a_converter_that_has_a_codec(dev_env, monkeypatch):
    """With the passes left out for plain converters (process-wide once any plain worker is made),
    a plain worker's runs never reach them, and a worker with a codec still has every payload
    encoded and decoded: its run completes and its history holds only encoded payloads."""
    assert skip_plain_payload_passes()
    reached: list[str] = []
    for name, original in list(sandbox._SDK_PASSES.items()):
        async def counted(*args: Any, name: str = name, original: Any = original, **kwargs: Any) -> Any:
            reached.append(name)
            return await original(*args, **kwargs)
        monkeypatch.setitem(sandbox._SDK_PASSES, name, counted)
    rec = Recorder()
    async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", rec.activities()) as w:
        handle = await dev_env.client.start_workflow(PlaybookRun.run, run_input(playbook(TWO_STEPS)),
                                                     id=f"run-{uuid.uuid4()}", task_queue=w.task_queue)
        assert (await handle.result()).state == "completed"
    assert reached == [], "a plain worker's activations went through the SDK's passes"

    config = dev_env.client.config()
    config["data_converter"] = dataclasses.replace(pydantic_data_converter, payload_codec=_Marking())
    with_codec = Client(**config)
    async with make_worker(with_codec, f"tq-{uuid.uuid4()}", rec.activities()) as w:
        handle = await with_codec.start_workflow(PlaybookRun.run, run_input(playbook(TWO_STEPS)),
                                                 id=f"run-{uuid.uuid4()}", task_queue=w.task_queue)
        assert (await handle.result()).state == "completed"
    assert {"decode_activation", "encode_completion"} <= set(reached)
    history = await handle.fetch_history()
    completed = [e for e in history.events if e.HasField("workflow_execution_completed_event_attributes")]
    [result] = completed[0].workflow_execution_completed_event_attributes.result.payloads
    assert result.metadata.get("reversed") == b"1", "the run's result was not encoded by its codec"


def test_an_sdk_whose_passes_have_another_shape_keeps_them(monkeypatch):
    """Written against temporalio 1.x's decode_activation/encode_completion: a release that changed
    their parameters keeps its own passes (nothing replaced, False)."""
    from temporalio.bridge import worker as bridge

    async def changed(activation: Any, data_converter: Any, *, options: Any = None) -> None:
        return None

    monkeypatch.setattr(sandbox, "_SDK_PASSES", {})
    monkeypatch.setattr(bridge, "decode_activation", changed)
    assert skip_plain_payload_passes() is False
    assert bridge.decode_activation is changed and sandbox._SDK_PASSES == {}
