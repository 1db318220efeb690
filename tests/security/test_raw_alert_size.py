"""An alert that starts a run is at most ALERT_MAX whatever door it came through (red team, stop 54).
The webhook measures it; a client who reaches Temporal starts a run of a catalog playbook with no
proof (an unverified requester, which the shipped policy lets start an unlisted playbook) and a
1.85 MB alert: the input passed Temporal's 2 MB, `prep` acted, and the high-impact step's `decide`
question (the alert beside the step's args, the alert's 250 KB summary) did not: the run's
workflow task failed on every replay and `prep` was never undone. The worker's admission measures
the alert too, and refuses the run before anything acts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType

from bot.alerts.payload import ALERT_MAX
from bot.engine.state import RunStatus
from tests.security.trust_stack import TrustStack, raw_input, trust_stack

PLAYBOOKS = {
    "noted": """
name: noted
summary: Prepare, then a high-impact call that passes the alert's summary on
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: prep
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/prep"}
    compensate: {action: http.request, with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/undo-prep"}}
  - id: risky
    action: http.request
    impact: high
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/risky", json: {summary: "{{ alert.annotations.summary }}"}}
""",
}


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("rawalert"), PLAYBOOKS, {}) as s:
        yield s


async def test_a_raw_start_with_an_alert_past_the_bound_is_refused_before_anything_acts(stack: TrustStack) -> None:
    alert = {"status": "firing", "labels": {"alertname": "Big"}, "fingerprint": "f" * 16,
             "startsAt": "2026-12-07T00:00:00Z",
             "annotations": {"summary": "s" * 250_000, "description": "d" * 1_600_000}}
    handle = await stack.start_raw(raw_input(stack.loaded("noted"), {}, requested_by="cli:mallory", alert=alert))
    status = RunStatus.model_validate(await asyncio.wait_for(handle.result(), 30))
    assert status.state == "cancelled" and "alert check" in (status.error or ""), status.error
    assert f"at most {ALERT_MAX:,}" in (status.error or ""), status.error
    assert stack.sink.of(handle.id) == []
    failed = [e for e in (await handle.fetch_history()).events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    assert not failed
