"""Grafana Alerting at the front door (POST /grafana), on the real Temporal dev server over real HTTP.

Grafana's webhook contact point posts Alertmanager's shape with `"version": "1"` and fields of its
own; the bot takes it on its own route, with its own bearer token, as the principal `grafana`, and
from there on exactly Alertmanager's paths: one run per episode however often and wherever an
alert is delivered, a resolve cancels the run and nothing remediates after it, a body it cannot
read is a 400 (over the limit a 413), a wrong or missing token a 401, and never a 5xx. With the
contact point's HMAC Signature set, a delivery must also be signed (a 401 on record if not).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest_asyncio

from bot.alerts.episodes import episode_id
from bot.alerts.fingerprint import alert_fingerprint
from bot.engine.runs import get_status, is_running
from tests.reliability.alertmanager_support import TOKEN, BotStack, bot_stack, eventually, firing, webhook
from tests.reliability.test_alertmanager import MAX_BODY, assert_one_run_per_episode, fuzz_cases, raw_post

GRAFANA_TOKEN = "grafana-contact-point-token"
GRAFANA_AUTH = {"Authorization": f"Bearer {GRAFANA_TOKEN}"}
GRAFANA_HMAC, GRAFANA_HMAC_OLD = "grafana-hmac-secret-5f0c2a", "grafana-hmac-secret-before-rotation"
STAMP_HEADER = "X-Grafana-Alerting-Timestamp"  # the contact point's Timestamp Header (Grafana has no default)

# Holds (sleeps) before it remediates: a resolve must cancel it there, and `fix` must never run.
MEMORY = """
name: memory
owner: sre-oncall
params:
  zone: {type: string, pattern: "^[a-z0-9-]+$"}
  value: {type: number, default: 0}
  silence: {type: string, default: ""}
triggers:
  alertmanager:
    - matchers: ['alertname="High memory usage"']
      params:
        zone: "{{ alert.labels.zone }}"
        value: "{{ alert['values']['B'] if alert['values'] else 0 }}"
        silence: "{{ alert.silenceURL }}"
steps:
  - id: wait
    action: core.sleep
    with: {duration: 10m}
  - id: fix
    action: core.log
    with: {message: "remediating {{ params.zone }}"}
"""
# Continues when its alert resolves (on_resolved: continue).
CPU = """
name: cpu
owner: sre-oncall
params:
  zone: {type: string, default: none}
triggers:
  alertmanager:
    - matchers: ['alertname="High CPU usage"']
      params: {zone: "{{ alert.labels.zone }}"}
      on_resolved: continue
steps:
  - {id: wait, action: core.sleep, with: {duration: 10m}}
