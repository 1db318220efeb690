"""The front door's side of a vote's `approver` question (bot/engine/verdicts.py).

The input comes from the run's `approval_requested` record in the audit store (read by its id,
kept for the step's later voters); the answer is sealed to the vote's proof. Whatever cannot be
asked here in good time (no key, no record yet, a store or policy that does not answer) costs the
click nothing more: the vote goes without a verdict and the run's worker asks, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

import structlog

from bot.audit.events import EventKind, StoredEvent
from bot.audit.recorder import event
from bot.audit.backend import AuditStore
from bot.engine.state import FrontVerdict
from bot.engine.verdicts import DOC_BYTES_MAX, DOC_FIELD, at_time, doc_digest, seal
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, Proof
from bot.policy.engine import PolicyEngine
from bot.policy.models import canonical_json

log = structlog.get_logger(__name__)

READ_WAIT = 0.5  # seconds the store may take to give the input before the vote goes without a verdict
ASK_WAIT = 1.0  # seconds the policy may take to answer (then the worker asks, with its retries)
READ_PAUSE = 30.0  # after a read that took longer, seconds without asking the store
DOCS_KEPT = 512  # inputs kept, newest first (a quorum's later voters, a repeated click)


class FrontApprover:
    """Asks the `approver` rule for the votes this front door signs. The inputs of concurrent
    clicks are read together: one store read (one thread) for whatever is wanted while the last
    one ran, so a burst of clicks does not queue 50 reads behind the store's lock, and a store that
    hangs ties up one thread, not one per click."""

    def __init__(self, store: AuditStore, policy: PolicyEngine, keyring: Keyring) -> None:
        self.store, self.policy, self.keyring = store, policy, keyring
        self._docs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._paused_until = 0.0
        self._wanted: dict[str, list[asyncio.Future[StoredEvent | None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def ask(self, run_id: str, execution: str, step_id: str, actor: Actor, proof: Proof | None) -> FrontVerdict | None:
        """The verdict sealed to `proof`, or None when it cannot be asked here (then the worker asks)."""
        # None: no worker could tell the answer is of its own policy (OPA; an engine whose reload failed)
        version = getattr(self.policy, "verdict_hash", None)
        if proof is None or not self.keyring.can_sign or version is None:
            return None
        doc = await self._doc(run_id, execution, step_id)
        if doc is None:
            return None
        at = datetime.now(timezone.utc)
        asked = at_time(doc, at)
        try:
            answer = await asyncio.wait_for(self.policy.approver({**asked, "user": actor.policy_user()}), ASK_WAIT)
        except asyncio.TimeoutError:
            return None
        if answer.failure is not None or answer.policy_hash != version:
            return None  # the worker asks: with its retries (and fails closed there), or on its own policy
        try:
            verdict = seal(self.keyring, answer, doc_digest(asked), at, run_id, execution, step_id, proof)
        except ValueError as exc:  # an answer no verdict holds (too many reasons, a name too long, past 8 KB)
            log.info("approver answer not sealed: the worker asks", error=str(exc)[:300])
            return None
        return verdict

    async def _doc(self, run_id: str, execution: str, step_id: str) -> dict[str, Any] | None:
        """The input the run published with its approval request; None if it is not to be had now."""
        event_id = event(run_id, step_id, EventKind.approval_requested, execution=execution.replace("-", "")).event_id
        doc = self._docs.get(event_id)
        if doc is not None:
            self._docs.move_to_end(event_id)
            return doc
        if time.monotonic() < self._paused_until:
            return None
        try:
            stored = await asyncio.wait_for(self._read(event_id), READ_WAIT)
        except asyncio.TimeoutError:
            self._paused_until = time.monotonic() + READ_PAUSE
            log.warning("the audit store did not give an approval request in time: the workers ask the approver rule",
                        wait_s=READ_WAIT, pause_s=READ_PAUSE)
            return None
        except Exception as exc:  # noqa: BLE001  (a store that is down: the worker asks, as before)
            log.info("approval request not read: the worker asks the approver rule", error=str(exc))
            return None
        doc = (stored.details.get(DOC_FIELD) if stored is not None else None)
        if not isinstance(doc, dict):
            return None  # not recorded yet, or by a worker before engine-v8
        try:
            size = len(canonical_json(doc).encode())
        except ValueError:  # (not JSON: a row nobody wrote through the store)
            return None
        if size > DOC_BYTES_MAX:  # kept docs stay bounded whatever a row holds
            return None
        self._docs[event_id] = doc
        if len(self._docs) > DOCS_KEPT:
            self._docs.popitem(last=False)
        return doc

    def _read(self, event_id: str) -> asyncio.Future[StoredEvent | None]:
        """The stored event, read with whatever else is wanted when the next read starts."""
        loop = asyncio.get_running_loop()
        if self._reader is not None and self._reader.get_loop() is not loop:
            self._reader, self._wanted = None, {}  # (a new event loop: the old one's reader is gone with it)
        wanted: asyncio.Future[StoredEvent | None] = loop.create_future()
        waiting = [f for f in self._wanted.get(event_id, []) if not f.done()]  # (drop askers that gave up)
        self._wanted[event_id] = [*waiting, wanted]
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_wanted())
        return wanted

    async def _read_wanted(self) -> None:
        while self._wanted:
            batch, self._wanted = self._wanted, {}
            waiting = [f for futures in batch.values() for f in futures if not f.done()]
            if not waiting:
                continue  # every asker gave up meanwhile (timed out)
            try:
                found = await asyncio.to_thread(self.store.get_events, list(batch))
            except Exception as exc:  # noqa: BLE001  each asker hears it (and the worker asks the rule)
                for future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for event_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(event_id))


def front_approver(store: AuditStore | None, policy: PolicyEngine, keyring: Keyring) -> FrontApprover | None:
    """The front door's approver, when it has what it takes (a store to read, a key to seal with)."""
    return FrontApprover(store, policy, keyring) if store is not None and keyring.can_sign else None
