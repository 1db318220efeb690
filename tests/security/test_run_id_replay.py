"""Attacks on `run.admit`'s run-id rule (bot/engine/admission.py `_run_id_problem`): a used run id
runs again only on a start proof issued after its last recorded run. Someone who can reach Temporal
can start a closed (or, with TERMINATE_EXISTING, a running) workflow id again with the earlier
run's input, proof included; these replays must stay refused.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from bot.audit.events import EventKind
from bot.audit.postgres import PostgresAuditStore
from bot.audit.recorder import AUDIT_UNAVAILABLE, AuditWriter, event
from bot.audit.store import SqliteAuditStore
from bot.engine.admission import Admitter
from bot.identity.proofs import START_SKEW, Keyring
from bot.playbook.loader import Catalog
from bot.policy.embedded import EmbeddedEngine
from tests.engine.test_admission import AT, KEY, catalog, policy, request  # noqa: F401  (fixtures)


async def test_a_replayed_proof_is_not_admitted_while_the_store_cannot_be_read(
    catalog: Catalog, policy: EmbeddedEngine  # noqa: F811
) -> None:
    """With the spool, a run acts (low-impact steps, unrecorded) while the store is down, so an
    admission that cannot read the run's history must not wave the id through: it fails like any
    audit write that cannot land (retried, then the run is refused as not checked)."""
    down = PostgresAuditStore("postgresql://bot:secret@127.0.0.1:1/audit", timeout=1.0)
    admitter = Admitter(lambda: catalog, Keyring(KEY, [KEY]), policy, AuditWriter(down))
    with pytest.raises(ApplicationError) as raised:
        await admitter.admit(request(catalog, proof_at=AT - timedelta(seconds=30)))
    assert raised.value.type == AUDIT_UNAVAILABLE
    assert "secret" not in str(raised.value)


async def test_a_front_door_clock_ahead_of_the_workers_does_not_let_a_proof_replay(
    catalog: Catalog, policy: EmbeddedEngine, tmp_path: Path  # noqa: F811
) -> None:
    """The proof's issued_at is the front door's clock, the run's events the worker's; the rest of
    the design tolerates START_SKEW between them. A run whose proof was issued a moment before it
    started (run_started by the worker's clock), terminated by the replay itself (no run_finished),
    is replayed with that same proof from a front door whose clock runs 2 s ahead."""
    store = SqliteAuditStore(tmp_path / "audit.db")
    admitter = Admitter(lambda: catalog, Keyring(KEY, [KEY]), policy, AuditWriter(store))
    started = AT - timedelta(seconds=60)
    store.append([event("run-1", None, EventKind.run_started, ts=started)])
    replayed = await admitter.admit(request(catalog, proof_at=started + timedelta(seconds=2)))
    assert (replayed.allow, replayed.refused_by) == (False, "run id"), replayed
    # a deliberate rerun comes after Temporal's retention (a day at least): well past the skew
    rerun = request(catalog, proof_at=started + START_SKEW + timedelta(seconds=1),
                    started_at=started + START_SKEW + timedelta(seconds=2))
    assert (await admitter.admit(rerun)).allow
