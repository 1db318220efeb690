"""PagerDuty V3 and Opsgenie webhooks at the front door, on the real Temporal dev server over real HTTP.

PagerDuty is a service that cannot run here, so the test plays it exactly as its docs describe a
delivery: the documented payload, signed `X-PagerDuty-Signature: v1=<HMAC-SHA256(body)>` with the
subscription's secret, computed here. An unsigned or wrongly signed body is a 401 with an
`access_refused` event and nothing started; a triggered incident starts one run per playbook
however often it is delivered; incident.resolved cancels it, and nothing remediates after.
Opsgenie likewise, authenticated by the custom header its webhook integration sends.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from bot.engine.runs import get_status, is_running
from tests.alerts.test_incidents import OG_EXAMPLE, PD_EXAMPLE
from tests.reliability.alertmanager_support import TOKEN, BotStack, bot_stack, eventually

PD_SECRET = "pd-subscription-secret"
OG_TOKEN = "opsgenie-header-token"

DB = """
name: db-incident
owner: sre-oncall
params:
  incident: {type: string, pattern: "^[A-Z0-9]+$"}
  service: {type: string, default: ""}
triggers:
  pagerduty:
    - services: [PF9KMXH]
      urgency: high
      params: {incident: "{{ alert.incident.id }}", service: "{{ alert.labels.service }}"}
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
  - {id: fix, action: core.log, with: {message: "remediating {{ params.incident }}"}}
"""
OG = """
name: og-alert
owner: sre-oncall
params:
  alias: {type: string, default: ""}
triggers:
  opsgenie:
    - tags: [tag1]
      params: {alias: "{{ alert.opsgenie.alias }}"}
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
  - {id: fix, action: core.log, with: {message: "remediating {{ params.alias }}"}}
