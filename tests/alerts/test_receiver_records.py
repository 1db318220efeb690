"""Which events a webhook route skips as already on record (bot/alerts/receiver.py `_record`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.alerts.receiver import AlertDeps, AlertReceiver
from bot.audit.events import AuditEvent, EventKind
from bot.audit.store import SqliteAuditStore


def receiver(store: SqliteAuditStore, beside: AlertReceiver | None = None) -> AlertReceiver:
    return AlertReceiver(AlertDeps(client=None, task_queue="q", catalog=dict, policy=None,  # type: ignore[arg-type]
                                   audit=store, token="the-token"), beside)


def received(fingerprint: str) -> AuditEvent:
    return AuditEvent(event_id=f"alert:{fingerprint}:alert_received:firing:2026-12-06T01:00:00+00:00",
                      ts=datetime.now(UTC), run_id=None, step_id=None, kind=EventKind.alert_received,
                      actor="alertmanager", details={"fingerprint": fingerprint})


async def test_a_receiver_beside_one_on_another_store_writes_what_that_one_recorded(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Review (stop 41): the ids a receiver skips were shared with the receiver beside it whatever
    its store, so an event one recorded in its store was skipped for the other's. Receivers
    share them only when they share the store."""
    first, second = SqliteAuditStore(tmp_path / "a.db"), SqliteAuditStore(tmp_path / "b.db")
    door = receiver(first)
    other = receiver(second, beside=door)
    same = receiver(first, beside=door)
    await door._record([received("f1")])
    await other._record([received("f1")])
    assert [e.event_id for e in second.events()] == [received("f1").event_id]
    appended: list[str] = []
    append = first.append
    monkeypatch.setattr(first, "append", lambda events, **options: appended.extend(e.event_id for e in events)
                        or append(events, **options))
    await same._record([received("f1")])  # on record in its store, by the receiver beside it
    await same._record([received("f2")])
    assert appended == [received("f2").event_id], "what the receiver beside it recorded is not written again"
    first.close()
    second.close()