"""
PLAYBOOKS = {"memory": MEMORY, "cpu": CPU}


def grafana_body(zones: list[str], status: str = "firing", *, cpu: bool = False,
                 starts: str = "2021-10-12T09:51:03.157076+02:00", fingerprints: bool = True) -> dict[str, Any]:
    """A delivery in the shape Grafana's docs print ("Configure the webhook notifier for Alerting"),
    one alert per zone (zones are unique per test, so episodes never meet another test's runs)."""
    name = "High CPU usage" if cpu else "High memory usage"
    alerts = []
    for zone in zones:
        labels = {"alertname": name, "team": "blue", "zone": zone}
        alert: dict[str, Any] = {
            "status": status,
            "labels": labels,
            "annotations": {"description": "The system has high memory usage",
                            "runbook_url": "https://myrunbook.com/runbook/1234",
                            "summary": f"This alert was triggered for zone {zone}"},
            "startsAt": starts,
            "endsAt": "2021-10-12T10:01:03.157076+02:00" if status == "resolved" else "0001-01-01T00:00:00Z",
            "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit",
            "silenceURL": f"https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=zone%3D{zone}",
            "dashboardURL": "",
            "panelURL": "",
            "values": {"B": 44.23943737541908, "C": 1},
        }
        if fingerprints:
            alert["fingerprint"] = alert_fingerprint(labels)[:8] + uuid.uuid4().hex[:8]  # Grafana's own: any hex
        alerts.append(alert)
    return {
        "receiver": "playbook-bot", "status": status, "orgId": 1, "alerts": alerts,
        "groupLabels": {}, "commonLabels": {"team": "blue"}, "commonAnnotations": {},
        "externalURL": "https://play.grafana.org/", "version": "1", "groupKey": "{}:{}", "truncatedAlerts": 0,
        "title": f"[{status.upper()}:{len(alerts)}]  (blue)", "state": "alerting" if status == "firing" else "ok",
        "message": "**Firing**\n\nLabels:\n - alertname = High memory usage\n",
    }


def zones(n: int) -> list[str]:
    return [f"z-{uuid.uuid4().hex[:10]}" for _ in range(n)]


def episode(playbook: str, alert: dict[str, Any]) -> str:
    fingerprint = alert.get("fingerprint") or alert_fingerprint(alert["labels"])
    return episode_id(playbook, fingerprint, datetime.fromisoformat(alert["startsAt"]), prefix="grafana")


@pytest_asyncio.fixture
async def stack(dev_env, tmp_path: Path) -> AsyncIterator[BotStack]:
    async with bot_stack(dev_env.client, tmp_path, PLAYBOOKS, alertmanager_max_body=MAX_BODY,
                         grafana_token=GRAFANA_TOKEN) as s:
        yield s


async def deliver(stack: BotStack, body: Any, url: str | None = None, **headers: str) -> Any:
    kwargs: dict[str, Any] = {"json": body} if isinstance(body, dict) else {"content": body}
    return await stack.http.post(f"{url or stack.url}/grafana", headers={**GRAFANA_AUTH, **headers}, **kwargs)


async def test_grafana_deliveries_duplicated_across_front_doors_start_one_run_per_episode(stack):
    peer = await stack.replica()
    body = grafana_body(zones(3))
    body["alerts"].append(grafana_body(zones(1), fingerprints=False)["alerts"][0])  # an older Grafana's alert
    expected = {episode("memory", a) for a in body["alerts"]}
    responses = await asyncio.gather(*(deliver(stack, body, url) for url in [stack.url, peer.url] * 5))
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses][:2]
    outcomes = [o for r in responses for o in r.json()]
    assert Counter(o["outcome"] for o in outcomes) == Counter({"started": 4, "attached": 36})
    assert {o["run_id"] for o in outcomes} == expected
    await assert_one_run_per_episode(stack, expected)
    # the run is Grafana's: requested by the principal `grafana`, verified by its token, and its
    # trigger templates read Grafana's own fields (values, silenceURL) as alert.*
    computed = body["alerts"][-1]
    status = await get_status(stack.temporal, episode("memory", computed))
    assert (status.requested_by, status.trigger) == ("grafana", "grafana")
    assert status.params == {"zone": computed["labels"]["zone"], "value": 44.23943737541908,
                             "silence": computed["silenceURL"]}
    assert status.requester is not None and status.requester.verified_by == "grafana"
    received = [e for e in stack.audit.events() if e.kind.value == "alert_received"]
    assert {e.actor for e in received} == {"grafana"} and len(received) == 4, "each receipt once, as grafana"
    assert {e.details["fingerprint"] for e in received} >= {alert_fingerprint(computed["labels"])}


def am_alert(fingerprint: str, starts: str, zone: str) -> dict[str, Any]:
    """An Alertmanager alert the memory playbook routes (its templates read Grafana's fields too)."""
    return {**firing(fingerprint, "High memory usage", starts=starts, zone=zone), "values": {"B": 1}, "silenceURL": ""}


async def test_one_senders_resolve_never_ends_or_suppresses_the_others_episode(stack):
    """Attack: the Grafana token's holder posts "resolved" with the fingerprint and startsAt of an
    Alertmanager alert (both readable from Prometheus), and the other way round. Episodes were
    shared, so the resolve was recorded on the other sender's episode and its firing deliveries
    answered already_handled: the remediation never started. Each sender has its own episodes now."""
    zone, fp, starts = zones(1)[0], uuid.uuid4().hex[:16], "2026-11-22T01:00:00Z"
    resolved = grafana_body([zone], status="resolved", starts=starts)
    resolved["alerts"][0]["fingerprint"] = fp
    assert [o["outcome"] for o in (await deliver(stack, resolved)).json()] == ["resolved_no_run"]
    [started] = (await stack.deliver(webhook([am_alert(fp, starts, zone)]))).json()
    assert started["outcome"] == "started", started
    assert started["run_id"].startswith("alert-") and await is_running(stack.temporal, started["run_id"]) is not None

    zone, fp = zones(1)[0], uuid.uuid4().hex[:16]
    gone = await stack.deliver(webhook([{**am_alert(fp, starts, zone), "status": "resolved",
                                         "endsAt": "2026-11-22T01:05:00Z"}]))
    assert [o["outcome"] for o in gone.json()] == ["resolved_no_run"]
    firing_body = grafana_body([zone], starts=starts)
    firing_body["alerts"][0]["fingerprint"] = fp
    [grafana] = (await deliver(stack, firing_body)).json()
    assert grafana["outcome"] == "started", grafana
    assert grafana["run_id"].startswith("grafana-")


