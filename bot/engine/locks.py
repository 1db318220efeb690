"""What talks to a KeyLock workflow from outside workflow code: the worker's `lock.*` activities,
and the front doors' look at who holds a key before they start a run.

Anyone who can reach Temporal can signal a lock or a run, or start a workflow under a lock's id.
So every lock message is sealed by the worker (an HMAC with its envelope keyring: workflows hold no
keys), for the run that asks only (`lock.request`, `lock.release` seal for the calling workflow's
own id); the lock drops what does not verify (`lock.verify`); a state it starts with keeps only
holders it can verify (`lock.adopt`); and a run believes a grant only once it has read the lock
itself and found the bot's KeyLock, on the bot's task queue, naming it a holder (`lock.confirm`).
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any

import structlog
from temporalio import activity
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from bot.engine.lock_workflow import KeyLock
from bot.engine.locking import (
    ACQUIRE_SIGNAL,
    HOLDERS_LABEL,
    LOCK_WORKFLOW,
    RELEASE_SIGNAL,
    AdoptRequest,
    AdoptResult,
    LiveRequest,
    LiveResult,
    LockRelease,
    LockRequest,
    LockState,
    LockView,
    SealRequest,
    VerifyRequest,
    VerifyResult,
    holders_content,
    lock_workflow_id,
    message_content,
    message_label,
)
from bot.engine.state import RunStatus
from bot.identity.proofs import Keyring

log = structlog.get_logger(__name__)
QUERY_TIMEOUT = timedelta(seconds=5)
# An unsealed lock state comes from a raw client, never from the bot (its own locks start empty or
# carry a sealed state): its claimed holders are checked, at most this many (a key's limit is at
# most 100, nested grants aside), this many at a time, so a state claiming thousands costs little.
ADOPT_MAX = 256
ADOPT_ASKING = 8
RUNNING = WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
RUN_WORKFLOW = "PlaybookRun"
# Without an envelope key, lock messages are sealed with a key of this process's own: sound for one
# worker process; workers that must trust each other's locks need the same PLAYBOOK_BOT_ENVELOPE_KEY.
_PROCESS_KEYRING = Keyring(secrets.token_bytes(32))


class LockRefused(ApplicationError):
    """A lock activity called by something other than the run it would speak for."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type="LockRefused", non_retryable=True)


def _own_run(run_id: str) -> None:
    """Seal only for the calling run itself: a run cannot ask or release on another's behalf."""
    info = activity.info()
    if info.workflow_type != RUN_WORKFLOW or info.workflow_id != run_id:
        raise LockRefused(
            f"lock messages are sealed only for the calling {RUN_WORKFLOW} itself; "
            f"{info.workflow_type} {info.workflow_id!r} asked for {run_id!r}"
        )


