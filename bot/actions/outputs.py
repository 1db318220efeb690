"""A large step output goes to the audit trail, not into the run's workflow state.

Above `inline_max` bytes of canonical JSON the action's activity writes the full (masked) output
as a `step_output` event and returns to the workflow only a reference (event id, sha256, size), a
preview, and the values later templates of the playbook read (bot/playbook/outputs.py). So a run of
chatty steps stays far under Temporal's payload limits, and its trail holds every byte.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bot.actions.base import ActionInput, OutputRef
from bot.audit.events import EventKind, canonical_json
from bot.audit.recorder import AUDIT_UNAVAILABLE, AuditWriter, event
from bot.playbook.outputs import json_size, kept

log = structlog.get_logger(__name__)

INLINE_MAX = 16 * 1024
PREVIEW_BYTES = 1024
STORE_TRIES = 5  # writes of one output within an attempt, before the attempt fails retryable
STORE_BACKOFF = 0.5  # seconds, doubled per try up to STORE_BACKOFF_MAX: the attempt gives the store ~6 s
STORE_BACKOFF_MAX = 2.0  # well inside the 10 s heartbeat timeout, with a write that waits on a lock
OUTPUT_UNAVAILABLE = AUDIT_UNAVAILABLE  # the same retryable failure as any audit write that cannot land


@dataclass(frozen=True)
class OutputLimits:
    """PLAYBOOK_BOT_OUTPUT_INLINE_MAX and PLAYBOOK_BOT_OUTPUT_PREVIEW_BYTES, as the worker read them."""

    inline_max: int = INLINE_MAX
    preview_bytes: int = PREVIEW_BYTES


async def settle_output(
    output: dict[str, Any], input: ActionInput, attempt: int, audit: AuditWriter, limits: OutputLimits
) -> tuple[dict[str, Any], OutputRef | None]:
    """(what the workflow keeps, the reference to the whole) for an action's masked output.

    Small outputs, runs that say nothing of what they read (started before this), and workers
    without a store keep the output whole, as before. A large one is written first; a store that
    stays down fails the attempt retryable (its action runs again under the same idempotency key),
    as a `step_started` that cannot be written does: the step is never left without its output.
    """
    if input.keep is None or audit.store is None:
        return output, None
    try:
        text = canonical_json(output)
    except ValueError:  # NaN or Infinity: not JSON the trail can hold; measured as Temporal sends it
        text = None
    size = len(text.encode()) if text is not None else json_size(output)
    if size <= limits.inline_max:
        return output, None
    if text is None:
        raise ApplicationError(
            f"step {input.step_id}: its output is {size} bytes, over the {limits.inline_max}-byte limit of outputs "
            "kept in the run's state, and holds NaN or Infinity, which the audit trail cannot store: have the "
            "action return plain JSON",
            type="OutputNotJson",
            non_retryable=True,
        )
    digest = hashlib.sha256(text.encode()).hexdigest()
    role = "undo" if input.compensation else ("fallback" if input.idempotency_key.endswith(":fallback") else "do")
    execution = activity.info().workflow_run_id.replace("-", "")
    stored = event(
        input.run_id, input.step_id, EventKind.step_output,
        {"action": input.action, "attempt": attempt, "size": size, "sha256": digest, "output": output},
        key=f"{execution}:{role}:{attempt}",
    )
    await _write(audit, stored, input.step_id, size)
    ref = OutputRef(event_id=stored.event_id, sha256=digest, size=size, preview=_preview(text, limits.preview_bytes))
    keep = kept(output, input.keep)
    if input.keep.whole:
        ref.refused = (
            f"its output is {size} bytes, over the {limits.inline_max}-byte limit of outputs "
            f"kept in the run's state (PLAYBOOK_BOT_OUTPUT_INLINE_MAX), and a template of this playbook reads it "
            f"as a whole (steps.{_inner(input.step_id)}.output, a computed key, or `steps` itself): read only the "
            f"fields it needs (steps.{_inner(input.step_id)}.output.<field>); the full output is audit event "
            f"{stored.event_id}"
        )
        return {}, ref
    kept_size = json_size(keep)
    if kept_size > limits.inline_max:
        paths = ", ".join(".".join(p) for p in input.keep.paths) or "(none)"
        ref.refused = (
            f"the fields of its output that templates read ({paths}) are {kept_size} bytes, "
            f"over the {limits.inline_max}-byte limit of outputs kept in the run's state "
            f"(PLAYBOOK_BOT_OUTPUT_INLINE_MAX): read smaller fields; the full output is audit event {stored.event_id}"
        )
        return {}, ref
    return keep, ref


async def _write(audit: AuditWriter, stored: Any, step_id: str, size: int) -> None:
    delay = STORE_BACKOFF
    for tries in range(1, STORE_TRIES + 1):
        try:
            await audit.write([stored])
            return
        except ApplicationError as exc:
            if tries == STORE_TRIES:
                raise ApplicationError(
                    f"step {step_id}: its output ({size} bytes) must go to the audit trail and the store is "
                    f"unavailable ({exc.message}); the attempt is retried, and its action runs again under the same "
                    "idempotency key",
                    type=OUTPUT_UNAVAILABLE,
                ) from None
            log.warning("step output not stored yet; trying again", error=exc.message, tries=tries)
        activity.heartbeat()
        await asyncio.sleep(delay)
        delay = min(delay * 2, STORE_BACKOFF_MAX)


def _preview(text: str, limit: int) -> str:
    """The first `limit` bytes of the canonical JSON, cut at a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


def _inner(step_id: str) -> str:
    return step_id.rpartition(".")[2] if "[" in step_id else step_id
