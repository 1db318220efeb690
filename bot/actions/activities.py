"""Turn registered action methods into Temporal activities, one activity type per action name.

The wrapper does what every action needs and none should repeat: validate params, resolve
secret markers (declared ones only), heartbeat (so a cancel or a dead worker is noticed in
seconds, not at the step timeout), bind log context, mask every known secret value (in its
encoded forms too) in output and errors, and report the attempt number.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
import contextlib
from typing import Any, Callable, Iterable

import structlog
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bot.actions.base import (
    ACTION_FAILED,
    ActionContext,
    ActionInput,
    ActionResult,
    ActionSpec,
    InvalidParams,
    spec_of,
)
from bot.actions.outputs import OutputLimits, settle_output
from bot.actions.secrets import SecretStore
from bot.audit.events import AuditEvent, EventKind
from bot.audit.recorder import AuditWriter, event
from bot.metrics import STEP_DURATION
from bot.playbook.data import value_depth, without_surrogates
from bot.playbook.templating import display

log = structlog.get_logger(__name__)

HEARTBEAT_EVERY = 1.0  # the SDK throttles the real sends to 80% of the heartbeat timeout
# How deep an action's output may nest. What a target answers is the target's to choose, and the
# workflow decodes results with pydantic, which stops at 200 levels: a deeper result is a workflow
# task that fails for ever, its run stuck with nothing rolled back. So a deeper output fails the
# step here (a failure's output is left out), with room under 200 for the levels around an output
# (the run's status, a parent's report of its sub-playbooks, CHILD_DEPTH_MAX of them).
OUTPUT_MAX_DEPTH = 64
OUTPUT_TOO_DEEP = "OutputTooDeep"


def describe_validation_error(action: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(params)"
        problems.append(f"{where}: {err['msg']}")
    return f"{action}: bad params: " + "; ".join(problems)


async def _heartbeat_forever(noted: list[Any]) -> None:
    """Beat from the first second on: quick actions send none, long ones hear a cancel fast. Each
    beat carries what the action noted (ActionContext.note): a beat without it would erase it."""
    while True:
        await asyncio.sleep(HEARTBEAT_EVERY)
        activity.heartbeat(*noted)


def _noter(noted: list[Any]) -> Callable[[Any], None]:
    def note(value: Any) -> None:
        noted[:] = [value]
        activity.heartbeat(value)  # now: the answer that a retry would need may be lost next

    return note


def started_event(input: ActionInput, attempt: int, ts: datetime | None = None) -> AuditEvent:
    """`step_started` (or `compensation_started`); the workflow builds the same event (same id)
    for an unrecorded attempt that ended without handing its own back (a timeout, a cancel)."""
    kind = EventKind.compensation_started if input.compensation else EventKind.step_started
    args = display(input.params)  # `${secret:NAME}`, as status and policy show it
    return event(input.run_id, input.step_id, kind, {"action": input.action, "attempt": attempt, "args": args},
                 ts=ts, execution=input.execution)


def _succeeded(input: ActionInput, attempt: int) -> AuditEvent:
    kind = EventKind.compensation_succeeded if input.compensation else EventKind.step_succeeded
    return event(input.run_id, input.step_id, kind, {"action": input.action, "attempts": attempt},
                 execution=input.execution)


async def _record_success(audit: AuditWriter, input: ActionInput, attempt: int) -> bool:
    """Write the success events the workflow asked for (the last step closes the run's record).

    Usually there are none: a step's success rides on the next activity's first write, which is
    cheaper than a second write here. After the action acted, a failed write must not make it act
    again, so it is reported (audited=False: the workflow queues the events), never raised.
    """
    if not input.audit_after:
        return False
    try:
        now = datetime.now(timezone.utc)  # stamped when it happened, not when it was planned
        after = [e.model_copy(update={"ts": now}) for e in input.audit_after]
        await audit.write([_succeeded(input, attempt), *after])
    except ApplicationError as exc:
        log.error("audit write after success failed; the workflow will record it", error=exc.message)
        return False
    return audit.store is not None


def _wrap(
    spec: ActionSpec, method: Callable[..., Any], secrets: SecretStore, audit: AuditWriter, limits: OutputLimits
) -> Callable[..., Any]:
    async def act(input: ActionInput, info: activity.Info) -> Any:
        """The action itself: secrets resolved, params validated, heartbeats, errors masked."""
        try:
            resolved = secrets.resolve(input.params, input.secrets)
            mask = secrets.masker()  # every value the store knows, not only the ones this step uses
        except ApplicationError as exc:  # a missing, undeclared or malformed secret; an unreadable file
            raise _with_attempt(exc, info.attempt) from None
        try:
            params = spec.params.model_validate(resolved)
        except ValidationError as exc:
            error: ApplicationError = InvalidParams(mask(describe_validation_error(spec.name, exc)))
            raise _with_attempt(error, info.attempt) from None
        earlier = list(info.heartbeat_details[:1])  # what an earlier attempt noted, kept by each beat
        ctx = ActionContext(
            run_id=input.run_id,
            step_id=input.step_id,
            playbook=input.playbook,
            idempotency_key=input.idempotency_key,
            attempt=info.attempt,
            compensation=input.compensation,
            mask=mask,
            noted=earlier[0] if earlier else None,
            note=_noter(earlier),
        )
        beat = asyncio.create_task(_heartbeat_forever(earlier)) if info.heartbeat_timeout else None
        started, outcome = time.monotonic(), "failed"
        try:
            output = await method(params, ctx)
            outcome = "succeeded"
        except ApplicationError as exc:
            log.warning("action failed", error=mask(str(exc)), error_type=exc.type)
            said = without_surrogates(_first_detail(exc))
            if value_depth(said, OUTPUT_MAX_DEPTH) > OUTPUT_MAX_DEPTH:
                said = {"left_out": f"the failure's output nests more than {OUTPUT_MAX_DEPTH} levels deep"}
            raise ApplicationError(
                mask(exc.message),
                {"attempt": info.attempt, "output": mask(said)},
                type=exc.type,
                non_retryable=exc.non_retryable,
            ) from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            log.info("action cancelled")
            raise
        except Exception as exc:  # an action bug or an unexpected client error: retry it, say what it was
            message = mask(f"{spec.name}: {type(exc).__name__}: {exc}")
            log.warning("action failed", error=message)
            raise ApplicationError(message, {"attempt": info.attempt}, type=ACTION_FAILED) from None
        finally:
            STEP_DURATION.labels(spec.name, outcome).observe(time.monotonic() - started)
            if beat:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
        if value_depth(output, OUTPUT_MAX_DEPTH) > OUTPUT_MAX_DEPTH:
            message = (f"{spec.name}: its output nests more than {OUTPUT_MAX_DEPTH} levels deep, more than a run "
                       "keeps; the action acted, but the step fails: have it return flatter data")
            log.warning("action output refused", error=message)
            raise ApplicationError(message, {"attempt": info.attempt}, type=OUTPUT_TOO_DEEP, non_retryable=True)
        return mask(without_surrogates(output or {}))

    async def run(input: ActionInput) -> ActionResult:
        info = activity.info()
        with structlog.contextvars.bound_contextvars(
            run_id=input.run_id, step_id=input.step_id, playbook=input.playbook, action=spec.name, attempt=info.attempt
        ):
            record = [*input.audit, started_event(input, info.attempt)]

            def own(unrecorded: list[AuditEvent] | None) -> list[AuditEvent] | None:
                # its own; the workflow still holds what it handed
                return unrecorded[len(input.audit):] if unrecorded is not None else None

            if input.audit_mode == "try":
                # Allowed to act unrecorded (an undo, a low-impact step), so it does not wait for the
                # store either: the record is written while the action acts (issue 17: no store
                # round trip between the workflow's task and the action), and waited for after it.
                writing: asyncio.Task[list[AuditEvent] | None] | None = asyncio.create_task(
                    audit.write_as("try", record))
                unrecorded = None
            else:
                # The record comes first: if it cannot be written the action does not run (retried),
                # unless the workflow deferred it (the store is down or being flushed).
                writing, unrecorded = None, own(await audit.write_as(input.audit_mode, record))
            try:
                output = await act(input, info)
            except ApplicationError as exc:
                if writing is not None:
                    unrecorded = own(await writing)
                if unrecorded is None:
                    raise
                raise _with_unrecorded(exc, unrecorded) from None
            # (cancelled: a write under way goes on by itself; event ids make the workflow's rewrite a no-op)
            if writing is not None:
                unrecorded = own(await writing)  # before anything after the action is written
            # A large output goes to the trail first (bot/actions/outputs.py); one the run cannot
            # keep fails the step in the workflow, so its success is not written here.
            output, stored = await settle_output(output, input, info.attempt, audit, limits)
            if unrecorded is not None:  # the store is down: the success is the workflow's to record
                return ActionResult(output=output, attempt=info.attempt, unrecorded=unrecorded, stored=stored)
            refused = stored is not None and stored.refused is not None
            audited = False if refused else await _record_success(audit, input, info.attempt)
            return ActionResult(output=output, attempt=info.attempt, audited=audited, stored=stored)

    run.__name__ = run.__qualname__ = spec.name.replace(".", "_")
    return activity.defn(name=spec.name)(run)


def _with_unrecorded(exc: ApplicationError, unrecorded: list[AuditEvent]) -> ApplicationError:
    """The same failure, carrying the events it could not write (it acted unrecorded): the
    workflow keeps them, so the attempt is on the record once the store is back."""
    first = _first_detail(exc)
    details = dict(first) if isinstance(first, dict) else {}
    details["unrecorded"] = [e.model_dump(mode="json") for e in unrecorded]
    return ApplicationError(exc.message, details, type=exc.type, non_retryable=exc.non_retryable)


def _with_attempt(exc: ApplicationError, attempt: int) -> ApplicationError:
    """The same error, saying which attempt it ended (so status shows 1, not max_attempts)."""
    return ApplicationError(exc.message, {"attempt": attempt}, type=exc.type, non_retryable=exc.non_retryable)


def _first_detail(exc: ApplicationError) -> Any:
    return exc.details[0] if exc.details else {}


def build_activities(
    providers: Iterable[object], secrets: SecretStore, audit: AuditWriter | None = None,
    limits: OutputLimits = OutputLimits(),
) -> list[Callable[..., Any]]:
    """Every `@action` method of the given provider objects, as Temporal activities."""
    writer = audit or AuditWriter(None)
    out = []
    for provider in providers:
        for name in dir(type(provider)):
            spec = spec_of(getattr(type(provider), name, None))
            if spec is not None:
                out.append(_wrap(spec, getattr(provider, name), secrets, writer, limits))
    return out