class LockActivities:
    """Holds the Temporal client the lock activities signal and describe with."""

    def __init__(
        self, client: Client, keyring: Keyring | None = None, check_seconds: float = 5.0, idle_seconds: float = 60.0
    ) -> None:
        self.client = client
        if keyring is None or not keyring.can_verify:
            log.warning(
                "no envelope key: lock messages are sealed with this process's own key, so only this worker "
                "process trusts them; give every worker the same PLAYBOOK_BOT_ENVELOPE_KEY"
            )
            keyring = _PROCESS_KEYRING
        self.keys = keyring
        self.check_seconds = check_seconds
        self.idle_seconds = idle_seconds

    def all(self) -> list[Any]:
        return [self.request, self.release, self.alive, self.verify, self.seal, self.adopt, self.confirm]

    @activity.defn(name="lock.request")
    async def request(self, request: LockRequest) -> None:
        """Ask the key's lock for a slot, creating the lock if there is none (signal-with-start is
        atomic: two first askers meet in one lock). The answer comes to the run as a signal."""
        _own_run(request.run_id)
        request = request.model_copy(update={"seal": self.keys.seal(message_label(request), message_content(request))})
        await self.client.start_workflow(
            KeyLock.run,
            LockState(key=request.key, check_seconds=self.check_seconds, idle_seconds=self.idle_seconds),
            id=lock_workflow_id(request.key),
            task_queue=activity.info().task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=ACQUIRE_SIGNAL,
            start_signal_args=[request],
            static_summary=f"lock {request.key[:80]}",
        )

    @activity.defn(name="lock.release")
    async def release(self, release: LockRelease) -> None:
        """Give the calling run's slot back (or leave the queue). A lock that is gone has nothing to release."""
        _own_run(release.run_id)
        release = release.model_copy(update={"seal": self.keys.seal(message_label(release), message_content(release))})
        try:
            await self.client.get_workflow_handle(lock_workflow_id(release.key)).signal(RELEASE_SIGNAL, release)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise

    @activity.defn(name="lock.verify")
    async def verify(self, request: VerifyRequest) -> VerifyResult:
        """Which of the lock's inbox messages a worker sealed (local activity of KeyLock)."""
        valid = [self.keys.seal_holds(message_label(m), message_content(m), m.seal) for m in request.messages]
        for message, ok in zip(request.messages, valid):
            if not ok:
                log.warning(
                    "lock message dropped: not sealed by a worker (forged, altered, or sealed with a key this "
                    "worker does not hold)", kind=message.kind, key=message.key[:80], run_id=message.run_id,
                )
        return VerifyResult(valid=valid)

    @activity.defn(name="lock.seal")
    async def seal(self, request: SealRequest) -> str:
        """Seal the holders a lock carries over a continue-as-new (local activity of KeyLock)."""
        return self.keys.seal(HOLDERS_LABEL, holders_content(request.key, request.holders, request.from_run))

    @activity.defn(name="lock.adopt")
    async def adopt(self, request: AdoptRequest) -> AdoptResult:
        """The holders a lock execution starts with: as sealed by the execution it continues, else
        only runs found holding the key (a bot run on this task queue, running, whose status names
        this key and that waits for no lock), each counted against the limit."""
        if request.from_run is not None and self.keys.seal_holds(
            HOLDERS_LABEL, holders_content(request.key, request.holders, request.from_run), request.seal
        ):
            return AdoptResult(holders=request.holders, sealed=True)
        claimed = request.holders[:ADOPT_MAX]
        log.warning("lock state not sealed by this lock's previous execution: its holders are checked one by one",
                    key=request.key[:80], claimed=len(request.holders), checked=len(claimed))
        asking = asyncio.Semaphore(ADOPT_ASKING)

        async def holding(run_id: str) -> bool:
            async with asking:
                return await self._holding(request.key, run_id)

        flags = await asyncio.gather(*(holding(h.run_id) for h in claimed))
        kept = [h.model_copy(update={"nested": False}) for h, ok in zip(claimed, flags) if ok]
        return AdoptResult(holders=kept, sealed=False)

    async def _holding(self, key: str, run_id: str) -> bool:
        handle = self.client.get_workflow_handle(run_id)
        try:
            desc = await handle.describe()
            if not _a_running_run(desc):
                return False
            status = await handle.query("status", result_type=RunStatus, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return status.lock_key == key and status.state != "queued" and status.waiting_for is None

    @activity.defn(name="lock.confirm")
    async def confirm(self, key: str) -> LockView:
        """What the key's lock says of the calling run, read from the lock itself: a grant or a
        busy answer counts only when the bot's own KeyLock, on this task queue, stands by it."""
        info = activity.info()
        handle = self.client.get_workflow_handle(lock_workflow_id(key))
        try:
            desc = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return LockView(genuine=False, reason="no lock workflow for this key")
            raise
        if desc.workflow_type != LOCK_WORKFLOW or desc.task_queue != info.task_queue:
            reason = f"{desc.id} is a {desc.workflow_type} on task queue {desc.task_queue!r}, not the bot's {LOCK_WORKFLOW}"
            log.warning("lock not genuine: its answers are ignored", key=key[:80], reason=reason)
            return LockView(genuine=False, reason=reason)
        if desc.raw_description.workflow_execution_info.status != RUNNING:
            return LockView(genuine=False, reason="the lock workflow is not running")
        state = await handle.query(KeyLock.state, rpc_timeout=QUERY_TIMEOUT)
        if state.key != key:
            return LockView(genuine=False, reason="the lock workflow serves another key")
        counted = [h.run_id for h in state.holders if not h.nested]
        return LockView(
            genuine=True,
            holding=any(h.run_id == info.workflow_id for h in state.holders),
            waiting=any(w.run_id == info.workflow_id for w in state.waiters),
            holders=counted,
        )

    @activity.defn(name="lock.alive")
    async def alive(self, request: LiveRequest) -> LiveResult:
        """Which of these runs have ended (or never existed): they hold and wait for nothing."""

        async def ended(run_id: str) -> bool:
            try:
                desc = await self.client.get_workflow_handle(run_id).describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return True
                raise
            # Something else running under the run's id (started over it: red team) is not the run:
            # the run it replaced has ended.
            return not _a_running_run(desc)

        flags = await asyncio.gather(*(ended(run_id) for run_id in request.run_ids))
        return LiveResult(ended=[run_id for run_id, gone in zip(request.run_ids, flags) if gone])


def _a_running_run(desc: Any) -> bool:
    """A described workflow is a running bot run on this worker's task queue (what a lock holder is)."""
    return (desc.workflow_type == RUN_WORKFLOW and desc.task_queue == activity.info().task_queue
            and desc.raw_description.workflow_execution_info.status == RUNNING)


async def busy_holder(client: Client, key: str, limit: int) -> str | None:
    """The run holding `key` when a new run could not have it now, else None. Front doors ask
    before starting a refuse/attach run, to answer at once; the worker enforces it again, since
    another run may take the key meanwhile. A lock that cannot be asked reads as free: the
    worker decides then."""
    handle = client.get_workflow_handle(lock_workflow_id(key))
    try:
        desc = await handle.describe()
        if desc.raw_description.workflow_execution_info.status != RUNNING:
            return None
        state = await handle.query(KeyLock.state, rpc_timeout=QUERY_TIMEOUT)
    except RPCError:
        return None
    holders = [h.run_id for h in state.holders if not h.nested]
    if holders and (len(holders) >= limit or state.waiters):
        return holders[0]
    return None
