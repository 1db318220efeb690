"""Requester-chosen facts may only make a decision stricter (issue 11, item 7).

The shipped policy reads `input.provenance`, which the worker computes: a param the requester
chose cannot take a production target out of production, and only an authenticated alert's own
labels can invoke the critical-alert exception to a change freeze. Requests go through the real
front door (Slack, /alertmanager with its bearer token) or straight to Temporal; side effects are
counted at the HTTP sink.

On main (no provenance): a requester's `environment=staging` lifted the production approval,
and a raw client's alert labelled critical passed a freeze. A Slack `severity=critical` param did
not pass the freeze on main either (main read the alert's labels only).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
import pytest_asyncio

from bot.engine.runs import start_run
from bot.engine.state import RunStatus, TriggerContext
from bot.playbook.params import coerce_params
from tests.security.trust_stack import TrustStack, cli_actor, ended, raw_input, result, slack_run, trust_stack, until, waiting
from tests.slack.support import ALICE

TARGET = """
name: {name}
summary: A high-impact change to a service; production unless the file says otherwise
owner: sre
vars: {{sink: "{{sink}}"}}
params:
  environment: {{type: string, enum: [production, staging], default: {environment}}}
  severity: {{type: string, enum: [none, warning, critical], default: none}}
triggers:
  alertmanager:
    - matchers: ['alertname="{alertname}"']
      params: {{environment: "{{{{ alert.labels.environment }}}}", severity: "{{{{ alert.labels.severity }}}}"}}
steps:
  - id: prep
    action: http.request
    with: {{method: POST, url: "{{{{ vars.sink }}}}/{{{{ run.id }}}}/prep"}}
  - id: risky
    action: http.request
    impact: high
    with: {{method: POST, url: "{{{{ vars.sink }}}}/{{{{ run.id }}}}/risky"}}
"""

PLAYBOOKS = {
    "target": TARGET.format(name="target", environment="production", alertname="TargetDown"),
    "target-staging": TARGET.format(name="target-staging", environment="staging", alertname="TargetStagingDown"),
}
FREEZE = {"start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z", "reason": "year-end freeze"}


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("prov"), PLAYBOOKS) as s:
        yield s


@pytest_asyncio.fixture(scope="module")
async def frozen(dev_env: Any, _slack_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TrustStack]:
    """The same, under a change freeze that applies everywhere."""
    root = tmp_path_factory.mktemp("frozen")
    async with trust_stack(dev_env.client, _slack_server, root, PLAYBOOKS, {"freezes": [FREEZE]}) as s:
        yield s


def reasons(status: RunStatus, step: str = "risky") -> list[str]:
    return list((status.step(step).decision or {}).get("reasons") or [])


# ---- a requester's environment -----------------------------------------------------------------


async def test_a_requester_cannot_take_a_production_target_out_of_production(stack: TrustStack) -> None:
    """`environment=staging` from Slack and from the dev CLI on `target` (production by its file):
    the high-impact step still waits for a production approval and is not called. Positive
    control: `target-staging`, staging by its own file, runs the step without approval.
    On main: the requester's staging was believed and the high-impact call was made unapproved."""
    run_id = await slack_run(stack, "target environment=staging", ALICE)
    status = await waiting(stack, run_id, "risky")
    assert reasons(status) == ["high impact step in production needs 1 approval(s) from sre"], reasons(status)
    assert status.params["environment"] == "staging"

    actor, keyring = cli_actor("alice")
    loaded = stack.loaded("target")
    handle = await start_run(stack.client, stack.task_queue, loaded, coerce_params(loaded.playbook, {"environment": "staging"}),
                             TriggerContext(kind="cli", requested_by=actor.principal), actor=actor, keyring=keyring)
    status = await until(handle, lambda s: s.step("risky").state == "waiting_approval", "risky waiting")
    assert reasons(status) == ["high impact step in production needs 1 approval(s) from sre"], reasons(status)
    assert status.requester and status.requester.verified_by == "dev"
    for run in (run_id, handle.id):
        assert stack.sink.of(run) == [f"/{run}/prep"], "the high-impact step ran unapproved"

    control = await slack_run(stack, "target-staging", ALICE)
    status = await ended(stack, control)
    assert status.state == "completed", status
    assert reasons(status) == ["high impact step outside production (staging)"], reasons(status)
    assert stack.sink.of(control) == [f"/{control}/prep", f"/{control}/risky"]


# ---- severity and change freezes ---------------------------------------------------------------


def alert_body(alertname: str, **labels: str) -> dict[str, Any]:
    """A version-4 webhook as Alertmanager sends it, one firing alert."""
    fingerprint = uuid.uuid4().hex[:16]
    alert = {
        "status": "firing",
        "labels": {"alertname": alertname, **labels},
        "annotations": {"summary": f"{alertname} {fingerprint}"},
        "startsAt": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": fingerprint,
    }
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "bot",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am.example",
            "alerts": [alert]}


async def alert_run(stack: TrustStack, **labels: str) -> RunStatus:
    response = await stack.alert(alert_body("TargetDown", **labels))
    assert response.status_code == 200, response.text
    (outcome,) = response.json()
    assert outcome["outcome"] == "started", outcome
    return await ended(stack, outcome["run_id"])


async def test_a_requesters_severity_critical_does_not_pass_a_freeze(frozen: TrustStack) -> None:
    """`severity=critical` is a param the requester chose (Slack), and an alert a raw Temporal
    client made up (kind alertmanager, labels severity=critical, no proof) vouches for nothing:
    both meet the freeze, the high-impact call is not made. On main: the Slack param was refused
    too, but the raw client's alert passed the freeze and the call was made."""
    for text in ("target severity=critical", "target environment=staging severity=critical"):
        run_id = await slack_run(frozen, text, ALICE)
        status = await ended(frozen, run_id)
        assert status.step("risky").state == "denied", (text, status.step("risky"))
        assert reasons(status) == ["change freeze 2020-01-01T00:00:00Z until 2099-01-01T00:00:00Z: year-end freeze"]
        assert frozen.sink.of(run_id) == [f"/{run_id}/prep"], text

    labels = {"alertname": "TargetDown", "environment": "staging", "severity": "critical"}
    made_up = raw_input(frozen.loaded("target"), {"environment": "staging", "severity": "critical"},
                        requested_by="alertmanager", kind="alertmanager", alert={"labels": labels, "annotations": {}})
    handle = await frozen.start_raw(made_up)
    status = await result(handle)
    assert status.requester and not status.requester.verified
    assert status.step("risky").state == "denied", status.step("risky")
    assert frozen.sink.of(handle.id) == [f"/{handle.id}/prep"]


async def test_an_authenticated_critical_alert_passes_the_freeze(frozen: TrustStack) -> None:
    """Positive control through the real /alertmanager receiver (bearer token checked, the start
    signed by the front door): a critical alert for staging overrides the freeze and the step runs;
    the same alert at warning meets the freeze."""
    status = await alert_run(frozen, environment="staging", severity="critical")
    assert status.state == "completed", status
    assert status.requester and status.requester.verified_by == "alertmanager"
    assert reasons(status) == [
        "high impact step outside production (staging)",
        "critical alert overrides change freeze 2020-01-01T00:00:00Z until 2099-01-01T00:00:00Z: year-end freeze",
    ], reasons(status)
    assert frozen.sink.of(status.run_id) == [f"/{status.run_id}/prep", f"/{status.run_id}/risky"]

    status = await alert_run(frozen, environment="staging", severity="warning")
    assert status.step("risky").state == "denied", status.step("risky")
    assert frozen.sink.of(status.run_id) == [f"/{status.run_id}/prep"]
