"""Foreach groups (format v1.1) with the real worker: order and concurrency, max_failures,
per-item undo then the run's saga, skipped items, outputs, item scope in templates, per-item
policy, the item limit, settles and cancel.

Actions are the Recorder's fakes (tests/engine/support.py). A step meant to fail for one item is
a `t.fail` step whose `when:` picks that item. Ordering claims that depend on real time (rolling,
at most N at once) run on the dev server with `t.quick` and read the recorded activity spans.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from temporalio import activity

from bot.engine.admission import Admission, AdmitRequest
from bot.engine.state import Requester, RunStatus
from bot.engine.worker import make_worker
from bot.engine.workflow import PlaybookRun
from bot.policy.inputs import provenance
from bot.slack.notifier import SlackState, SlackSync
from tests.engine.support import Recorder, cancel, execute, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import policy, vote


def order(rec: Recorder) -> list[str]:
    return [("undo:" if comp else "") + step for step, comp, _ in rec.calls]


def items(status: RunStatus, group: str = "roll") -> list[str]:
    return [item.state for item in status.step(group).items or []]


def state_of(status: RunStatus, address: str) -> str | None:
    """An item step's state, None before its group has rendered its items."""
    try:
        return status.step(address).state
    except KeyError:
        return None


def failing(hosts: str, *, max_failures: Any = 0, concurrency: int = 1, extra: str = "") -> str:
    """pre, then per host: drain (with an undo), a `bad` step that fails for the hosts in `hosts`,
    and check; then after. The item list is a var, as a playbook's constant list of hosts."""
    return f"""
name: roll-fail
vars: {{hosts: [a, b, c, d]}}
steps:
  - {{id: pre, action: t.ok, compensate: {{action: t.ok}}}}
  - id: roll
    foreach: "{{{{ vars.hosts }}}}"
    as: host
    concurrency: {concurrency}
    max_failures: {max_failures}
    steps:
      - {{id: drain, action: t.ok, with: {{h: "{{{{ host }}}}"}}, compensate: {{action: t.ok, with: {{h: "{{{{ host }}}}"}}}}}}
      - {{id: bad, action: t.fail, when: "{{{{ host in {hosts!r} }}}}"}}
      - {{id: check, action: t.ok, compensate: {{action: t.ok}}}}
  - {{id: after, action: t.ok}}
{extra}"""


