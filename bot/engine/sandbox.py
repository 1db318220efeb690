"""The workflow sandbox as the worker runs it, without its per-payload cost where that buys nothing.

Before the worker runs a payload codec or external storage over an activation's payloads, the SDK
asks the workflow instance which serialization context applies (so a codec could, say, pick a key
per activity). The sandboxed instance answers by `exec`-ing a source string inside the sandbox: it
compiles and runs it for every payload of every activation and completion, three passes each
(codec references, external storage, codec), even with neither configured. Profiled under the
alert storm (issue 15), that was 4 of the worker's 18 busy seconds, as much as all the workflow
code it ran.

It asks for the external-storage context the same way, per run. Those answers are read by
nothing else: the payload and failure converters inside the sandbox keep their own contexts. So
with no codec and no external storage (ours), `ContextBlindRunner` answers both itself ("no
context", "no store"); the workflow code still runs in the sandbox, exactly as before, determinism
checks included. A deployment that brings a codec or external storage gets the sandbox's answers.

With neither, the passes themselves do nothing either (each walks the activation or completion
and hands its payloads to a function that returns them as they are): `skip_plain_payload_passes`
leaves them out, a tenth of the worker's busy time under a burst of runs.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    SerializationContext,
    JSONPlainPayloadConverter,
    StorageDriverStoreContext,
)
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.workflow import Info

PASSTHROUGH = ("bot", "pydantic", "pydantic_core", "jinja2", "markupsafe", "structlog", "yaml")

# One pydantic JSON converter for the whole worker process: the SDK builds a new payload converter
# for every workflow run, and each new pydantic one starts with an empty TypeAdapter cache, so every
# run rebuilt the adapters of RunInput, Admission, ActionResult... (pydantic schema generation).
# Wire format unchanged (json/plain, as `pydantic_data_converter`); the cache is thread-safe.
_SHARED_JSON = PydanticJSONPlainPayloadConverter(max_cached_type_adapters=256)
# (the SDK's defaults, the converters chosen from them): chosen again only if the defaults change.
_chosen: tuple[Any, tuple[Any, ...]] = (None, ())


class SharedPayloadConverter(CompositePayloadConverter):
    """`PydanticPayloadConverter` whose JSON converter (and its TypeAdapter cache) is shared by every run."""

    def __init__(self) -> None:
        global _chosen
        defaults = DefaultPayloadConverter.default_encoding_payload_converters
        if _chosen[0] is not defaults:  # the SDK builds one several times per run: choose once
            _chosen = (defaults, tuple(_SHARED_JSON if isinstance(c, JSONPlainPayloadConverter) else c
                                       for c in defaults))
        super().__init__(*_chosen[1])


def shared_converter(client: Client) -> Client:
    """The same client with SharedPayloadConverter in place of the stock pydantic one (any other
    converter is left alone: a test or deployment that brings its own keeps it)."""
    config = client.config()
    converter = config["data_converter"]
    if converter.payload_converter_class is not PydanticPayloadConverter:
        return client
    config["data_converter"] = dataclasses.replace(converter, payload_converter_class=SharedPayloadConverter)
    return Client(**config)


def workflow_runner(converter: DataConverter | None = None,
                    on_instance: Callable[[str, str, str], None] | None = None) -> SandboxedWorkflowRunner:
    """The sandbox, with pure, deterministic modules passed through instead of re-imported per run;
    context-blind when `converter` (the worker's) makes no use of serialization contexts. Then
    `on_instance(workflow_id, run_id, workflow_type)` hears of each execution as its instance is
    created, on the worker's event loop, before any of its workflow code runs."""
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
    if converter is not None and context_blind(converter):
        skip_plain_payload_passes()
        return ContextBlindRunner(restrictions=restrictions, on_instance=on_instance)
    return SandboxedWorkflowRunner(restrictions=restrictions)


def context_blind(converter: DataConverter) -> bool:
    """Whether the worker reads no instance's context: no codec and no external storage, the only
    passes that ask (temporalio's `_CommandAwareDataConverter`)."""
    return converter.payload_codec is None and converter.external_storage is None


_NO_STORE = StorageDriverStoreContext(target=None)  # what the sandbox itself answers when it has none


@dataclass(frozen=True)
class ContextBlindRunner(SandboxedWorkflowRunner):
    """The sandbox, whose instances answer the SDK's context questions without entering it. A
    SandboxedWorkflowRunner still, so the SDK's own adjustments of a sandbox (debug mode's
    passthrough, a plugin's) apply to it and keep its type."""

    on_instance: Callable[[str, str, str], None] | None = None

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        if self.on_instance is not None:
            self.on_instance(det.info.workflow_id, det.info.run_id, det.info.workflow_type)
        return _ContextBlindInstance(super().create_instance(det))


class _ContextBlindInstance(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance) -> None:
        self.inner = inner

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        return self.inner.activate(act)

    def get_serialization_context(self, command_info: Any) -> SerializationContext | None:
        return None  # no codec reads it (context_blind)

    def get_external_store_context(self, command_info: Any) -> StorageDriverStoreContext:
        return _NO_STORE  # read only by external storage, which context_blind excludes

    def get_info(self) -> Info:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()


_SDK_PASSES: dict[str, Any] = {}  # temporalio's decode_activation and encode_completion, once replaced
_SDK_SHAPES = {  # their parameters, as written against (temporalio 1.x); another shape is left alone
    "decode_activation": ("activation", "data_converter", "decode_headers", "storage_concurrency_limit"),
    "encode_completion": ("completion", "data_converter", "encode_headers", "storage_concurrency_limit"),
}


def _parameters(function: Any) -> tuple[str, ...] | None:
    if not callable(function):
        return None
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def skip_plain_payload_passes() -> bool:
    """Leave out the SDK's payload passes over each activation and completion whose converter has
    neither a codec nor external storage (`context_blind`). Each pass then hands every payload
    list to a function that returns it unchanged, or (the reference passes) that only refuses a
    payload marked as an external-storage reference: such a payload is then read as what it
    carries, which its sender could have sent unmarked anyway. Profiled under the Slack ack burst,
    the five passes were a tenth of the worker's busy time (issue 15). A converter with a codec or
    external storage gets the SDK's passes. Process-wide and idempotent; False, nothing changed,
    when the SDK's functions are missing or have other parameters than `_SDK_SHAPES`."""
    from temporalio.bridge import worker as bridge  # noqa: PLC0415
    from temporalio.converter import _extstore  # noqa: PLC0415

    if _SDK_PASSES:
        return True
    metrics = getattr(_extstore, "StorageOperationMetrics", None)
    if metrics is None or any(_parameters(getattr(bridge, name, None)) != expected for name, expected in _SDK_SHAPES.items()):
        return False  # not the SDK this was written against: its passes stay
    _SDK_PASSES.update(decode_activation=bridge.decode_activation, encode_completion=bridge.encode_completion)

    async def decode_activation(activation: Any, data_converter: DataConverter, *args: Any, **kwargs: Any) -> Any:
        if context_blind(data_converter):
            return metrics()
        return await _SDK_PASSES["decode_activation"](activation, data_converter, *args, **kwargs)

    async def encode_completion(completion: Any, data_converter: DataConverter, *args: Any, **kwargs: Any) -> Any:
        if context_blind(data_converter):
            return metrics()
        return await _SDK_PASSES["encode_completion"](completion, data_converter, *args, **kwargs)

    bridge.decode_activation, bridge.encode_completion = decode_activation, encode_completion  # type: ignore[assignment]
    return True