async def test_a_resolve_cancels_the_run_and_nothing_remediates_after_it(stack):
    firing_body = grafana_body(zones(2))
    run_ids = [episode("memory", a) for a in firing_body["alerts"]]
    started = await deliver(stack, firing_body)
    assert [o["outcome"] for o in started.json()] == ["started", "started"]
    resolved = copy.deepcopy(firing_body)
    resolved["status"] = "resolved"
    for alert in resolved["alerts"]:
        alert["status"], alert["endsAt"] = "resolved", "2021-10-12T10:01:03+02:00"
    answers = await asyncio.gather(deliver(stack, resolved), deliver(stack, resolved))
    outcomes = sorted(o["outcome"] for a in answers for o in a.json())
    assert outcomes.count("resolved_cancelled") >= 2 and set(outcomes) <= {"resolved_cancelled", "resolved_no_run"}

    async def ended() -> bool:
        return all([(await get_status(stack.temporal, r)).finished for r in run_ids])

    await eventually(ended, timeout=30, what="the resolved alerts' runs ended")
    for run_id in run_ids:
        status = await get_status(stack.temporal, run_id)
        assert status.cancelled_by == "grafana", status.cancelled_by
        steps = {s.id: s.state for s in status.steps}
        assert steps["wait"] == "cancelled" and steps["fix"] != "succeeded", steps
    # A firing repeat after the resolve (Grafana's repeat_interval raced it): the episode is over.
    late = await deliver(stack, firing_body)
    assert {(o["outcome"], o.get("reason")) for o in late.json()} == {("already_handled", "the alert was already resolved")}
    await assert_one_run_per_episode(stack, set(run_ids))
    assert not [e for e in stack.audit.events() if e.kind.value == "step_started" and e.step_id == "fix"]


async def test_resolved_before_firing_starts_nothing_and_continue_keeps_its_run(stack):
    """Out of order: the resolved notification lands before the firing one (another Grafana replica,
    a retry): nothing starts. And a playbook with on_resolved: continue keeps running."""
    body = grafana_body(zones(1), fingerprints=False)  # its episode rests on the computed fingerprint
    resolved = copy.deepcopy(body)
    resolved["alerts"][0]["status"] = resolved["status"] = "resolved"
    assert [o["outcome"] for o in (await deliver(stack, resolved)).json()] == ["resolved_no_run"]
    late = await deliver(stack, body)
    assert [o["outcome"] for o in late.json()] == ["already_handled"]
    assert await is_running(stack.temporal, episode("memory", body["alerts"][0])) is None

    cpu = grafana_body(zones(1), cpu=True, starts="2021-10-12T07:56:03Z")
    run_id = episode("cpu", cpu["alerts"][0])
    assert [o["outcome"] for o in (await deliver(stack, cpu)).json()] == ["started"]
    cpu_resolved = copy.deepcopy(cpu)
    cpu_resolved["alerts"][0]["status"] = cpu_resolved["status"] = "resolved"
    assert [(o["outcome"], o["run_id"]) for o in (await deliver(stack, cpu_resolved)).json()] == [
        ("resolved_ignored", run_id)
    ]
    assert await is_running(stack.temporal, run_id) is True
    kinds = [e["outcome"] for e in stack.outcomes()]
    assert kinds == ["resolved_no_run", "already_handled", "started", "resolved_ignored"]


