"""A token holder's flood of refused requests: each principal's refusals, per rule, are recorded one
by one up to a budget a minute, the rest as that minute's count (bot/audit/refusals.py), so one
principal can neither grow the audit trail without bound nor turn another's refusals, or its own
by another rule, into a count."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from bot.audit import refusals as refusals_module
from bot.audit.events import EventKind
from bot.audit.recorder import RefusalBudget
from bot.audit.store import SqliteAuditStore
from bot.identity.tokens import TokenStore
from bot.server import Readiness, create_app
from bot.services import front_door
from bot.settings import Settings


async def test_a_flood_of_refusals_is_recorded_up_to_the_budget_then_counted_per_principal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack (red-team, stop 38): every refused API request wrote an audit event, with no bound,
    so a token holder could grow the trail (and queue every other write behind an fsync each) at
    will. Anonymous webhook callers had a budget; authenticated ones did not."""
    monkeypatch.setattr(refusals_module, "RefusalBudget", lambda: RefusalBudget(per_minute=60, clock=lambda: 600.0))
    settings = Settings(data_dir=tmp_path)  # type: ignore[call-arg]
    tokens = TokenStore(settings.tokens_path)
    mallory, bob = tokens.issue("mallory"), tokens.issue("bob")
    store = SqliteAuditStore(tmp_path / "audit.db")
    async with AsyncExitStack() as stack:
        app = create_app(Readiness(), front_door(settings, None, dict, None, store, closing=stack))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door") as web:
            for i in range(70):  # an unreadable body: refused before any lookup
                response = await web.post("/api/v1/runs", content=b"{", headers={"Authorization": f"Bearer {mallory}"})
                assert response.status_code == 400, response.text
            response = await web.post("/api/v1/runs", content=b"{", headers={"Authorization": f"Bearer {bob}"})
            assert response.status_code == 400
            # Red-team of the budget: mallory's junk used it up, and her refusal that mattered was only
            # a count. Each rule has its own budget, so her next refusal by another rule is its own record.
            response = await web.post("/api/v1/runs", content=b'{"playbook": "wipe-prod"}', headers={
                "Authorization": f"Bearer {mallory}", "Idempotency-Key": "bad key"})
            assert response.status_code == 400 and response.json()["rule"] == "idempotency"
    refused = [e for e in store.events() if e.kind == EventKind.access_refused]
    counts = [e for e in refused if ":window-" in e.event_id]
    one_by_one = [e for e in refused if e.actor == "api:mallory" and e not in counts]
    assert len(one_by_one) == 61 and "Idempotency-Key" in one_by_one[-1].details["reason"]
    assert [(e.actor, e.details["operation"], json.loads(json.dumps(e.details))["reason"][:16]) for e in counts] == [
        ("api:mallory", "api:body", "10 more refusals")]
    assert len([e for e in refused if e.actor == "api:bob"]) == 1  # another's refusal is still its own record
    store.close()
