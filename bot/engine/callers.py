"""Which workflows the worker's activities act for: the bot's own, on the worker's own queue.

An activity runs for whatever workflow schedules it on the worker's task queue, and anyone who can
reach the namespace can run a worker of their own whose workflow does just that: `http.request`
with a URL of their choosing, and admission, the policy gate and approvals, which all live in
PlaybookRun, never happen (tests/security/test_raw_temporal.py). So before an activity runs, the
worker asks Temporal about the workflow that scheduled it: it must be of a type this worker runs,
with its tasks on this worker's queue, where the bot's code answers them. Its answer is kept per
execution (a workflow's type and queue never change).

Local activities are not asked about: only the workflow code of the worker that runs them can
schedule them. What this does not stop is a worker of someone else's polling the bot's own queue
and answering a PlaybookRun's tasks with its own code: namespace access control is the boundary
for that (docs/security.md, "What access to Temporal grants").
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

log = structlog.get_logger(__name__)

CALLER_REFUSED = "CallerRefused"
CALLER_UNKNOWN = "CallerUnknown"
KEPT = 4096  # executions whose answer is kept


class OwnWorkflowsOnly(Interceptor):
    """Runs an activity only for a workflow of `types` whose tasks go to the activity's own queue."""

    def __init__(self, types: Iterable[str]) -> None:
        self.types = frozenset(types)
        self._vouched: OrderedDict[tuple[str, str], None] = OrderedDict()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Checked(next, self)

    async def check(self, info: activity.Info) -> None:
        if info.is_local:
            return
        key = (info.workflow_id or "", info.workflow_run_id or "")
        if key in self._vouched:
            self._vouched.move_to_end(key)
            return
        try:
            desc = await activity.client().get_workflow_handle(key[0], run_id=key[1]).describe()
        except RPCError as exc:  # retried: whether to act cannot be decided without the answer
            raise ApplicationError(
                f"{info.activity_type}: cannot tell which workflow scheduled it ({exc}); not acting until Temporal says",
                type=CALLER_UNKNOWN,
            ) from None
        problem = None
        if desc.workflow_type not in self.types:
            problem = f"it is a {desc.workflow_type!r} workflow, which this worker does not run"
        elif desc.task_queue != info.task_queue:
            problem = f"its tasks go to queue {desc.task_queue!r}, not this worker's {info.task_queue!r}"
        if problem is not None:
            log.error("activity refused: its workflow is not one of the bot's", activity=info.activity_type,
                      workflow_id=key[0], workflow_run_id=key[1], reason=problem)
            raise ApplicationError(
                f"{info.activity_type} refused: the workflow that scheduled it ({key[0]}) is not one of the bot's: {problem}",
                type=CALLER_REFUSED,
                non_retryable=True,
            )
        self._vouched[key] = None
        if len(self._vouched) > KEPT:
            self._vouched.popitem(last=False)


class _Checked(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, callers: OwnWorkflowsOnly) -> None:
        super().__init__(next)
        self.callers = callers

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        await self.callers.check(activity.info())
        return await self.next.execute_activity(input)