async def test_items_run_in_order_with_their_own_scope_and_the_group_output_is_a_list(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: roll-scope
vars: {hosts: [a, b, c]}
steps:
  - {id: pre, action: t.ok}
  - id: roll
    foreach: "{{ vars.hosts }}"
    as: host
    steps:
      - {id: drain, action: t.ok, with: {h: "{{ host }}", i: "{{ index }}", pre: "{{ steps.pre.output.id }}"}}
      - {id: check, action: t.ok, with: {d: "{{ steps.drain.output.id }}", st: "{{ steps.drain.state }}"}}
  - id: after
    action: t.ok
    with: {n: "{{ steps.roll.output | length }}", second: "{{ steps.roll.output[1].check.id }}", st: "{{ steps.roll.state }}"}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "completed", status.error
    assert order(rec) == ["pre", "roll[0].drain", "roll[0].check", "roll[1].drain", "roll[1].check",
                          "roll[2].drain", "roll[2].check", "after"]
    calls = {step: params for step, _, params in rec.calls}
    assert calls["roll[1].drain"] == {"h": "b", "i": 1, "pre": "pre-out"}
    # inside an item, steps.<inner> is this item's own step
    assert calls["roll[2].check"] == {"d": "roll[2].drain-out", "st": "succeeded"}
    assert calls["after"] == {"n": 3, "second": "roll[1].check-out", "st": "succeeded"}
    group = status.step("roll")
    assert group.action == "foreach" and group.state == "succeeded"
    assert [(i.index, i.value, i.state) for i in group.items or []] == [(0, "a", "succeeded"), (1, "b", "succeeded"),
                                                                          (2, "c", "succeeded")]
    assert group.progress is not None and group.progress.text() == "3/3 done"
    assert status.step("roll[1].check").output == {"echo": {"d": "roll[1].drain-out", "st": "succeeded"},
                                                   "id": "roll[1].check-out"}
    # idempotency keys carry the item address
    assert f"{status.run_id}/{status.execution.replace('-', '')}:roll[1].drain" in rec.keys


async def test_max_failures_0_undoes_the_failed_item_then_the_saga_undoes_succeeded_items_newest_first(skip_env):
    rec = Recorder()
    status = await execute(skip_env.client, rec, playbook(failing("b")))
    assert status.state == "compensated"
    assert order(rec) == [
        "pre",
        "roll[0].drain", "roll[0].check",
        "roll[1].drain", "roll[1].bad", "undo:roll[1].drain",  # the failed item undoes its own steps first
        # c and d never start; the saga undoes item 0 (its steps in reverse), then pre
        "undo:roll[0].check", "undo:roll[0].drain", "undo:pre",
    ]
    assert items(status) == ["succeeded", "failed", "skipped", "skipped"]
    assert status.step("roll[2].drain").state == "skipped"
    assert status.step("roll").state == "failed"
    assert status.failed_step == "roll" and "roll[1].bad" in (status.error or "")
    assert "1 items failed, more than max_failures (0)" in (status.error or "")
    assert status.step("after").state == "pending"
    assert [(c.step, c.state) for c in status.compensations] == [
        ("roll[1].drain", "succeeded"), ("roll[0].check", "succeeded"), ("roll[0].drain", "succeeded"),
        ("pre", "succeeded"),
    ]


async def test_max_failures_1_tolerates_one_failed_item_and_the_run_completes(skip_env):
    rec = Recorder()
    status = await execute(skip_env.client, rec, playbook(failing("b", max_failures=1)))
    assert status.state == "completed" and status.error is None and status.failed_step is None
    assert items(status) == ["succeeded", "failed", "succeeded", "succeeded"]
    assert "undo:roll[1].drain" in order(rec) and order(rec)[-1] == "after"
    assert [c for c in order(rec) if c.startswith("undo:")] == ["undo:roll[1].drain"], "only the failed item undone"
    group = status.step("roll")
    assert group.state == "succeeded" and group.progress is not None
    assert group.progress.text() == "3/4 done, 1 failed"
    failed = [e for e in rec.audit if e.step_id == "roll[1].bad" and e.kind.value == "step_failed"]
    assert failed and failed[0].details["index"] == 1, "audit events of an item's step carry its index"


async def test_past_max_failures_no_new_item_starts_and_the_rest_read_skipped(skip_env):
    rec = Recorder()
    status = await execute(skip_env.client, rec, playbook(failing("bc", max_failures=1)))
    assert status.state == "compensated"
    assert items(status) == ["succeeded", "failed", "failed", "skipped"]
    assert not any(step.startswith("roll[3]") for step in order(rec))
    assert order(rec)[-3:] == ["undo:roll[0].check", "undo:roll[0].drain", "undo:pre"]


async def test_max_failures_all_goes_on_and_fails_only_when_every_item_failed(skip_env):
    rec = Recorder()
    some = await execute(skip_env.client, rec, playbook(failing("abc", max_failures='"all"')))
    assert some.state == "completed" and items(some) == ["failed", "failed", "failed", "succeeded"]
    rec = Recorder()
    every = await execute(skip_env.client, rec, playbook(failing("abcd", max_failures='"all"')))
    assert every.state == "compensated" and items(every) == ["failed"] * 4
    assert "every item failed (0/4 done, 4 failed)" in (every.error or "")
    assert order(rec)[-1] == "undo:pre"


async def test_concurrency_1_is_strictly_rolling(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: rolling
steps:
  - id: roll
    foreach: [a, b, c]
    steps:
      - {id: drain, action: t.quick, with: {seconds: 0.3}}
      - {id: check, action: t.ok}
"""
    )
    status = await execute(dev_env.client, rec, pb)
    assert status.state == "completed"
    for i in (1, 2):
        # an item's first step starts only after the previous item's last step has ended
        assert rec.spans[f"roll[{i}].drain"][0] >= rec.spans[f"roll[{i - 1}].check"][1]


async def test_concurrency_3_never_runs_more_than_3_items_at_once(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: three-at-once
steps:
  - id: roll
    foreach: [0, 1, 2, 3, 4, 5, 6, 7]
    concurrency: 3
    steps:
      - {id: work, action: t.quick, with: {seconds: 0.6}}
"""
    )
    status = await execute(dev_env.client, rec, pb)
    assert status.state == "completed"
    spans = [rec.spans[f"roll[{i}].work"] for i in range(8)]
    overlap = max(sum(1 for s, e in spans if s <= moment < e) for moment, _ in spans)
    assert overlap <= 3
    assert overlap >= 2, "items run side by side"
    # items start in index order: the fourth only once one of the first three has ended
    assert spans[3][0] >= min(e for _, e in spans[:3])


async def test_a_high_impact_item_step_asks_policy_per_item_and_votes_name_its_address(skip_env):
    rec = Recorder()
    seen: list[dict[str, Any]] = []
    pb = playbook(
        """
name: gated-roll
vars: {hosts: [web-1, web-2]}
steps:
  - id: roll
    foreach: "{{ vars.hosts }}"
    as: host
    steps:
      - {id: restart, action: t.ok, impact: high, with: {h: "{{ host }}"}}
"""
    )
    decision = {"allow": True, "require_approval": True, "min_approvals": 1, "approver_groups": ["sre"]}
    async with worker(skip_env.client, rec, extra=policy(decision, seen)) as w:
        handle = await start(skip_env.client, w, run_input(pb))
        for i in range(2):
            address = f"roll[{i}].restart"
            await wait_for_state(handle, lambda s, a=address: state_of(s, a) == "waiting_approval", timeout=30)
            result = await handle.execute_update(PlaybookRun.vote, vote(address, "cli:dana"))
            assert result.step_id == address
        status = await handle.result()
    assert status.state == "completed"
    assert [(d["step"]["id"], d["item"], d["index"], d["step"]["with"]) for d in seen] == [
        ("roll[0].restart", "web-1", 0, {"h": "web-1"}),
        ("roll[1].restart", "web-2", 1, {"h": "web-2"}),
    ]
    assert [v.user for v in status.step("roll[1].restart").approvals] == ["cli:dana"]


async def test_a_denied_item_step_stops_the_group_even_under_max_failures_all(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: denied-roll
steps:
  - id: roll
    foreach: [a, b, c]
    max_failures: all
    steps:
      - {id: drain, action: t.ok, compensate: {action: t.ok}}
      - {id: restart, action: t.ok, impact: high}
"""
    )
    async with worker(skip_env.client, rec, extra=policy({"allow": False, "reasons": ["frozen"]})) as w:
        status = await (await start(skip_env.client, w, run_input(pb))).result()
    assert status.state == "compensated"
    assert items(status) == ["failed", "skipped", "skipped"]
    assert status.step("roll[0].restart").state == "denied"
    assert order(rec) == ["roll[0].drain", "undo:roll[0].drain"]


def admit_with(foreach_max: int) -> Any:
    @activity.defn(name="run.admit")
    async def admit(request: AdmitRequest) -> Admission:
        who = request.trigger.requested_by
        return Admission(
            allow=True, params=request.params, foreach_max=foreach_max,
            requester=Requester(principal=who, person=who, verified=True, verified_by="dev"),
            provenance=provenance(request.playbook, request.params, request.trigger.kind, None, True),
        )

    return admit


async def test_more_items_than_the_workers_limit_fails_the_group_before_any_item_runs(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: too-many
steps:
  - {id: pre, action: t.ok, compensate: {action: t.ok}}
  - id: roll
    foreach: [a, b, c]
    steps: [{id: work, action: t.ok}]
"""
    )
    activities = [a for a in rec.activities() if activity._Definition.must_from_callable(a).name != "run.admit"]
    async with make_worker(skip_env.client, f"tq-{uuid.uuid4()}", [*activities, admit_with(2)]) as w:
        status = await (await start(skip_env.client, w, run_input(pb))).result()
    assert status.state == "compensated"
    assert order(rec) == ["pre", "undo:pre"]
    assert "3 items, more than the 2 a foreach group may have (PLAYBOOK_BOT_FOREACH_MAX)" in (status.error or "")
    assert status.step("roll").items == []


async def test_settles_a_whole_group_or_one_items_step(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: settle-roll
steps:
  - id: roll
    foreach: [a, b]
    steps:
      - {id: enter, action: t.ok, compensate: {action: t.ok}}
      - {id: work, action: t.ok, compensate: {action: t.ok}}
  - {id: exit-one, action: t.ok, settles: "roll[1].enter"}
  - {id: boom, action: t.fail}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    undone = [c for c in order(rec) if c.startswith("undo:")]
    assert undone == ["undo:roll[1].work", "undo:roll[0].work", "undo:roll[0].enter"]
    assert status.step("roll[1].enter").settled_by == "exit-one"

    rec = Recorder()
    whole = playbook(pb.model_dump_json(by_alias=True).replace('"roll[1].enter"', '"roll"'))
    await execute(skip_env.client, rec, whole)
    assert [c for c in order(rec) if c.startswith("undo:")] == []


async def test_settles_inside_an_item_drops_that_items_earlier_undo(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: settle-in-item
steps:
  - id: roll
    foreach: [a, b]
    steps:
      - {id: enter, action: t.ok, compensate: {action: t.ok}}
      - {id: leave, action: t.ok, settles: enter}
  - {id: boom, action: t.fail}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "compensated"
    assert [c for c in order(rec) if c.startswith("undo:")] == []
    assert status.step("roll[0].enter").settled_by == "roll[0].leave"


async def test_cancel_mid_foreach_cancels_the_running_item_then_the_saga_undoes(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: cancel-roll
steps:
  - id: roll
    foreach: [a, b, c]
    steps:
      - {id: drain, action: t.ok, compensate: {action: t.ok}}
      - {id: work, action: t.wait, when: "{{ index == 1 }}"}
"""
    )
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        await asyncio.wait_for(rec.started.wait(), timeout=30)
        await cancel(handle, reason="enough")
        status = await handle.result()
    assert status.state == "compensated"
    assert items(status) == ["succeeded", "cancelled", "skipped"]
    assert status.step("roll[1].work").state == "cancelled" and rec.cancelled == ["roll[1].work"]
    assert status.step("roll").state == "cancelled"
    assert order(rec) == ["roll[0].drain", "roll[1].drain", "roll[1].work", "undo:roll[1].drain", "undo:roll[0].drain"]
    assert status.error and status.error.startswith("cancelled by cli:tester")


async def test_slack_and_the_console_show_progress_and_the_items_that_need_eyes(skip_env):
    from bot.console import status_table
    from bot.slack.blocks import status_blocks

    rec = Recorder()
    status = await execute(skip_env.client, rec, playbook(failing("b", max_failures=1)))
    text = json.dumps(status_blocks(status))
    assert "3/4 done, 1 failed" in text
    assert "roll[1].bad" in text and "roll[0].drain" not in text, "only item steps that went wrong are listed"
    table = status_table(status)
    assert "  roll[2].check" in [str(cell) for cell in table.columns[0].cells]
    assert "3/4 done, 1 failed" in str([str(cell) for cell in table.columns[5].cells])


async def test_slack_follows_the_items_with_syncs_coalesced_not_one_per_item(dev_env):
    """A run with a channel shows foreach progress in Slack, but an item that ends while a sync is in
    flight leaves one sync queued behind it (showing every item ended by then), not one each: 100
    items at concurrency 10 were 100 syncs in a row, 2.3x the same steps as parallel groups
    (bench/foreach.md). Slack still ends up showing the finished group."""
    seen: list[tuple[int, int]] = []  # (done, total) of the group at each sync

    @activity.defn(name="slack.sync")
    async def slow_sync(request: SlackSync) -> SlackState:
        group = next((s for s in request.status.steps if s.id == "roll"), None)
        if group is not None and group.progress is not None:
            seen.append((group.progress.done, group.progress.total))
        await asyncio.sleep(1.0)  # a slow Slack: many items end meanwhile
        return request.state

    text = """
name: roll-slack
channel: "#incidents"
steps:
  - id: roll
    foreach: "{{ range(20) | list }}"
    concurrency: 5
    steps:
      - {id: note, action: t.ok}
"""
    rec = Recorder()
    async with worker(dev_env.client, rec, [slow_sync]) as w:
        status = await (await start(dev_env.client, w, run_input(playbook(text)))).result()
    assert status.state == "completed", status.error
    assert items(status) == ["succeeded"] * 20
    dones = [done for done, _ in seen]
    assert dones == sorted(dones), "each sync shows at least what the one before it showed"
    assert seen[-1] == (20, 20), "Slack ends showing every item done"
    item_syncs = [d for d in dones if 0 < d < 20]
    assert len(item_syncs) < 20 // 2, f"{len(dones)} syncs for 20 items: not coalesced ({dones})"
