"""Attacks on a key's lock (bot/engine/lock_workflow.py) by anyone who can reach Temporal.

The attacker holds a plain Temporal client: no worker, no envelope key. The worker is the real one
(make_worker); the playbook's one step is `t.gate`, held until the test opens it, so "one run at a
time" is checked directly (tests/security/test_lock_forgery.py's rig).

Each test asserts what a secure lock does; each failed before lock-v2 and engine-v12 (red team, stop
52). Terminating the lock, or ending it with signals past Temporal's history size limit, is
conceded (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from bot.engine.locking import (
    Holder,
    LockNotice,
    LockRequest,
    LockState,
    lock_workflow_id,
)
from tests.security.test_lock_forgery import QUEUE, AttackRig, holder_and_queued, rig  # noqa: F401  (rig: its fixture, the real worker)

GRANT_WAIT = 20.0  # a genuine waiter whose holder is gone is granted within a few seconds (check_seconds=5)


async def reaches_gate(rig: AttackRig, run_id: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if run_id in rig.gates.started:
            return True
        await asyncio.sleep(0.1)
    return run_id in rig.gates.started


@contextlib.asynccontextmanager
async def flooding(rig: AttackRig, seal: str, every: float) -> AsyncIterator[list[int]]:
    """A plain client sends the lock an unsealed (or badly sealed) `acquire` every `every` seconds."""
    sent = [0]

    async def flood() -> None:
        handle = rig.lock()
        while True:
            forged = LockRequest(key=rig.key, run_id=f"run-{uuid.uuid4()}", seal=seal)
            with contextlib.suppress(Exception):
                await handle.signal("acquire", forged)
                sent[0] += 1
            await asyncio.sleep(every)

    task = asyncio.ensure_future(flood())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def cleanup(rig: AttackRig, *run_ids: str) -> None:
    for run_id in run_ids:
        rig.gates.open(run_id)
        with contextlib.suppress(Exception):
            await rig.client.get_workflow_handle(run_id).terminate("test over")
    with contextlib.suppress(Exception):
        await rig.lock().terminate("test over")


# ---- 1. a seal with a known key id and a non-ASCII MAC makes lock.verify raise ---------------------


async def test_a_poisoned_seal_does_not_make_the_lock_drop_genuine_messages(rig: AttackRig):
    """`Keyring.seal_holds` ends in `hmac.compare_digest(str, str)`, which raises TypeError for a
    non-ASCII string. The key id is public (every genuine seal carries it: the lock's `state` query
    shows its waiters' seals). One such message in a batch fails `lock.verify` three times, and
    `KeyLock._verified` then drops the whole batch, genuine messages with it. A trickle of them
    drops every genuine release and acquire, and keeps the inbox from ever being empty, so the
    liveness check never runs either: the queued run waits forever behind a holder that has ended."""
    holder, queued = await holder_and_queued(rig)
    kid = (await rig.lock_state()).waiters[0].seal.partition(":")[0]
    assert kid, "the key id is readable by anyone who can query the lock"
    try:
        async with flooding(rig, seal=f"{kid}:\u00e9", every=0.2):
            await asyncio.sleep(1.0)  # the poison is in play
            rig.gates.open(holder.id)
            status = await asyncio.wait_for(holder.result(), 60)
            assert status.state == "completed"  # its release was sent (lock.release succeeded)
            granted = await reaches_gate(rig, queued.id, GRANT_WAIT)
            state = await rig.lock_state()
        assert granted, (
            f"the holder ended and released, yet the queued run was not granted in {GRANT_WAIT}s: "
            f"the lock still names holders {[h.run_id for h in state.holders]} (poisoned batches dropped the genuine release)"
        )
    finally:
        await cleanup(rig, holder.id, queued.id)


# ---- 2. a steady trickle of forged messages starves the liveness check ---------------------------


async def test_a_trickle_of_forged_messages_does_not_keep_an_ended_holders_slot(rig: AttackRig):
    """`KeyLock.run` checks for ended holders only when `wait_condition(inbox)` times out after
    check_seconds of silence. One unsealed message every few seconds (each dropped and counted)
    means it never times out: a holder that ended without releasing (terminated, or its release not
    delivered) keeps its slot for as long as the trickle lasts, and every waiter waits."""
    holder, queued = await holder_and_queued(rig)
    try:
        async with flooding(rig, seal="", every=1.0):
            await asyncio.sleep(1.0)
            await holder.terminate("operator pulled the plug")  # no release comes from a terminated run
            granted = await reaches_gate(rig, queued.id, GRANT_WAIT)
            state = await rig.lock_state()
        assert granted, (
            f"the holder was terminated {GRANT_WAIT}s ago, yet the queued run was not granted: the lock still "
            f"names holders {[h.run_id for h in state.holders]} (rejected={state.rejected}; liveness never checked)"
        )
    finally:
        await cleanup(rig, holder.id, queued.id)


# ---- 3. ending the lock workflow forgets its holders ---------------------------------------------


async def test_cancelling_the_lock_does_not_let_a_second_run_hold_the_key(rig: AttackRig):
    """A cancel request is a plain client's call. The lock obeyed it and ended; its holders lived only
    in its memory, so the next asker's signal-with-start made a fresh lock that granted it at once.
    From lock-v2 the lock ignores a cancel request. (Terminating it, or ending it by history size
    with a burst of large signals, is conceded in docs/security.md, as terminating a run is.)"""
    holder = await rig.holding(QUEUE)
    end = "cancelled"
    await rig.lock().cancel()
    newcomer = await rig.start()  # asks by signal-with-start: a fresh lock with no holders
    try:
        overtook = await reaches_gate(rig, newcomer.id, 15.0)
        assert not overtook, (
            f"after the lock was {end} (by a plain client), a new run was granted the key while {holder.id} still held it "
            f"(limit 1): gates {rig.gates.log}"
        )
    finally:
        await cleanup(rig, holder.id, newcomer.id)



# ---- 4. a squatter under the holder's workflow id keeps the key forever --------------------------


async def test_a_squatter_under_the_holders_workflow_id_does_not_hold_the_key(rig: AttackRig):
    """`lock.alive` asks only whether *a* workflow with the holder's id is running: not which
    execution, of which type, on which task queue. The attacker replaces the holder by any workflow
    of that id (one call: start with TERMINATE_EXISTING), on a task queue no worker polls: it runs
    forever, and so the lock believes the holder does. The key is held until someone finds it."""
    holder, queued = await holder_and_queued(rig)
    try:
        await rig.client.start_workflow(
            "Squatter", id=holder.id, task_queue=f"nobody-{uuid.uuid4()}",
            id_conflict_policy=WorkflowIDConflictPolicy.TERMINATE_EXISTING,
        )
        granted = await reaches_gate(rig, queued.id, GRANT_WAIT)
        state = await rig.lock_state()
        assert granted, (
            f"the holder's execution was terminated {GRANT_WAIT}s ago, yet the lock still names holders "
            f"{[h.run_id for h in state.holders]}: a squatter under its workflow id keeps the key"
        )
    finally:
        await cleanup(rig, holder.id, queued.id)


# ---- 6. a cancel during lock.adopt keeps every crafted holder, unverified ------------------------


async def test_a_crafted_lock_cancelled_during_adopt_does_not_keep_its_unverified_holders(rig: AttackRig):
    """`KeyLock._adopt` keeps every claimed holder, counted, when `lock.adopt` raises ActivityError
    ("unreachable only when cancelled"). Cancelling the workflow is a plain client's call too. The
    attacker sees two runs for one key start (two alerts for one service: what the lock is for),
    starts the key's KeyLock with both as holders and cancels it while `lock.adopt` is pending
    (describe() shows it): `lock.adopt` is cancelled,
    both claims are kept, and each run, asking, is told it holds already ("asked again"), and
    `lock.confirm` finds the bot's own KeyLock naming it a holder. Two runs act at once, limit 1."""
    first, second = f"run-{uuid.uuid4()}", f"run-{uuid.uuid4()}"
    for run_id in (first, second):
        rig.gates.hold_admission(run_id)  # the runs exist, the attacker sees their ids; neither has asked yet
    await rig.start(run_id=first)
    await rig.start(run_id=second)
    now = datetime.now(UTC)
    crafted = LockState(key=rig.key, holders=[Holder(run_id=r, since=now) for r in (first, second)])
    lock = await rig.client.start_workflow("KeyLock", crafted, id=lock_workflow_id(rig.key), task_queue=rig.task_queue)

    # (From lock-v2 lock.adopt is a local activity, which describe() does not list: the cancel goes
    # at once, while the lock's first task adopts.)
    await lock.cancel()
    try:
        await asyncio.sleep(2.0)  # the lock has adopted
        state = await rig.lock_state()
        for run_id in (first, second):
            rig.gates.admit_now(run_id)
        both = await reaches_gate(rig, first, 15.0) and await reaches_gate(rig, second, 5.0)
        assert not both, (
            f"a crafted lock state, cancelled while lock.adopt was pending, kept unverified holders "
            f"{[h.run_id for h in state.holders]} and both runs acted at once (limit 1): gates {rig.gates.log}"
        )
    finally:
        await cleanup(rig, first, second)


# ---- 7. lock.alive answered by a client: the holder "ended" --------------------------------------


async def test_a_lock_alive_answered_by_a_client_does_not_free_a_running_holders_slot(rig: AttackRig):
    """`lock.alive` is an ordinary activity of the lock, so anyone can answer it
    (RespondActivityTaskCompletedById: workflow id, run id and activity id, all shown by describe()).
    Its result is read as is (`results.execute` checks only that it decodes to a LiveResult, and
    no seal is asked for, unlike the policy answers of bot/engine/answers.py). The attacker watches
    the lock and, when `lock.alive` is pending (every check_seconds while a run waits), completes it
    with `{"ended": [<the holder>]}`: the lock drops the running holder, grants the queued run, and
    `lock.confirm` finds the bot's own KeyLock naming it a holder. Two runs act at once, limit 1."""
    holder, queued = await holder_and_queued(rig)
    lock = rig.lock()
    answered = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8.0  # (a few of the lock's checks)
    try:
        while not answered and loop.time() < deadline:
            desc = await lock.describe()
            for pending in desc.raw_description.pending_activities:
                if pending.activity_type.name != "lock.alive":
                    continue
                with contextlib.suppress(RPCError):  # the worker answered first: next check
                    await rig.client.get_async_activity_handle(
                        workflow_id=lock.id, run_id=desc.run_id, activity_id=pending.activity_id
                    ).complete({"ended": [holder.id]})
                    answered = True
        # From lock-v2 / engine-v12 lock.alive is a local activity: never pending, nothing to answer.
        assert not answered, "a client answered lock.alive"
        overtook = await reaches_gate(rig, queued.id, 5.0)
        assert not overtook, (
            f"a lock.alive answered by a client dropped the running holder {holder.id}; the queued run "
            f"acted while it still held the key (limit 1): gates {rig.gates.log}"
        )
    finally:
        await cleanup(rig, holder.id, queued.id)


# ---- 8. lock.confirm answered by a client: the queued run "holds" -------------------------------


async def test_a_lock_confirm_answered_by_a_client_does_not_start_a_queued_run(rig: AttackRig):
    """The run believes a grant only once `lock.confirm` reads the lock (bot/engine/locks.py), but
    `lock.confirm` is an ordinary activity of the run: anyone can answer it by id. The attacker
    sends the queued run a forged `granted` notice (ignored until confirmed, but it makes the run
    schedule `lock.confirm`), and completes that activity with `{"genuine": true, "holding": true}`
    before the worker does. Its result is read as is: the queued run acts while the holder holds."""
    holder, queued = await holder_and_queued(rig)
    answered = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8.0  # (a few of the lock's checks)
    try:
        while not answered and loop.time() < deadline:
            await queued.signal("lock_notice", LockNotice(key=rig.key, outcome="granted", holders=[queued.id]))
            for _ in range(200):
                desc = await queued.describe()
                mine = [p for p in desc.raw_description.pending_activities if p.activity_type.name == "lock.confirm"]
                if not mine:
                    continue
                with contextlib.suppress(RPCError):  # the worker answered first: try again
                    await rig.client.get_async_activity_handle(
                        workflow_id=queued.id, run_id=desc.run_id, activity_id=mine[0].activity_id
                    ).complete({"genuine": True, "holding": True, "waiting": False, "holders": [queued.id], "reason": ""})
                    answered = True
                break
        # From lock-v2 / engine-v12 lock.confirm is a local activity: never pending, nothing to answer.
        assert not answered, "a client answered lock.confirm"
        overtook = await reaches_gate(rig, queued.id, 5.0)
        assert not overtook, (
            f"a lock.confirm answered by a client started the queued run while {holder.id} held the key "
            f"(limit 1): gates {rig.gates.log}"
        )
    finally:
        await cleanup(rig, holder.id, queued.id)
