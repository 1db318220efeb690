"""Which workflows the worker's activities act for: the bot's own, on the worker's own queue.

An activity runs for whatever workflow schedules it on the worker's task queue, and anyone who can
reach the namespace can run a worker of their own whose workflow does just that: `http.request`
with a URL of their choosing, and admission, the policy gate and approvals, which all live in
PlaybookRun, never happen (tests/security/test_raw_temporal.py). So before an activity runs, the
worker asks Temporal about the workflow that scheduled it: it must be of a type this worker runs,
with its tasks on this worker's queue, where the bot's code answers them. Its answer is kept per
execution (a workflow's type and queue never change).

Only the workflow code of the worker that runs a local activity can schedule it, but that does
not vouch for its execution: a workflow task can reach this worker on its sticky queue, whose name
the completing worker chooses, so an execution on someone else's queue can have its tasks (and
local activities) run here. The question starts as soon as an execution's first workflow task
reaches this worker (`expect`, from the sandbox runner as it creates the instance, before any of
the run's code runs): the describe runs beside its admission, and what the run does next (its
first step, its record, its Slack message) finds the answer there (issue 17: the describe sat
between an alert and its first action, then inside the admission's local activity).

The same sticky queue lets such an execution's task be answered here, by the bot's code replaying a
history someone else's worker wrote (checked against the dev server: the server sends the task to
whatever sticky queue the previous completion named; tests/security/test_sticky_redirect.py forges
such a history end to end). What that code then schedules as regular activities meets the check
above, which asks Temporal: refused. Its local activities are checked the same way, all but those
whose only effect is their answer (ANSWERING_LOCAL: admission, the lock's check of its messages'
seals and the check of a policy answer's seal, each handed nothing to write). Others write where
others read or trust: the trail (`audit.record`, and a LOCAL_ACTIONS step such as `core.log`, which records itself), Slack as the
bot (`slack.sync`), a seal with the worker's keys (`lock.seal`), or answer from what the execution's
own state supplies (the approver question evaluates the policy on it, a sub-playbook's snapshot
reads the catalog). The list is of those let through, so a local activity added later is checked
unless someone decides otherwise.

What this does not stop is a worker of someone else's polling the bot's own queue and answering a
PlaybookRun's tasks with its own code: namespace access control is the boundary for that
(docs/security.md, "What access to Temporal grants").
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from datetime import timedelta
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Iterable, NoReturn, Sequence

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

if TYPE_CHECKING:
    from temporalio.client import Client

log = structlog.get_logger(__name__)
ADMIT = "run.admit"
# Local activities whose only effect is their answer to the bot's code that asked: not checked, but
# they start the question, so what the execution does next finds the answer. Every other local
# activity is checked as a regular activity is (default deny): a task of an execution on another
# queue can reach this worker by a sticky queue that execution's worker named (docs/security.md),
# and the bot's code would run them for it. One handed audit events to write is checked too.
ANSWERING_LOCAL = frozenset({ADMIT, "lock.verify", "policy.answer_holds"})

CALLER_REFUSED = "CallerRefused"
CALLER_UNKNOWN = "CallerUnknown"
KEPT = 4096  # executions whose answer is kept
ASK_TIMEOUT = timedelta(seconds=5)
ASK_AGAIN = (0.2, 1.0)  # seconds before the second and third tries


class OwnWorkflowsOnly(Interceptor):
    """Runs an activity only for a workflow of `types` whose tasks go to the activity's own queue."""

    def __init__(self, types: Iterable[str], client: Client | None = None) -> None:
        self.types = frozenset(types)
        self.client = client  # for `expect`, which runs outside any activity
        # Temporal's answers: execution -> (workflow type, task queue), which never change.
        self._answers: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        self._asking: dict[tuple[str, str], asyncio.Future[tuple[str, str]]] = {}

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Checked(next, self)

    async def check(self, info: activity.Info, args: Sequence[Any] = ()) -> None:
        """Refuses (CallerRefused) an activity whose workflow is not the bot's on this queue;
        `args`, the activity's. A run's admission (a lock's first check of its messages) starts the
        question early: nearly every run then does something checked (a step, its record, its
        Slack message)."""
        if info.is_local and info.activity_type in ANSWERING_LOCAL and not _writes(args):
            if info.workflow_type in self.types and info.workflow_id and info.workflow_run_id:
                key = (info.workflow_id, info.workflow_run_id)
                self._ask(info, key)  # early, for what the execution does next
                if (answer := self._answers.get(key)) is not None:  # already known not to be ours
                    self._refuse_unless_ours(info, answer)
            return
        if not info.workflow_id or not info.workflow_run_id:
            self._refuse(info, "no workflow scheduled it (a standalone activity)")
        if info.workflow_type not in self.types:  # the server's word: no need to ask
            self._refuse(info, f"it is a {info.workflow_type!r} workflow, which this worker does not run")
        key = (info.workflow_id, info.workflow_run_id)
        answer = self._answers.get(key)
        if answer is None:
            asking = self._ask(info, key)
            assert asking is not None  # (None only for a kept answer)
            answer = await asyncio.shield(asking)
        else:
            self._answers.move_to_end(key)
        self._refuse_unless_ours(info, answer)

    def expect(self, workflow_id: str, run_id: str, workflow_type: str) -> None:
        """An execution of `workflow_type` whose workflow task has just reached this worker: ask
        about it now, so its activities find the answer. Only on the worker's event loop, and only
        with a client; an answer kept or a question under way is not asked again."""
        if self.client is None or workflow_type not in self.types or not workflow_id or not run_id:
            return
        key = (workflow_id, run_id)
        if key in self._answers or key in self._asking:
            return
        self._begin(key, self._describe(workflow_id, run_id, "its activities", self.client))

    def _refuse_unless_ours(self, info: activity.Info, answer: tuple[str, str]) -> None:
        workflow_type, task_queue = answer
        if workflow_type not in self.types:
            self._refuse(info, f"it is a {workflow_type!r} workflow, which this worker does not run")
        if task_queue != info.task_queue:
            self._refuse(info, f"its tasks go to queue {task_queue!r}, not this worker's {info.task_queue!r}")

    def _ask(self, info: activity.Info, key: tuple[str, str]) -> asyncio.Future[tuple[str, str]] | None:
        """The question about `key` under way (one per execution, however many of its activities
        start at once), started if need be; None when its answer is already kept."""
        if key in self._answers:
            return None
        asking = self._asking.get(key)
        if asking is None or _failed(asking):  # (an early question's failure is asked again by the step)
            asking = self._begin(key, self._describe(info.workflow_id or "", info.workflow_run_id, info.activity_type))
        return asking

    def _begin(self, key: tuple[str, str], describing: Coroutine[Any, Any, tuple[str, str]]
               ) -> asyncio.Future[tuple[str, str]]:
        """The question about `key`, under way from now; its answer kept when it comes."""
        asking = self._asking[key] = asyncio.ensure_future(describing)
        asking.add_done_callback(lambda done: self._answered(key, done))
        return asking

    def _answered(self, key: tuple[str, str], done: asyncio.Future[tuple[str, str]]) -> None:
        if self._asking.get(key) is done:
            del self._asking[key]
        if _failed(done):
            return
        self._answers[key] = done.result()
        if len(self._answers) > KEPT:
            self._answers.popitem(last=False)

    @staticmethod
    async def _describe(workflow_id: str, run_id: str | None, asker: str, client: Client | None = None
                        ) -> tuple[str, str]:
        """The workflow's type and task queue, as Temporal records them; a few quick tries, since
        each failed attempt of the activity would count against its step's retries. `asker`: what
        asked (an activity type), for the error; `client`: the activity's own when None."""
        handle = (client or activity.client()).get_workflow_handle(workflow_id, run_id=run_id)
        for wait in (*ASK_AGAIN, None):
            try:
                desc = await handle.describe(rpc_timeout=ASK_TIMEOUT)
                return desc.workflow_type, desc.task_queue
            except RPCError as exc:
                if wait is None or exc.status == RPCStatusCode.NOT_FOUND:
                    raise ApplicationError(
                        f"{asker}: cannot tell which workflow scheduled it ({exc}); "
                        "not acting until Temporal says", type=CALLER_UNKNOWN) from None
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _refuse(self, info: activity.Info, problem: str) -> NoReturn:
        log.error("activity refused: its workflow is not one of the bot's", activity=info.activity_type,
                  workflow_id=info.workflow_id, workflow_run_id=info.workflow_run_id, reason=problem)
        raise ApplicationError(
            f"{info.activity_type} refused: the workflow that scheduled it ({info.workflow_id}) is not one of "
            f"the bot's: {problem}",
            type=CALLER_REFUSED,
            non_retryable=True,
        )


def _writes(args: Sequence[Any]) -> bool:
    """Whether the activity was handed audit events to write (`run.admit` and the policy questions
    take them; the bot's code hands a local one none)."""
    return bool(getattr(args[0], "audit", None)) if args else False


def _failed(future: asyncio.Future[Any]) -> bool:
    """Done without an answer (its exception retrieved, so none goes unread)."""
    return future.done() and (future.cancelled() or future.exception() is not None)


class _Checked(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, callers: OwnWorkflowsOnly) -> None:
        super().__init__(next)
        self.callers = callers

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        await self.callers.check(activity.info(), input.args)
        return await self.next.execute_activity(input)