async def test_grafana_and_alertmanager_tokens_open_only_their_own_route(stack):
    body = json.dumps(grafana_body(zones(1))).encode()
    am_body = json.dumps(webhook([firing(uuid.uuid4().hex[:16], "High memory usage", zone="nope")])).encode()
    refused = [
        ("/grafana", None, body), ("/grafana", b"Bearer ", body), ("/grafana", b"Bearer wrong", body),
        ("/grafana", f"Bearer {TOKEN}".encode(), body),  # Alertmanager's token is not Grafana's
        ("/grafana", f"Basic {GRAFANA_TOKEN}".encode(), body),
        ("/grafana", f"Bearer {GRAFANA_TOKEN}x".encode(), body),
        ("/alertmanager", f"Bearer {GRAFANA_TOKEN}".encode(), am_body),  # nor the other way round
    ]
    for path, authorization, payload in refused:
        status, answer = await raw_post(f"{stack.url}{path}", authorization, payload)
        assert status == 401 and "token" in json.loads(answer)["error"], (path, authorization, status)
    assert await stack.settled_runs() == [], "a refused request starts nothing"
    refused_on_record = [(e.kind.value, e.actor, e.details["operation"]) for e in stack.audit.events()]
    assert refused_on_record == [("access_refused", "grafana", "webhook:grafana")] * 6 + [
        ("access_refused", "alertmanager", "webhook:alertmanager")], "each refusal on record, by the route it tried"
    right = await deliver(stack, body)
    assert [o["outcome"] for o in right.json()] == ["started"]


async def test_without_a_grafana_token_the_route_refuses_everyone(dev_env, tmp_path):
    async with bot_stack(dev_env.client, tmp_path, PLAYBOOKS) as s:
        body = json.dumps(grafana_body(zones(1))).encode()
        for header in [None, b"Bearer", b"Bearer None", f"Bearer {GRAFANA_TOKEN}".encode(), f"Bearer {TOKEN}".encode()]:
            status, _ = await raw_post(f"{s.url}/grafana", header, body)
            assert status == 401, header
        assert await s.settled_runs() == []
        assert [(e.kind.value, e.details["operation"]) for e in s.audit.events()] == [("access_refused", "webhook:grafana")] * 5


def _as_grafana(raw: bytes) -> bytes:
    return raw.replace(b'"version": "4"', b'"version": "1"')


async def test_bad_grafana_bodies_are_a_4xx_that_records_and_starts_nothing(stack):
    cases: list[tuple[str, bytes, int]] = [
        ("alertmanager's shape", json.dumps(webhook([firing("ab", "High memory usage")])).encode(), 400),
        ("legacy dashboard alert", json.dumps({"ruleName": "x", "evalMatches": [], "state": "alerting"}).encode(), 400),
        ("NaN value", json.dumps(grafana_body(zones(1))).replace("44.23943737541908", "NaN").encode(), 400),
        ("values not numbers", json.dumps(grafana_body(zones(1))).replace("44.23943737541908", '"high"').encode(), 400),
        ("orgId text", json.dumps({**grafana_body(zones(1)), "orgId": "main"}).encode(), 400),
        ("no labels to fingerprint", json.dumps(grafana_body(zones(1), fingerprints=False)).replace(
            '"labels": {', '"labels": {"n": 1, ').encode(), 400),
    ]
    # Alertmanager's fuzzed bodies, as version "1": every one is as wrong for Grafana, except a
    # missing or empty fingerprint, which Grafana's older senders leave out (computed: valid).
    for case in fuzz_cases(seed=7, n=150):
        if "fingerprint missing" in case.name or "fingerprint=''" in case.name:
            continue
        cases.append((f"fuzz {case.name}", _as_grafana(case.body), case.expected))
    runs_before = {w.id for w in await stack.settled_runs()}
    failures = []
    for name, payload, expected in cases:
        response = await deliver(stack, payload)
        ok = response.status_code == expected
        if ok:
            try:
                ok = bool(response.json().get("error"))
            except ValueError:
                ok = False
        if not ok:
            failures.append(f"{name}: {response.status_code} (want {expected}) {response.text[:160]}")
    assert not failures, "\n".join(failures[:20])
    assert [e for e in stack.audit.events() if e.kind.value.startswith("alert_")] == []
    assert {w.id for w in await stack.settled_runs()} == runs_before
    assert not stack.server_errors()


def hmac_headers(raw: bytes, stamp: int | None, secret: str = GRAFANA_HMAC) -> dict[str, str]:
    """What Grafana's HMAC round tripper adds: the hex HMAC-SHA256 of the body, or of
    `<unix seconds>:<body>` with the time in the timestamp header when one is named."""
    signed = raw if stamp is None else f"{stamp}:".encode() + raw
    headers = {"X-Grafana-Alerting-Signature": hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}
    return headers if stamp is None else {**headers, STAMP_HEADER: str(stamp)}


def access_refused(stack: BotStack) -> list[Any]:
    return [e for e in stack.audit.events() if e.kind.value == "access_refused"]


