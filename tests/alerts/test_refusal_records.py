"""How a webhook route records the callers it turns away (bot/alerts/receiver.py `_refuse`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bot.alerts.receiver import AlertDeps, AlertReceiver
from bot.audit.recorder import RefusalBudget
from bot.audit.store import SqliteAuditStore


def replica(store: SqliteAuditStore, minute: list[float]) -> AlertReceiver:
    """One front door's /alertmanager receiver on the shared store, one refusal a minute recorded
    one by one, on the test's clock."""
    receiver = AlertReceiver(AlertDeps(client=None, task_queue="q", catalog=dict, policy=None,  # type: ignore[arg-type]
                                       audit=store, token="the-token"))
    receiver._refusals = RefusalBudget(per_minute=1, clock=lambda: minute[0])
    return receiver


async def test_each_replicas_flood_count_is_on_record(tmp_path: Path) -> None:
    """Attack (review): the summary of a minute's unrecorded refusals had the same event id on
    every replica, and the store keeps the first of an id: a flood spread over two front doors was
    on record as one of their counts. Each replica's summary is now its own event."""
    store = SqliteAuditStore(tmp_path / "audit.db")
    minute = [600.0]
    doors = [replica(store, minute), replica(store, minute)]
    for door in doors:
        for i in range(4):  # one recorded, three counted
            response: Any = await door._refuse(b"", f"Bearer forged-{id(door)}-{i}", "missing or wrong bearer token")
            assert response.status_code == 401
    minute[0] = 660.0
    for door in doors:  # the next minute's first refusal writes the last minute's count
        await door._refuse(b"", f"Bearer late-{id(door)}", "missing or wrong bearer token")
    summaries = [json.dumps(e.details) for e in store.events() if ":window-" in e.event_id]
    assert len(summaries) == 2 and all("3 more refusals" in s for s in summaries), summaries
    store.close()
