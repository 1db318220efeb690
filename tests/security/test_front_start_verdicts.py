"""A front door's sealed `start` answer admits a run only when it is the worker's own answer.

Each front door asks `start` on the input the worker's admission builds and seals its allow to the
start's proof (bot/engine/verdicts.py); the worker then does not ask again, and the run's
`run_started` record says `start_asked_by: front door`. Here through the real Slack door and
/alertmanager (the API and the CLI: tests/api/test_routes.py, tests/e2e/test_dev_cli.py), and
the attack a shared answer opens: a front door whose policy data lags the workers' (a rollout that
reached the workers first) must not start what the workers now refuse.
"""

from __future__ import annotations

import uuid
from typing import Any


from bot.engine.runs import ask_start, start_run
from bot.engine.state import TriggerContext
from bot.playbook.params import coerce_params
from bot.policy.embedded import EmbeddedEngine
from tests.security.test_provenance import TARGET, alert_body
from tests.security.test_raw_temporal import DATA, PLAYBOOKS
from tests.security.trust_stack import (
    FRONT_DOOR, TrustStack, ended, result, slack_actor, slack_run, stack_fixture, stale_fixture,
)
from tests.slack.support import ALICE, MALLORY, principal
from tests.waiting import eventually

# The workers' data: mallory may no longer start anything.
CURRENT = {**DATA, "start_denylist": [principal(MALLORY)]}
ALERTED = TARGET.format(name="target-staging", environment="staging", alertname="TargetStagingDown")

stack = stack_fixture("start-verdicts", {**PLAYBOOKS, "target-staging": ALERTED}, CURRENT)
stale = stale_fixture(DATA)  # a front door on the data from before mallory was denylisted


async def asked_by(stack: TrustStack, run_id: str) -> str | None:
    """Who asked the run's `start` rule, per its run_started record (None: its worker)."""
    async def started() -> Any:
        return next(iter(stack.events(run_id, "run_started")), None)

    return (await eventually(started, what=f"{run_id} on the record")).details.get("start_asked_by")


async def test_a_slack_command_is_admitted_on_the_front_doors_answer(stack: TrustStack) -> None:
    run_id = await slack_run(stack, "touch", ALICE)
    assert (await ended(stack, run_id)).state == "completed"
    assert await asked_by(stack, run_id) == "front door"


async def test_an_alert_is_admitted_on_the_front_doors_answer(stack: TrustStack) -> None:
    response = await stack.alert(alert_body("TargetStagingDown", environment="staging", severity="none"))
    (outcome,) = response.json()
    assert outcome["outcome"] == "started", outcome
    assert await asked_by(stack, outcome["run_id"]) == "front door"


async def test_a_lagging_front_doors_allow_does_not_start_what_the_workers_refuse(
    stack: TrustStack, stale: EmbeddedEngine
) -> None:
    assert stale.policy_hash != stack.policy.policy_hash
    loaded, trigger = stack.loaded("touch"), TriggerContext(kind="slack", requested_by=principal(MALLORY))
    run_id = f"touch-lagging-{uuid.uuid4().hex[:8]}"
    actor, params = slack_actor(MALLORY, "sre"), coerce_params(loaded.playbook, {})  # as the door sends them
    asked = await ask_start(stale, loaded, params, trigger, actor, run_id)
    assert asked.verdict.allow and asked.sealable  # that front door's own version allowed it
    handle = await start_run(stack.client, stack.task_queue, loaded, params, trigger, actor=actor,
                             keyring=FRONT_DOOR, run_id=run_id, asked=asked)
    status = await result(handle)
    assert status.state == "cancelled" and "start_denylist" in (status.error or ""), status.error
    assert stack.sink.of(run_id) == []