async def test_an_alert_whose_values_overflow_is_rejected_alone_and_the_rest_start(stack):
    """Grafana's float `values` keep a literal that overflows (`1e400` parses as inf). The front
    door's `start` question then has no JSON input: that alert is refused (the engine fails closed)
    and the body's other alerts start. Red team, stop 44: the front door digested the input itself,
    outside the engine's guard, and the whole delivery was a 500 Grafana retried forever."""
    body = grafana_body(zones(2), cpu=True)  # the `cpu` playbook: its params do not read `values`
    body["alerts"][0]["values"] = {"B": 7.5}
    text = json.dumps(body).replace('"B": 7.5', '"B": 1e400', 1)
    response = await deliver(stack, text.encode(), **{"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:300]
    assert sorted(o["outcome"] for o in response.json()) == ["rejected", "started"], response.json()


async def test_with_hmac_set_a_delivery_needs_the_token_and_a_fresh_signature_and_refusals_are_on_record(
        dev_env, tmp_path):
    """Attack: whoever holds the bearer token (it sits in Grafana's contact point, and in front of
    any proxy that logs headers) forges an alert, or replays a captured signed one an hour later.
    With the HMAC secret set, neither starts anything, and each refusal is recorded."""
    async with bot_stack(dev_env.client, tmp_path, PLAYBOOKS, grafana_token=GRAFANA_TOKEN,
                         grafana_hmac_secrets=f"{GRAFANA_HMAC}, {GRAFANA_HMAC_OLD}",
                         grafana_hmac_timestamp_header=STAMP_HEADER) as s:
        raw = json.dumps(grafana_body(zones(1))).encode()
        now = int(time.time())
        forged = [
            ({}, "missing X-Grafana-Alerting-Signature"),
            (hmac_headers(raw, now, secret="guessed"), "does not match"),
            (hmac_headers(raw, now - 3600), "old"),  # captured, replayed an hour later
            ({**hmac_headers(raw, now), "X-Grafana-Alerting-Signature": hmac_headers(b"{}", now)[
                "X-Grafana-Alerting-Signature"]}, "does not match"),  # a signature lifted from another body
            ({"X-Grafana-Alerting-Signature": hmac_headers(raw, None)["X-Grafana-Alerting-Signature"]},
             f"missing {STAMP_HEADER}"),
        ]
        for headers, why in forged:
            answer = await s.http.post(f"{s.url}/grafana", content=raw, headers={**GRAFANA_AUTH, **headers})
            assert answer.status_code == 401 and why in answer.json()["error"], (why, answer.text)
        unsent = await s.http.post(f"{s.url}/grafana", content=raw, headers=hmac_headers(raw, now))
        assert unsent.status_code == 401 and "token" in unsent.json()["error"], "the token is still required"
        assert len(access_refused(s)) == len(forged) + 1, [e.details for e in access_refused(s)]  # and the tokenless one
        assert await s.settled_runs() == [], "a refused delivery starts nothing"

        signed = await s.http.post(f"{s.url}/grafana", content=raw, headers={**GRAFANA_AUTH, **hmac_headers(raw, now)})
        assert [o["outcome"] for o in signed.json()] == ["started"], signed.text
        rotated = {**GRAFANA_AUTH, **hmac_headers(raw, now, secret=GRAFANA_HMAC_OLD)}
        assert [o["outcome"] for o in (await s.http.post(f"{s.url}/grafana", content=raw, headers=rotated)).json()] \
            == ["attached"], "the secret before rotation still holds"


async def test_with_only_an_hmac_secret_a_signed_delivery_needs_no_token(dev_env, tmp_path):
    """A contact point with HMAC and no Authorization header: the signature alone opens the route
    (the body alone is signed: no timestamp header named)."""
    async with bot_stack(dev_env.client, tmp_path, PLAYBOOKS, grafana_hmac_secrets=GRAFANA_HMAC) as s:
        raw = json.dumps(grafana_body(zones(1))).encode()
        refused = await s.http.post(f"{s.url}/grafana", content=raw, headers=GRAFANA_AUTH)
        assert refused.status_code == 401 and "X-Grafana-Alerting-Signature" in refused.json()["error"]
        answer = await s.http.post(f"{s.url}/grafana", content=raw, headers=hmac_headers(raw, None))
        assert [o["outcome"] for o in answer.json()] == ["started"], answer.text
        assert len(access_refused(s)) == 1
