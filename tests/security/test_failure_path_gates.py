"""A failure path must not be a way around policy: a denied or rejected step neither continues
(`on_failure: continue`) nor falls back; the run ends and rolls back as any denial does."""

from __future__ import annotations

from tests.engine.support import Recorder, playbook, run_input, start, worker
from tests.engine.test_approvals import policy

PB = """
name: bypass
steps:
  - {id: prepare, action: t.ok, compensate: {action: t.ok}}
  - id: restart
    action: t.ok
    impact: high
    on_failure: continue
    fallback: {action: t.ok, with: {fb: true}}
  - {id: after, action: t.ok}
"""


async def test_a_denied_step_neither_continues_nor_falls_back(skip_env):
    rec = Recorder()
    async with worker(skip_env.client, rec, policy({"allow": False, "reasons": ["freeze"]})) as w:
        status = await (await start(skip_env.client, w, run_input(playbook(PB)))).result()
    assert [(s, c) for s, c, _ in rec.calls] == [("prepare", False), ("prepare", True)]
    assert status.step("restart").state == "denied" and status.step("restart").fallback is None
    assert status.step("after").state == "pending" and status.state == "compensated"


async def test_a_step_that_times_out_waiting_for_approval_neither_continues_nor_falls_back(skip_env):
    rec = Recorder()
    decision = {"allow": True, "require_approval": True, "approval_timeout": "1m"}
    async with worker(skip_env.client, rec, policy(decision)) as w:
        status = await (await start(skip_env.client, w, run_input(playbook(PB)))).result()
    assert status.step("restart").state == "rejected" and status.step("restart").fallback is None
    assert [s for s, c, _ in rec.calls if not c] == ["prepare"] and status.state == "compensated"


RENDER_FAILS = """
name: bypass-render
steps:
  - {id: lookup, action: t.ok}
  - id: restart
    action: t.ok
    impact: high
    with: {target: "{{ steps.lookup.output.nothing_here.target }}"}
    fallback: {action: t.ok, with: {force: true}}
  - {id: after, action: t.ok}
"""


async def test_a_high_step_that_cannot_render_does_not_fall_back_past_policy(skip_env):
    """Red team: a step output without the key the high step needs (data decides that) made the
    step fail before its gate, and its low-impact fallback ran with no policy asked at all."""
    rec = Recorder()
    seen: list[dict] = []
    async with worker(skip_env.client, rec, policy({"allow": False, "reasons": ["freeze"]}, seen)) as w:
        status = await (await start(skip_env.client, w, run_input(playbook(RENDER_FAILS)))).result()
    assert [s for s, c, _ in rec.calls if not c] == ["lookup"], rec.calls  # the fallback never ran
    assert status.step("restart").state == "denied" and status.step("after").state == "pending"
    assert [i["step"]["fallback_of"] for i in seen] == ["t.ok"]  # policy was asked, about the fallback


HUMAN_CONTINUES = """
name: bypass-approve
steps:
  - {id: lookup, action: t.ok}
  - id: ok
    action: core.approve
    on_failure: continue
    with: {message: "Restart {{ steps.lookup.output.json.name }}?"}
  - {id: restart, action: t.ok}
"""


def test_a_human_step_may_not_say_on_failure_continue(tmp_path):
    from bot.playbook.loader import PlaybookLoadErrors, load_file  # noqa: PLC0415

    path = tmp_path / "bypass.yaml"
    path.write_text(HUMAN_CONTINUES.replace("action: t.ok}", "action: core.log, with: {message: x}}"))
    try:
        load_file(path)
    except PlaybookLoadErrors as exc:
        assert any("on_failure" in str(e) and "core.approve" in str(e) for e in exc.errors), str(exc)
    else:
        raise AssertionError("core.approve with on_failure: continue loaded")


async def test_an_approval_that_cannot_render_never_reads_as_passed(skip_env):
    """Red team: with `on_failure: continue`, an approval whose message failed to render (data
    decides that) read failed_ignored and the run went on to restart with no vote at all. Even a
    snapshot that skipped the load checks must not get past it."""
    rec = Recorder()
    async with worker(skip_env.client, rec, policy({"allow": True})) as w:
        status = await (await start(skip_env.client, w, run_input(playbook(HUMAN_CONTINUES)))).result()
    assert [s for s, c, _ in rec.calls if not c] == ["lookup"], rec.calls
    assert status.step("ok").state == "failed" and status.step("restart").state == "pending"
