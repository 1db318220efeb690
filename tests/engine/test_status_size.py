"""A run's status, where it leaves the worker (its `status` query, its result), stays within
Temporal's payload limits whatever its steps were given: what the audit trail holds whole is left
out first, and what other runs read of it stays."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from pydantic_core import to_json

from bot.engine.state import OMITTED, STATUS_MAX, ChildCall, ForeachItem, Requester, RunStatus, StepStatus
from tests.engine.support import Recorder, cancel, playbook, run_input, start, wait_for_state, worker

WIDE = "\n".join(
    f"  - {{id: s{i}, action: t.quick, with: {{seconds: 0, a: \"{{{{ 'x' * 250000 }}}}\"}}}}" for i in range(10)
)


async def test_many_steps_with_large_args_still_end_the_run(dev_env):
    """Each step's args are within ARGS_MAX, but the status kept them all: the run's result (its
    status, 2.25 MB) passed Temporal's 2 MB payload limit, its last workflow task failed on every
    replay and the run never ended. Its live status could not be read either."""
    rec = Recorder()
    pb = playbook(f"name: wide-args\nsteps:\n{WIDE}\n  - {{id: hold, action: t.wait}}\n")
    async with worker(dev_env.client, rec) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        live = await wait_for_state(handle, lambda st: st.step("hold").state == "running", 30)
        assert live.left_out == ["arguments"]
        assert live.step("s9").args == {OMITTED: "its arguments: the step's audit events hold them"}
        await cancel(handle)
        status = await asyncio.wait_for(handle.result(), 60)
    assert status.state == "compensated" and status.left_out == ["arguments"]  # (cancelled after steps that ran)
    assert [s.state for s in status.steps[:10]] == ["succeeded"] * 10
    assert len(rec.calls[0][2]["a"]) == 250000  # the action itself had them whole


def _status(**fields: object) -> RunStatus:
    return RunStatus(run_id="r-1", playbook="p", playbook_hash="sha256:x", requested_by="cli:a", trigger="cli",
                     **fields)


def test_a_status_within_the_bound_is_left_as_it_is():
    status = _status(steps=[StepStatus(id="a", action="t.ok", args={"a": "x" * 1000}, output={"b": 1})])
    assert status.bounded() is status


def test_outputs_go_last_and_what_other_runs_and_approvers_read_stays():
    steps = [StepStatus(id=f"s{i}", action="t.ok", state="succeeded", args={"a": "x" * 100},
                        output={"o": "y" * 200_000}) for i in range(10)]
    gate = StepStatus(id="gate", action="t.ok", state="waiting_approval", args={"a": "z" * 300_000})
    status = _status(steps=[*steps, gate], lock_key="svc:api", state="running",
                     requester=Requester(principal="slack:U1", person="ann"),
                     children=[ChildCall(step="call", run_id="c-1", playbook="child")])
    cut = status.bounded()
    assert cut.left_out == ["arguments", "long errors", "foreach items' steps", "outputs"]
    assert len(to_json(cut)) <= STATUS_MAX
    assert cut.step("s3").output == {OMITTED: "its output: the step's audit events hold them"}
    assert (cut.lock_key, cut.state, cut.requester, cut.children) == (
        status.lock_key, status.state, status.requester, status.children)
    assert cut.step("gate").args == gate.args  # what its approvers are asked about
    assert status.step("s3").output == {"o": "y" * 200_000}  # the run's own state is untouched


def test_past_every_cut_the_steps_go_and_the_run_still_says_how_it_ended():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    items = [ForeachItem(index=i, value=str(i), steps=[StepStatus(id=f"g[{i}].a", action="t.ok", started_at=at)])
             for i in range(500)]
    steps = [StepStatus(id=f"s{i}", action="t.ok", state="failed", error="e" * 3000) for i in range(600)]
    status = _status(steps=[StepStatus(id="g", action="foreach", items=items), *steps], state="compensated",
                     error="z" * 100_000, failed_step="s1", not_undone=["s0"], trace=["s0"] * 50_000)
    cut = status.bounded(limit=64 * 1024)
    assert cut.left_out == ["arguments", "long errors", "foreach items' steps", "outputs",
                            "steps, undos, params and trace"]
    assert len(cut.model_dump_json()) <= 64 * 1024
    assert (cut.state, cut.failed_step, cut.not_undone, len(cut.error or "")) == ("compensated", "s1", ["s0"], 2000)


def test_the_bound_counts_bytes_as_temporal_does():
    """Red team (stop 53): the bound counted characters. Ten steps of 64,000 emoji each (256,000
    bytes, within ARGS_MAX) read 650 K characters, under the bound, and 2.5 MB for Temporal: the
    run's result was refused on every replay and the run never ended."""
    steps = [StepStatus(id=f"s{i}", action="t.ok", state="succeeded", args={"a": "\U0001F525" * 64_000})
             for i in range(10)]
    cut = _status(steps=steps).bounded()
    assert cut.left_out == ["arguments"] and len(to_json(cut)) <= STATUS_MAX
