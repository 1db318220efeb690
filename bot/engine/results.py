"""A regular activity's result, read by workflow code: one that does not read fails the activity, not the run.

Workflow code (deterministic). A plain Temporal client can complete any pending activity by id with
any payload. Given a result type, the SDK decodes the result before the workflow's code sees it,
and one that does not decode (not JSON, not the model, `null`) fails the workflow task, again on
every replay: the run never goes on, never rolls back and never ends (review, stop 51). So the run
asks for the payload as it is (`RawValue`) and reads it with the same converter, a genuine result
(replays included) as before; one that does not read is the activity's failure (non-retryable), which
each caller already reads as it reads any other: a step fails, a policy question is denied, a
question retried without limit is asked again.
"""

from __future__ import annotations

from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

T = TypeVar("T")
RESULT_UNREADABLE = "ResultUnreadable"


async def execute(activity: str, arg: Any, result_type: type[T], **options: Any) -> T:
    """`workflow.execute_activity(activity, arg, result_type=result_type, **options)`, whose result
    is read here: one that is not a `result_type` raises ActivityError (cause ApplicationError
    RESULT_UNREADABLE)."""
    raw = await workflow.execute_activity(activity, arg, result_type=RawValue, **options)
    return read(raw, result_type, activity, options.get("activity_id") or "")


async def execute_unread(activity: str, arg: Any, **options: Any) -> None:
    """An activity whose result the run does not use: not read at all, so none can fail the run."""
    await workflow.execute_activity(activity, arg, result_type=RawValue, **options)


def read(raw: Any, result_type: type[T], activity: str, activity_id: str = "") -> T:
    try:
        value = workflow.payload_converter().from_payload(raw.payload, result_type)
        if not isinstance(value, result_type):
            raise TypeError(f"{type(value).__name__}, not {result_type.__name__}")
    except Exception as exc:  # noqa: BLE001  (pydantic's ValidationError, a payload of another encoding, ...)
        raise failed_activity(f"{activity}: a result that is not one", activity, activity_id, ApplicationError(
            f"{activity} was answered with something no worker of the bot returns ({str(exc)[:200]}): refused",
            type=RESULT_UNREADABLE, non_retryable=True,
        ))  # (no `from`: that would replace the cause every caller reads)
    return value


def failed_activity(message: str, activity: str, activity_id: str, cause: FailureError) -> ActivityError:
    """An activity's failure as the SDK raises one (ActivityError, `cause` its reason), for a failure
    the run itself finds in what came back: every caller then reads it as it reads the SDK's own."""
    error = ActivityError(message, scheduled_event_id=0, started_event_id=0, identity="", activity_type=activity,
                          activity_id=activity_id, retry_state=None)
    error.__cause__ = cause
    return error