"""


@pytest_asyncio.fixture
async def stack(dev_env, tmp_path: Path) -> AsyncIterator[BotStack]:
    async with bot_stack(dev_env.client, tmp_path, {"db-incident": DB, "og-alert": OG},
                         pagerduty_webhook_secrets=f"old-secret, {PD_SECRET}", opsgenie_token=OG_TOKEN) as s:
        yield s


def incident(event_type: str, incident_id: str) -> bytes:
    body = copy.deepcopy(PD_EXAMPLE)
    body["event"]["event_type"] = event_type
    body["event"]["id"] = str(uuid.uuid4())
    body["event"]["data"]["id"] = incident_id
    return json.dumps(body).encode()


def signed(body: bytes, secret: str = PD_SECRET) -> dict[str, str]:
    return {"X-PagerDuty-Signature": "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


def new_incident() -> str:
    return "P" + uuid.uuid4().hex[:9].upper()


def og_alert(action: str, alert_id: str) -> bytes:
    body = copy.deepcopy(OG_EXAMPLE)
    body["action"] = action
    body["alert"]["alertId"] = alert_id
    return json.dumps(body).encode()


async def post(stack: BotStack, path: str, body: bytes, headers: dict[str, str]) -> Any:
    return await stack.http.post(f"{stack.url}{path}", content=body, headers=headers)


def refusals(stack: BotStack) -> list[Any]:
    return [e for e in stack.audit.events() if e.kind.value == "access_refused"]


async def test_a_signed_incident_starts_one_run_and_its_resolve_cancels_it(stack):
    pid = new_incident()
    triggered = incident("incident.triggered", pid)
    answers = await asyncio.gather(*(post(stack, "/pagerduty", triggered, signed(triggered)) for _ in range(8)))
    assert {a.status_code for a in answers} == {200}, answers[0].text
    outcomes = [o for a in answers for o in a.json()]
    assert Counter(o["outcome"] for o in outcomes) == Counter({"started": 1, "attached": 7})
    run_id = outcomes[0]["run_id"]
    assert run_id == f"pagerduty-db-incident-{pid}-20200409T151627.000000Z"
    status = await get_status(stack.temporal, run_id)
    assert (status.requested_by, status.trigger) == ("pagerduty", "pagerduty")
    assert status.params == {"incident": pid, "service": "API Service"}
    assert status.requester is not None and status.requester.verified_by == "pagerduty"
    # an acknowledgement is no trigger: answered, nothing recorded
    acked = incident("incident.acknowledged", pid)
    assert (await post(stack, "/pagerduty", acked, signed(acked))).json() == []

    resolved = incident("incident.resolved", pid)
    gone = await post(stack, "/pagerduty", resolved, signed(resolved, "old-secret"))  # either secret verifies
    assert [(o["outcome"], o["run_id"]) for o in gone.json()] == [("resolved_cancelled", run_id)]

    async def ended() -> bool:
        return (await get_status(stack.temporal, run_id)).finished

    await eventually(ended, timeout=30, what="the resolved incident's run ended")
    status = await get_status(stack.temporal, run_id)
    steps = {s.id: s.state for s in status.steps}
    assert status.cancelled_by == "pagerduty" and steps["wait"] == "cancelled" and steps["fix"] != "succeeded"
    again = await post(stack, "/pagerduty", triggered, signed(triggered))  # PagerDuty's retry, after the resolve
    assert [o["outcome"] for o in again.json()] == ["already_handled"]
    assert [w.id for w in await stack.runs()] == [run_id]
    assert refusals(stack) == []


async def test_unsigned_or_wrongly_signed_incidents_are_refused_on_record_and_start_nothing(stack):
    body = incident("incident.triggered", new_incident())
    good = signed(body)["X-PagerDuty-Signature"]
    attempts = [
        {},  # unsigned
        {"X-PagerDuty-Signature": ""},
        {"X-PagerDuty-Signature": "v1=" + "0" * 64},
        {"X-PagerDuty-Signature": signed(body, "guessed")["X-PagerDuty-Signature"]},
        {"X-PagerDuty-Signature": "v0=" + good[3:]},
        {"X-PagerDuty-Signature": good.upper()},
        {"X-PagerDuty-Signature": signed(body + b" ")["X-PagerDuty-Signature"]},  # signs another body
        {"Authorization": f"Bearer {TOKEN}"},  # Alertmanager's token opens nothing here
    ]
    for headers in attempts:
        response = await post(stack, "/pagerduty", body, {"Content-Type": "application/json", **headers})
        assert response.status_code == 401 and "X-PagerDuty-Signature" in response.json()["error"], headers
    tampered = body.replace(b"A little bump", b"A large bump")
    assert (await post(stack, "/pagerduty", tampered, {"X-PagerDuty-Signature": good})).status_code == 401
    # a replay of the same forgery is recorded once: one event per distinct (body, signature); the
    # three attempts without a signature (none, empty, a bearer token instead) are one of them
    assert (await post(stack, "/pagerduty", body, {})).status_code == 401
    recorded = refusals(stack)
    assert len(recorded) == len(attempts) - 2 + 1
    assert {e.actor for e in recorded} == {"pagerduty"}
    assert {e.details["operation"] for e in recorded} == {"webhook:pagerduty"}
    assert not [e for e in stack.audit.events() if e.kind.value.startswith("alert_")]
    assert await stack.settled_runs() == [], "a refused delivery starts nothing"
    bad = b'{"event": {"id": "x", "event_type": "incident.triggered", "data": {"id": "P1", "type": "incident"}}}'
    response = await post(stack, "/pagerduty", bad, signed(bad))  # signed but unreadable: a 400, not a run
    assert response.status_code == 400 and "event.data.created_at: missing" in response.json()["error"]


async def test_opsgenie_create_starts_close_cancels_and_a_wrong_header_is_refused_on_record(stack):
    alert_id = str(uuid.uuid4())
    created = og_alert("Create", alert_id)
    auth = {"Authorization": f"Bearer {OG_TOKEN}", "Content-Type": "application/json"}
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {OG_TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}"}]:
        response = await post(stack, "/opsgenie", created, headers)
        assert response.status_code == 401, headers
    assert len(refusals(stack)) == 4 and await stack.settled_runs() == []

    answers = await asyncio.gather(*(post(stack, "/opsgenie", created, auth) for _ in range(4)))
    outcomes = [o for a in answers for o in a.json()]
    assert Counter(o["outcome"] for o in outcomes) == Counter({"started": 1, "attached": 3})
    run_id = outcomes[0]["run_id"]
    status = await get_status(stack.temporal, run_id)
    assert (status.requested_by, status.params) == ("opsgenie", {"alias": "aliastest"})
    assert (await post(stack, "/opsgenie", og_alert("Acknowledge", alert_id), auth)).json() == []
    closed = await post(stack, "/opsgenie", og_alert("Close", alert_id), auth)
    assert [(o["outcome"], o["run_id"]) for o in closed.json()] == [("resolved_cancelled", run_id)]

    async def stopped() -> bool:
        return await is_running(stack.temporal, run_id) is False

    await eventually(stopped, timeout=30, what="the closed alert's run ended")
    steps = {s.id: s.state for s in (await get_status(stack.temporal, run_id)).steps}
    assert steps["fix"] != "succeeded"
    # Close before Create (out of order): nothing starts
    other = str(uuid.uuid4())
    assert [o["outcome"] for o in (await post(stack, "/opsgenie", og_alert("Close", other), auth)).json()] == ["resolved_no_run"]
    assert [o["outcome"] for o in (await post(stack, "/opsgenie", og_alert("Create", other), auth)).json()] == ["already_handled"]
    assert [w.id for w in await stack.runs()] == [run_id]


async def test_a_flood_of_forged_deliveries_cannot_grow_the_audit_trail_without_bound(stack):
    """Attack (red team): every distinct forged request was one more `access_refused` row, for
    anyone who can reach the route, without limit. A wrong bearer token on the Opsgenie route is
    now refused before its body is read (one row per distinct credential), and at most
    RefusalBudget.per_minute refusals a minute are recorded one by one; the rest are counted into
    one summary event."""
    same = [post(stack, "/opsgenie", og_alert("Create", str(uuid.uuid4())), {"Authorization": "Bearer no"})
            for _ in range(20)]
    assert {r.status_code for r in await asyncio.gather(*same)} == {401}
    assert len(refusals(stack)) == 1, "the same forged credential, whatever the body: one row"
    per_minute, sent = 60, 200
    body = og_alert("Create", str(uuid.uuid4()))
    for start in range(0, sent, 50):
        varied = [post(stack, "/opsgenie", body, {"Authorization": f"Bearer no-{i}"}) for i in range(start, start + 50)]
        assert {r.status_code for r in await asyncio.gather(*varied)} == {401}
    assert await stack.settled_runs() == []
    # Without the budget: 1 + 200 rows. With it: per_minute a minute (across a minute's end, two
    # minutes' worth plus the summary of the first).
    assert len(refusals(stack)) <= 2 * per_minute + 1, len(refusals(stack))


async def test_a_resolve_cancels_its_run_after_the_incident_changed_what_started_it(stack):
    """Red-team finding: the resolve was routed by the trigger's urgency (PagerDuty) or tags
    (Opsgenie) again. An on-call lowers the urgency, or removes the tag, while the run goes on: the
    resolve read as unmatched, and remediation went on after the incident was over."""
    pid = new_incident()
    raised = json.loads(incident("incident.triggered", pid))
    raised["event"]["data"]["urgency"] = "high"
    fired = json.dumps(raised).encode()
    [started] = (await post(stack, "/pagerduty", fired, signed(fired))).json()
    assert started["outcome"] == "started", started
    lowered = json.loads(incident("incident.resolved", pid))
    lowered["event"]["data"]["urgency"] = "low"
    resolved = json.dumps(lowered).encode()
    [answer] = (await post(stack, "/pagerduty", resolved, signed(resolved))).json()
    assert (answer["outcome"], answer["run_id"]) == ("resolved_cancelled", started["run_id"]), answer

    alert_id = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {OG_TOKEN}", "Content-Type": "application/json"}
    [opened] = (await post(stack, "/opsgenie", og_alert("Create", alert_id), headers)).json()
    assert opened["outcome"] == "started", opened
    closing = json.loads(og_alert("Close", alert_id))
    closing["alert"]["tags"] = [t for t in closing["alert"]["tags"] if t != "tag1"]
    [closed] = (await post(stack, "/opsgenie", json.dumps(closing).encode(), headers)).json()
    assert (closed["outcome"], closed["run_id"]) == ("resolved_cancelled", opened["run_id"]), closed

    async def both_ended() -> bool:
        return all([(await get_status(stack.temporal, r)).finished for r in (started["run_id"], opened["run_id"])])

    await eventually(both_ended, timeout=30, what="both runs cancelled")


async def test_a_resolve_of_an_incident_no_trigger_takes_starts_and_cancels_nothing(stack):
    """Resolves are taken whatever the urgency: one for an episode that never ran finds no run."""
    pid = new_incident()
    low = json.loads(incident("incident.triggered", pid))
    low["event"]["data"]["urgency"] = "low"
    fired = json.dumps(low).encode()
    assert [o["outcome"] for o in (await post(stack, "/pagerduty", fired, signed(fired))).json()] == ["unmatched"]
    resolved = incident("incident.resolved", pid)
    assert [o["outcome"] for o in (await post(stack, "/pagerduty", resolved, signed(resolved))).json()] == [
        "resolved_no_run"]
    assert await stack.runs() == []
