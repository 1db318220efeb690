"""KeyLock: one workflow per concurrency key, granting its slots to runs in FIFO order.

Runs ask with the `acquire` signal (sent by the `lock.request` activity with signal-with-start,
so the first asker creates the lock) and give back with `release` (sent by the run on every end).
The lock answers each run with a `lock_notice` signal. A run that ends without releasing (its
execution terminated, or it ended between asking and being told) is noticed twice over: a notice
that cannot be delivered drops it, and every few seconds the `lock.alive` local activity describes
the holders and waiters and drops those that ended (due however busy the inbox is). History stays
bounded by continue-as-new; with nobody holding or waiting for a while, the lock workflow ends.

Anyone who can reach Temporal can signal this workflow or start it with a state of their own, so
it acts on nothing it cannot verify (bot/engine/locks.py seals and checks, workflows hold no keys):
each message must carry a worker's seal (`lock.verify`, a local activity; others are dropped and
counted in `rejected`); waiters carried over are verified again as messages; holders carried over
count only if sealed by the execution this one continues, else only those found holding the key
(`lock.adopt`); timings are clamped. From lock-v2 what the lock asks the worker is a local activity
(no client can answer one) and it ignores a cancel request (ending, it forgot its holders).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from bot.engine import results
    from bot.engine.shield import uncancellable
    from bot.engine.locking import (
        ACQUIRE_SIGNAL,
        AdoptRequest,
        AdoptResult,
        SealRequest,
        VerifyRequest,
        VerifyResult,
        LOCK_WORKFLOW,
        NOTICE_SIGNAL,
        RELEASE_SIGNAL,
        Holder,
        LiveRequest,
        LiveResult,
        LockNotice,
        LockRelease,
        LockRequest,
        LockState,
    )

# Locks from lock-v2 on: their lock.adopt and lock.alive are local activities (no client can answer
# them), a cancel request is ignored, and the check for ended runs is due however busy the inbox is.
LOCK_PATCH = "lock-v2"
HISTORY_LIMIT = 2000  # events before continuing as new (Temporal's own limit is far higher)
LIVE_TIMEOUT = timedelta(seconds=30)
LOCAL_TIMEOUT = timedelta(seconds=10)
CHECK_RANGE = (1.0, 300.0)  # seconds between checks for ended runs, whatever the input says
IDLE_RANGE = (1.0, 86400.0)


@workflow.defn(name=LOCK_WORKFLOW)
class KeyLock:
    @workflow.init
    def __init__(self, state: LockState) -> None:
        self._state = state

    @workflow.signal(name=ACQUIRE_SIGNAL)
    def acquire(self, request: LockRequest) -> None:
        if request.key == self._state.key:  # a request for another key reached the wrong lock: ignore it
            self._state.inbox.append(request)

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, release: LockRelease) -> None:
        if release.key == self._state.key:
            self._state.inbox.append(release)

    @workflow.query
    def state(self) -> LockState:
        return self._state

    @workflow.run
    async def run(self, state: LockState) -> LockState:
        s = self._state
        s.check_seconds = min(max(s.check_seconds, CHECK_RANGE[0]), CHECK_RANGE[1])
        s.idle_seconds = min(max(s.idle_seconds, IDLE_RANGE[0]), IDLE_RANGE[1])
        self._v2 = workflow.patched(LOCK_PATCH)
        if not self._v2:
            return await self._run_v1()
        check = timedelta(seconds=s.check_seconds)
        idle = timedelta(seconds=s.idle_seconds)
        # Every wait runs to its end whatever a cancel request says (lock-v2): anyone who can reach
        # Temporal can ask to cancel this workflow, and a lock that ended forgot its holders, so the
        # next asker was granted beside them (red team). The cancel reaches neither the wait nor a
        # local activity under way (shielded), and is absorbed.
        await uncancellable(self._adopt())
        s.inbox[:0], s.waiters = s.waiters, []  # verified again, in their order, as messages
        next_check = workflow.now() + check
        while True:
            busy = bool(s.holders or s.waiters)
            if not busy:
                next_check = workflow.now() + check
            # The check for ended runs is due every `check` while anyone holds or waits, however
            # many messages arrive: a forged one every second no longer put it off for ever.
            due = next_check - workflow.now()
            if not busy or due > timedelta(0):
                try:
                    await uncancellable(workflow.wait_condition(lambda: bool(s.inbox), timeout=due if busy else idle))
                except asyncio.TimeoutError:
                    if not busy:
                        return s  # nobody held or waited for idle_seconds: the next acquire starts a new lock
            if busy and workflow.now() >= next_check:
                self._drop(await uncancellable(self._ended()))
                next_check = workflow.now() + check
            notices = self._take(await uncancellable(self._verified())) if s.inbox else []
            notices += self._grant()
            await uncancellable(self._tell(notices))
            if workflow.info().is_continue_as_new_suggested() or workflow.info().get_current_history_length() > HISTORY_LIMIT:
                await uncancellable(workflow.wait_condition(workflow.all_handlers_finished))
                s.seal = await uncancellable(self._seal())
                workflow.continue_as_new(s)

    async def _run_v1(self) -> LockState:
        """The loop as locks before lock-v2 ran it (their histories replay as they ran)."""
        s = self._state
        check = timedelta(seconds=s.check_seconds)
        idle = timedelta(seconds=s.idle_seconds)
        await self._adopt()
        s.inbox[:0], s.waiters = s.waiters, []
        while True:
            busy = bool(s.holders or s.waiters)
            try:
                await workflow.wait_condition(lambda: bool(s.inbox), timeout=check if busy else idle)
            except asyncio.TimeoutError:
                if not busy:
                    return s
                self._drop(await self._ended())
            notices = self._take(await self._verified())
            notices += self._grant()
            await self._tell(notices)
            if workflow.info().is_continue_as_new_suggested() or workflow.info().get_current_history_length() > HISTORY_LIMIT:
                await workflow.wait_condition(workflow.all_handlers_finished)
                s.seal = await self._seal()
                workflow.continue_as_new(s)

    async def _adopt(self) -> None:
        """Keep the holders this execution was started with only as far as they verify."""
        s = self._state
        claimed, seal = s.holders, s.seal
        s.holders, s.seal = [], ""
        if not claimed:
            return
        request = AdoptRequest(key=s.key, holders=claimed, seal=seal, from_run=workflow.info().continued_run_id)
        if self._v2:
            # A local activity (lock-v2): a client could complete the regular one by id with any
            # holders. Asked until it answers, whatever a cancel did to an attempt: a cancel during
            # it kept every claim unchecked, and two runs it named were both granted (red team).
            backoff = 1.0
            while True:
                try:
                    result = await workflow.execute_local_activity(
                        "lock.adopt", request, result_type=AdoptResult, start_to_close_timeout=LIVE_TIMEOUT,
                        retry_policy=RetryPolicy(maximum_attempts=3),
                    )
                    break
                except ActivityError:
                    await workflow.sleep(backoff, summary="which holders verify: ask again")
                    backoff = min(backoff * 2, CHECK_RANGE[1])
            s.holders = result.holders
            return
        try:
            result = await results.execute(
                "lock.adopt", request, AdoptResult, start_to_close_timeout=LIVE_TIMEOUT,
                summary="which holders verify",
            )
        except ActivityError:
            # Keeps retrying until it answers: unreachable only when cancelled. Hold on to every
            # claim (counted): a lock that holds too much only makes runs wait.
            s.holders = [h.model_copy(update={"nested": False}) for h in claimed]
            return
        s.holders = result.holders

    async def _verified(self) -> list[LockRequest | LockRelease]:
        """The inbox's messages a worker sealed; the rest are dropped and counted."""
        s = self._state
        batch, s.inbox = s.inbox, []
        try:
            result = await workflow.execute_local_activity(
                "lock.verify", VerifyRequest(messages=batch), result_type=VerifyResult,
                start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=RetryPolicy(maximum_attempts=3),
            )
            valid = result.valid
        except ActivityError:
            valid = [False] * len(batch)  # unverifiable now: runs ask again, ended runs are noticed
        s.rejected += valid.count(False)
        return [m for m, ok in zip(batch, valid) if ok]

    async def _seal(self) -> str:
        s = self._state
        request = SealRequest(key=s.key, holders=s.holders, from_run=workflow.info().run_id)
        try:
            return await workflow.execute_local_activity(
                "lock.seal", request, result_type=str, start_to_close_timeout=LOCAL_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError:
            return ""  # the next execution checks its holders one by one instead

    def _take(self, messages: list[LockRequest | LockRelease]) -> list[tuple[str, LockNotice]]:
        s = self._state
        notices: list[tuple[str, LockNotice]] = []
        for item in messages:
            if isinstance(item, LockRelease):
                self._drop([item.run_id])
                continue
            if any(h.run_id == item.run_id for h in s.holders):  # asked again (a retried activity)
                notices.append((item.run_id, self._notice("granted")))
                continue
            if any(w.run_id == item.run_id for w in s.waiters):
                continue
            if item.root_run_id and any(h.run_id == item.root_run_id for h in s.holders):
                # A child run of a holder (sub-playbooks): its root's slot covers it.
                s.holders.append(Holder(run_id=item.run_id, root_run_id=item.root_run_id, since=workflow.now(), nested=True))
                notices.append((item.run_id, self._notice("granted")))
                continue
            if item.on_busy != "queue" and (s.waiters or self._counted() >= item.limit):
                notices.append((item.run_id, self._notice("busy")))
                continue
            s.waiters.append(item)
            if len(s.waiters) > 1 or self._counted() >= item.limit:
                notices.append((item.run_id, self._notice("queued", len(s.waiters))))
        return notices

    def _grant(self) -> list[tuple[str, LockNotice]]:
        """FIFO: the head of the queue goes first, and nobody overtakes it."""
        s = self._state
        granted: list[tuple[str, LockNotice]] = []
        while s.waiters and self._counted() < s.waiters[0].limit:
            head = s.waiters.pop(0)
            s.holders.append(Holder(run_id=head.run_id, root_run_id=head.root_run_id, since=workflow.now()))
            granted.append((head.run_id, self._notice("granted")))
        if granted:  # who waits now waits behind someone else: tell them
            granted += [(w.run_id, self._notice("queued", i + 1)) for i, w in enumerate(s.waiters)]
        return granted

    def _counted(self) -> int:
        return sum(1 for h in self._state.holders if not h.nested)

    def _notice(self, outcome: str, position: int = 0) -> LockNotice:
        holders = [h.run_id for h in self._state.holders if not h.nested]
        return LockNotice(key=self._state.key, outcome=outcome, holders=holders, position=position)  # type: ignore[arg-type]

    def _drop(self, run_ids: list[str]) -> None:
        """Forget runs that released or ended; a holder's nested children go with it."""
        gone = set(run_ids)
        s = self._state
        gone |= {h.run_id for h in s.holders if h.root_run_id in gone and h.nested}
        s.holders = [h for h in s.holders if h.run_id not in gone]
        s.waiters = [w for w in s.waiters if w.run_id not in gone]

    async def _tell(self, notices: list[tuple[str, LockNotice]]) -> None:
        """Signal each run; one that cannot be told has ended, so it holds and waits for nothing."""
        while notices:
            results = await asyncio.gather(*(self._signal(run_id, notice) for run_id, notice in notices))
            ended = [run_id for (run_id, _), ok in zip(notices, results) if not ok]
            if not ended:
                return
            self._drop(ended)
            notices = self._grant()

    async def _signal(self, run_id: str, notice: LockNotice) -> bool:
        try:
            await workflow.get_external_workflow_handle(run_id).signal(NOTICE_SIGNAL, notice)
        except FailureError:
            workflow.logger.warning("lock: run not reachable, dropped", extra={"key": self._state.key, "run_id": run_id})
            return False
        return True

    async def _ended(self) -> list[str]:
        s = self._state
        run_ids = [h.run_id for h in s.holders] + [w.run_id for w in s.waiters]
        try:
            if self._v2:
                # A local activity (lock-v2): a client completed the regular one by id naming a
                # running holder as ended, and the next run in the queue was granted beside it.
                result = await workflow.execute_local_activity(
                    "lock.alive", LiveRequest(run_ids=run_ids), result_type=LiveResult,
                    start_to_close_timeout=LIVE_TIMEOUT, retry_policy=RetryPolicy(maximum_attempts=3),
                )
            else:
                result = await results.execute(
                    "lock.alive",
                    LiveRequest(run_ids=run_ids),
                    LiveResult,
                    start_to_close_timeout=LIVE_TIMEOUT,
                    retry_policy=RetryPolicy(maximum_attempts=3),
                    summary="which holders ended",
                )
        except ActivityError:
            return []  # asked again at the next check
        return result.ended
