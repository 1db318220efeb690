"""Helpers for the audit tests: event factories, raw SQLite tampering, a process that appends."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.audit.events import AuditEvent, chain_hash

T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)


def event(n: int, run_id: str | None = "run-1", kind: str = "step_started", **overrides: Any) -> AuditEvent:
    fields: dict[str, Any] = dict(
        event_id=f"{run_id}:step-{n}:{kind}:1",
        ts=T0 + timedelta(seconds=n),
        run_id=run_id,
        step_id=f"step-{n}",
        kind=kind,
        actor="system",
        details={"action": "core.log", "attempt": 1, "n": n},
    )
    return AuditEvent(**(fields | overrides))


def raw(path: Path) -> sqlite3.Connection:
    """The file opened directly, as someone tampering with it would, triggers dropped."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    return conn


def rehash_from(conn: sqlite3.Connection, seq: int) -> None:
    """Recompute every hash from `seq` on, as a careful forger would after an edit."""
    rows = conn.execute(
        "SELECT seq, event_id, ts, run_id, step_id, kind, actor, details FROM audit_events WHERE seq >= ? ORDER BY seq",
        (seq,),
    ).fetchall()
    prev = conn.execute("SELECT hash FROM audit_events WHERE seq < ? ORDER BY seq DESC LIMIT 1", (seq,)).fetchone()[0]
    for s, event_id, ts, run_id, step_id, kind, actor, details in rows:
        digest = chain_hash(
            seq=s, event_id=event_id, ts=ts, run_id=run_id, step_id=step_id, kind=kind, actor=actor,
            details=details, prev_hash=prev,
        )  # fmt: skip
        conn.execute("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, s))
        prev = digest


def append_many(target: str, worker: str, count: int, start: Any) -> None:
    """A separate process appending one event per transaction, from a start shared with the others.

    `target` is a SQLite path or a postgresql:// URL. Halfway every writer waits for the others
    again, so the appends interleave however the machine schedules the processes (a loaded CI
    machine once ran one writer to its end before the other had opened the file).
    """
    from bot.audit.postgres import PostgresAuditStore
    from bot.audit.store import SqliteAuditStore

    start.wait()
    if target.startswith("postgresql://"):
        store: Any = PostgresAuditStore(target, timeout=60)
    else:
        store = SqliteAuditStore(Path(target), timeout=30)
    with store:
        for n in range(count):
            if n == count // 2:
                start.wait()
            store.append([event(n, run_id=worker)])
            time.sleep(0.0005)  # like real callers, not a tight loop: SQLite's lock is not fair


def incident(run_id: str = "run-7") -> list[AuditEvent]:
    """A run that needed approval, failed at its last step and was rolled back."""

    def at(n: int, kind: str, step_id: str | None, actor: str, **details: Any) -> AuditEvent:
        return AuditEvent(
            event_id=f"{run_id}:{step_id}:{kind}:{n}", ts=T0 + timedelta(seconds=n), run_id=run_id,
            step_id=step_id, kind=kind, actor=actor, details=details,
        )  # fmt: skip

    return [
        at(0, "run_started", None, "carol", playbook="restart-service", playbook_hash="ab12cd34ef56ab12cd34",
           trigger="slack", requested_by="carol", params={"service": "api", "environment": "production"}),
        at(1, "step_started", "silence", "system", action="alertmanager.silence", attempt=1),
        at(2, "step_succeeded", "silence", "system", action="alertmanager.silence", attempts=1),
        at(3, "policy_decision", "restart", "system", allow=True, require_approval=True, min_approvals=1,
           approver_groups=["sre-oncall"], reasons=["restart in production needs a human"]),
        at(4, "approval_requested", "restart", "system", min_approvals=1, approver_groups=["sre-oncall"],
           deadline="2025-03-14T09:42:00Z", args={"url": "https://deploy.internal/v1/services/api/restart"}),
        at(5, "approval_vote", "restart", "dana", vote="approve", user="dana", accepted=True),
        at(6, "step_started", "restart", "system", action="http.request", attempt=1),
        at(7, "step_failed", "restart", "system", action="http.request", attempts=3, error="HTTP 503 from deploy"),
        at(8, "compensation_started", "silence", "system", action="alertmanager.expire_silence"),
        at(9, "compensation_succeeded", "silence", "system", action="alertmanager.expire_silence"),
        at(10, "run_finished", None, "system", state="compensated"),
    ]  # fmt: skip
