"""How a webhook route records the callers it turns away (bot/alerts/receiver.py `_refuse`)."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.audit import refusals as refusals_module
from bot.alerts.receiver import AlertDeps, AlertReceiver
from bot.audit.events import EventKind
from bot.audit.recorder import RefusalBudget
from bot.audit.store import SqliteAuditStore


def replica(store: SqliteAuditStore, minute: list[float]) -> AlertReceiver:
    """One front door's /alertmanager receiver on the shared store, one refusal a minute recorded
    one by one, on the test's clock."""
    receiver = AlertReceiver(AlertDeps(client=None, task_queue="q", catalog=dict, policy=None,  # type: ignore[arg-type]
                                       audit=store, token="the-token"))
    receiver._refusals.budget = RefusalBudget(per_minute=1, clock=lambda: minute[0])
    return receiver


async def flood(door: AlertReceiver, count: int, name: str = "forged") -> None:
    """`count` refusals at `door`, each a different forged bearer token."""
    for i in range(count):
        response: Any = await door._refuse(b"", f"Bearer {name}-{i}", "missing or wrong bearer token")
        assert response.status_code == 401


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
    for door in doors:
        await door.close()
    store.close()


def summaries(store: SqliteAuditStore) -> list[str]:
    return [json.dumps(e.details) for e in store.events() if ":window-" in e.event_id]


async def test_a_flood_that_stops_is_counted_without_another_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack (review): a minute's count past the budget was recorded only when a later minute's
    first refusal came. A flood that then stopped was on record as its first refusals alone,
    however many followed, for as long as nobody else was refused (and lost when the process
    stopped). The door now tells the count once the minute is over."""
    monkeypatch.setattr(refusals_module, "SUMMARY_GRACE", 0.05)
    store = SqliteAuditStore(tmp_path / "audit.db")
    minute = [659.8]  # 0.2 s before minute 10 ends
    door = replica(store, minute)
    await flood(door, 5)  # one recorded, four counted
    assert summaries(store) == []
    minute[0] = 661.0  # the minute is over; nobody is refused after it
    for _ in range(100):
        if summaries(store):
            break
        await asyncio.sleep(0.05)
    assert len(summaries(store)) == 1 and "4 more refusals" in summaries(store)[0], summaries(store)
    await door._refuse(b"", "Bearer late", "missing or wrong bearer token")  # minute 11's first: no second count
    await door.close()
    assert len(summaries(store)) == 1
    store.close()


async def test_a_door_that_stops_records_the_count_of_the_minute_under_way(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    door = replica(store, [600.0])
    await flood(door, 3)
    await door.close()
    assert len(summaries(store)) == 1 and "2 more refusals" in summaries(store)[0]
    store.close()


async def test_the_front_door_closes_its_webhook_doors_when_it_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring: front_door(closing=stack) tells a flood's count when the stack unwinds."""
    from bot.server import Readiness, create_app
    from bot.services import front_door
    from bot.settings import Settings

    monkeypatch.setattr(refusals_module, "RefusalBudget", lambda: RefusalBudget(per_minute=60, clock=lambda: 600.0))
    settings = Settings(data_dir=tmp_path, alertmanager_token="the-webhook-token-of-this-test")  # type: ignore[arg-type]
    store = SqliteAuditStore(tmp_path / "audit.db")
    async with AsyncExitStack() as stack:
        app = create_app(Readiness(), front_door(settings, None, dict, None, store, closing=stack))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door") as web:
            for i in range(70):
                response = await web.post("/alertmanager", content=b"{}", headers={"Authorization": f"Bearer no-{i}"})
                assert response.status_code == 401
        assert summaries(store) == []
    one_by_one = [e for e in store.events() if e.kind == EventKind.access_refused and ":window-" not in e.event_id]
    assert len(one_by_one) == 60 and len(summaries(store)) == 1 and "10 more refusals" in summaries(store)[0]
    store.close()


def told(store: SqliteAuditStore) -> int:
    """Refusals the trail counts in summaries."""
    return sum(int(re.search(r"(\d+) more refusals", s).group(1)) for s in summaries(store))  # type: ignore[union-attr]


async def test_refusals_after_a_door_closed_are_still_counted(tmp_path: Path) -> None:
    """Review: a request already in the handler when the front door stopped (uvicorn gives up
    waiting after 5 s) reaches the budget after its door told the minute's count; the later count
    had the same event id and the store kept only the first."""
    store = SqliteAuditStore(tmp_path / "audit.db")
    minute = [600.0]
    door = replica(store, minute)
    await flood(door, 3, "early")
    await door.close()
    await flood(door, 5, "late")
    assert not door._refusals.summarizing, "no timer starts after the door closed"
    minute[0] = 661.0
    await door._refuse(b"", "Bearer next-minute", "missing or wrong bearer token")
    assert told(store) == 7, summaries(store)
    store.close()


async def test_a_count_being_written_when_the_door_stops_is_not_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: close() cancelled the timer in the middle of its write, after the count had been
    taken from the budget: the count was lost. The write is now waited for."""
    monkeypatch.setattr(refusals_module, "SUMMARY_GRACE", 0.05)
    store = SqliteAuditStore(tmp_path / "audit.db")
    minute = [659.9]
    door = replica(store, minute)
    await flood(door, 4)
    minute[0] = 661.0
    with store._lock:  # the store is slow: the timer's write waits for it
        await asyncio.sleep(0.4)  # the timer woke, took the count and is writing it
        closing = asyncio.create_task(door.close())
        await asyncio.sleep(0.1)
        assert not closing.done(), "close waits for the write under way"
    await asyncio.wait_for(closing, 5)
    assert told(store) == 3, summaries(store)
    store.close()


async def test_a_count_the_store_does_not_take_is_logged_with_its_number(tmp_path: Path) -> None:
    """A store that is down loses the summary event, not the figure: the log line says it."""
    from structlog.testing import capture_logs

    store = SqliteAuditStore(tmp_path / "audit.db")
    door = replica(store, [600.0])
    await flood(door, 4)
    store.close()  # the store goes away before the door stops
    with capture_logs() as logs:
        await door.close()
    lost = [e for e in logs if e["event"] == "refusal not recorded"]
    assert len(lost) == 1 and "3 more refusals" in lost[0]["reason"], logs
