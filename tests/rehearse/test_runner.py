"""The rehearsal runner on the shared time-skipping server: the real PlaybookRun, admission and
shipped policies, mocked actions. A passing case, each `expect` key failing with a readable
diff, votes that never reach their step, held locks, and JUnit output."""

from __future__ import annotations

import asyncio
import time
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bot.playbook.loader import Catalog
from bot.rehearse.report import junit_xml, rehearse
from bot.rehearse.runner import REFUSALS, Rehearsal, ServerRefusedTask, _unless_refused, start_env
from tests.rehearse.support import APPROVE, LOCKED, POLICIES, ROLL, directory

PASSING = f"""\
playbook: tiny
cases:
  - name: approved, restart falls back, everything completes
    params: {{service: checkout}}
    requested_by: "slack:U0ALICE"
    mocks: {{restart: {{fail: "503", attempts: 3}}, "fallback:restart": {{output: {{status: 299}}}}}}
    votes: {APPROVE}
    expect:
      state: completed
      outcome: started
      no_error: true
      steps: {{drain: succeeded, restart: succeeded, "fallback:restart": succeeded, page: pending}}
      order: [drain, restart, "fallback:restart", note]
      outputs: {{restart: {{status: 299}}}}
      args:
        note: {{message: "restarted checkout: 299"}}
        "fallback:restart": {{url: "https://deploy.internal/checkout/kill"}}
      params: {{environment: production}}
"""


async def test_a_passing_file(skip_env, tmp_path):
    report = await rehearse(directory(tmp_path, PASSING), POLICIES, env=skip_env)
    assert report.bad_files == []
    [result] = report.results
    assert result.failures == [], result.failures
    assert report.exit_code == 0


# One case per expect key, each wrong on purpose: the run fails (restart's fallback fails too),
# is compensated, and page runs after the saga.
FAILING_RUN = f"""\
    params: {{service: checkout}}
    requested_by: "slack:U0ALICE"
    mocks: {{restart: {{fail: "503"}}, "fallback:restart": {{fail: "kill refused"}}}}
    votes: {APPROVE}
"""

WRONG = {
    "state": ("state: completed", ["state: expected completed, got compensated (error: step restart: 503"]),
    "outcome": ("outcome: busy", ["outcome: expected busy, got started"]),
    "steps": ("steps: {restart: succeeded, 'undo:drain': failed}", [
        "steps.restart: expected succeeded, got failed (error: 503; fallback http.request failed: kill refused)",
        "steps.undo:drain: expected failed, got succeeded",
    ]),
    "order": ("order: [drain, restart, page]", [
        "order: differs at [2]: expected page, got fallback:restart\n"
        "  expected: drain, restart, page\n"
        "  actual:   drain, restart, fallback:restart, undo:drain, page",
    ]),
    "outputs": ("outputs: {drain: {id: 7}}", ['outputs.drain: expected {"id": 7}, got {}']),
    "args": ("args: {'undo:drain': {url: 'https://lb.internal/other/enable', method: POST}, note: {message: x}}", [
        'args.undo:drain.url: expected "https://lb.internal/other/enable", got "https://lb.internal/checkout/enable"',
        'args.note: expected {"message": "x"}, but it never ran',
    ]),
    "params": ("params: {environment: staging}", ['params.environment: expected "staging", got "production"']),
    "error": ("error: timeout", ["error: expected text containing 'timeout', got 'step restart: 503; fallback"]),
    "no_error": ("no_error: true", ["error: expected none, got 'step restart: 503"]),
}


async def test_each_expect_key_fails_with_a_readable_diff(skip_env, tmp_path):
    cases = "".join(f"  - name: wrong {key}\n{FAILING_RUN}    expect: {{{line}}}\n" for key, (line, _) in WRONG.items())
    report = await rehearse(directory(tmp_path, "playbook: tiny\ncases:\n" + cases), POLICIES, env=skip_env)
    assert report.bad_files == [] and report.exit_code == 1
    by_name = {r.name: r for r in report.results}
    for key, (_, wanted) in WRONG.items():
        got = by_name[f"wrong {key}"].failures
        assert len(got) == len(wanted), (key, got)
        for text, want in zip(got, wanted):
            assert text.startswith(want), (key, text)


async def test_votes_that_never_reach_their_step_fail_the_case(skip_env, tmp_path):
    text = f"""\
playbook: tiny
cases:
  - name: drain fails before restart waits
    params: {{service: checkout}}
    requested_by: "slack:U0ALICE"
    mocks: {{drain: {{fail: "lb down"}}}}
    votes: {APPROVE}
    expect: {{state: compensated}}
  - name: a refused vote is a note on a failing case
    params: {{service: checkout}}
    requested_by: "slack:U0ALICE"
    votes: {{restart: [{{by: "slack:U0ALICE", vote: approve}}]}}
    expect: {{state: completed}}
"""
    report = await rehearse(directory(tmp_path, text), POLICIES, env=skip_env)
    never, refused = report.results
    assert never.failures == [
        "votes/confirm for 'restart' were never given: the step never waited for them (it is pending)"
    ]
    assert refused.failures[0].startswith("state: expected completed, got compensated (error: step restart: approval timed out")
    assert any("vote by slack:U0ALICE on restart refused" in n and "four-eyes" in n for n in refused.notes)


async def test_held_locks_queue_refuse_or_attach(skip_env, tmp_path):
    extra = {f"locked-{mode}.yaml": LOCKED.replace("name: locked", f"name: locked-{mode}").replace("ON_BUSY", mode)
             for mode in ("queue", "refuse", "attach")}
    cases = "".join(
        f"  - {{name: {mode}, params: {{service: a}}, locks: {{held: [svc-a]}}, expect: {{outcome: {outcome}, order: []}}}}\n"
        for mode, outcome in (("queue", "queued"), ("refuse", "busy"), ("attach", "attached"))
    )
    free = "  - {name: free, params: {service: b}, locks: {held: [svc-a]}, expect: {outcome: started, state: completed, order: [work]}}\n"
    files = {f"locked-{m}.test.yaml": f"playbook: locked-{m}\ncases:\n" + "".join(
        line for line in cases.splitlines(keepends=True) if f"name: {m}," in line) for m in ("queue", "refuse", "attach")}
    files["locked-queue.test.yaml"] += free
    path = directory(tmp_path, PASSING, extra={**extra, **files})
    report = await rehearse(path, POLICIES, env=skip_env)
    assert report.bad_files == []
    assert {r.name: r.failures for r in report.results} == {
        "approved, restart falls back, everything completes": [], "queue": [], "free": [], "refuse": [], "attach": [],
    }


async def test_junit_output(skip_env, tmp_path):
    text = PASSING + f"  - name: wrong state\n{FAILING_RUN}    expect: {{state: completed}}\n"
    report = await rehearse(directory(tmp_path, text), POLICIES, env=skip_env)
    root = ET.fromstring(junit_xml(report))
    [suite] = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    ok, bad = suite.findall("testcase")
    assert ok.get("classname") == "tiny" and ok.find("failure") is None
    failure = bad.find("failure")
    assert failure is not None and failure.get("message", "").startswith("state: expected completed, got compensated")


ROLL_CASES = """\
playbook: roll
cases:
  - name: answered, an item fails, the child completes
    params: {hosts: [a, b, c]}
    requested_by: "slack:U0ALICE"
    mocks: {check: {output: {ok: 1}}, "check[1]": {fail: "b is down"}, "call/restart": {output: {status: 200}}}
    confirm: {pick: {choice: go, by: "slack:U0BOB", groups: [sre-oncall]}}
    votes: {"call/restart": [{by: "slack:U0BOB", groups: [sre-oncall]}]}
    expect:
      state: completed
      steps: {"roll[1]": failed, "roll[1].drain": compensated, "roll[2].check": succeeded, call/restart: succeeded}
      outputs: {"roll[0]": {drain: {}, check: {ok: 1}}, pick: {choice: go, by: "slack:U0BOB"}}
      args: {"check[2]": {url: "https://c.internal/go"}, "undo:roll[1].drain": {url: "https://lb.internal/b/enable"}}
      order: ["roll[0].drain", "roll[0].check", "roll[1].drain", "roll[1].check", "undo:roll[1].drain",
              "roll[2].drain", "roll[2].check", call, call/drain, call/restart, call/note]
  - name: an answer outside the choices is refused
    params: {hosts: [a]}
    requested_by: "slack:U0ALICE"
    confirm: {pick: {choice: maybe, by: "slack:U0BOB", groups: [sre-oncall]}}
    expect: {state: completed}
"""


async def test_items_answers_and_child_runs(skip_env, tmp_path):
    path = directory(tmp_path, ROLL_CASES, name="roll.test.yaml", extra={"roll.yaml": ROLL})
    report = await rehearse(path, POLICIES, env=skip_env)
    assert report.bad_files == []
    answered, refused = report.results
    assert answered.failures == [], answered.failures
    assert refused.failures[0].startswith("state: expected completed, got "), refused.failures
    assert any("answer by slack:U0BOB on pick refused" in n and "choices" in n for n in refused.notes), refused.notes


FE_CHILD = """\
name: fe-child
summary: child run inside a foreach item
owner: sre-oncall
steps:
  - id: roll
    foreach: [h0, h1]
    as: host
    max_failures: 1
    steps:
      - id: drain
        action: http.request
        with: {method: POST, url: "https://lb.internal/{{ host }}/drain"}
        compensate: {action: http.request, with: {method: POST, url: "https://lb.internal/{{ host }}/enable"}}
      - id: op
        action: playbook.run
        with: {name: node-op, params: {host: "{{ host }}"}}
      - id: verify
        action: http.request
        retry: {max_attempts: 1}
        with: {method: GET, url: "https://lb.internal/{{ host }}/health"}
"""
NODE_OP = """\
name: node-op
summary: child with an undo
owner: sre-oncall
params:
  host: {type: string, pattern: "^[a-z0-9-]+$"}
steps:
  - id: cordon
    action: http.request
    with: {method: POST, url: "https://k.internal/{{ params.host }}/cordon"}
    compensate: {action: http.request, with: {method: POST, url: "https://k.internal/{{ params.host }}/uncordon"}}
"""
FE_CHILD_CASES = """\
playbook: fe-child
cases:
  - name: item 0 fails after its child; the item undoes the child too, newest first
    mocks: {"roll[0].verify": {fail: "unhealthy"}}
    expect:
      state: completed
      order: ["roll[0].drain", "roll[0].op", "roll[0].op/cordon", "roll[0].verify", "undo:roll[0].op",
              "undo:roll[0].op/cordon", "undo:roll[0].drain", "roll[1].drain", "roll[1].op", "roll[1].op/cordon",
              "roll[1].verify"]
"""


async def test_a_failed_item_undoes_its_own_child_run(skip_env, tmp_path):
    """Red team: a child run called inside a foreach item registered its undo on the run's saga,
    not the item's, so a failed item (within max_failures) left its child's changes in place."""
    extra = {"fe-child.yaml": FE_CHILD, "node-op.yaml": NODE_OP}
    report = await rehearse(directory(tmp_path, FE_CHILD_CASES, name="fe-child.test.yaml", extra=extra), POLICIES,
                            env=skip_env)
    assert report.bad_files == [], report.bad_files
    [result] = report.results
    assert result.failures == [], result.failures


FE_MAX = """\
name: fe-max
summary: max_failures with concurrency 2
owner: sre-oncall
steps:
  - id: roll
    foreach: [h0, h1, h2, h3]
    as: host
    concurrency: 2
    max_failures: 0
    steps:
      - id: a
        action: http.request
        with: {method: POST, url: "https://lb.internal/{{ host }}/drain"}
        compensate: {action: http.request, with: {method: POST, url: "https://lb.internal/{{ host }}/enable"}}
      - id: b
        action: http.request
        with: {method: POST, url: "https://lb.internal/{{ host }}/restart"}
        retry: {max_attempts: 1}
"""
FE_MAX_CASES = """\
playbook: fe-max
cases:
  - name: item 0 fails; no new item starts while it undoes itself
    mocks: {"roll[0].b": {fail: "boom"}}
    expect: {state: compensated, steps: {"roll[0]": failed, "roll[1]": succeeded, "roll[2]": skipped,
              "roll[3]": skipped}}
"""
FE_FAIL = """\
name: fe-fail
summary: core.fail inside a foreach
owner: sre-oncall
steps:
  - id: roll
    foreach: [h0, h1]
    max_failures: all
    steps:
      - id: check
        action: core.log
        with: {message: "{{ item }}"}
      - id: stop
        action: core.fail
        when: "{{ index == 0 }}"
        with: {reason: "h0 is unsafe: stop the run"}
  - id: after
    action: http.request
    with: {method: POST, url: "https://x.internal/after"}
"""
FE_FAIL_CASES = """\
playbook: fe-fail
cases:
  - name: core.fail in an item ends the run with its reason, whatever max_failures says
    expect: {state: compensated, error: "h0 is unsafe: stop the run", steps: {after: pending}}
"""


async def test_past_max_failures_no_item_starts_while_the_failed_one_undoes(skip_env, tmp_path):
    """Red team: the failure was counted only after the failed item had undone itself, so at
    concurrency 2 another item started (drained and restarted a host) past max_failures."""
    path = directory(tmp_path, FE_MAX_CASES, name="fe-max.test.yaml", extra={"fe-max.yaml": FE_MAX})
    report = await rehearse(path, POLICIES, env=skip_env)
    assert report.bad_files == [], report.bad_files
    [result] = report.results
    assert result.failures == [], result.failures


async def test_core_fail_inside_an_item_ends_the_run(skip_env, tmp_path):
    """DESIGN: core.fail runs the saga and ends the run with its reason; inside a foreach item it
    only failed the item, and under max_failures: all the run went on and completed."""
    path = directory(tmp_path, FE_FAIL_CASES, name="fe-fail.test.yaml", extra={"fe-fail.yaml": FE_FAIL})
    report = await rehearse(path, POLICIES, env=skip_env)
    assert report.bad_files == [], report.bad_files
    [result] = report.results
    assert result.failures == [], result.failures


FE_BIG = """\
name: fe-big
owner: sre-oncall
steps:
  - id: roll
    foreach: [h0, h1, h2, h3, h4, h5, h6, h7, h8, h9]
    max_failures: all
    steps:
      - {id: dump, action: http.request, with: {method: GET, url: "https://x.internal/{{ item }}/dump"}}
"""


async def test_item_outputs_past_the_budget_stop_the_group(skip_env, tmp_path):
    """Red team: nothing bounded the bytes items output; every render reads all of them and history
    keeps them, so 100 items of 180 KB stalled the workflow task for good. Past 1 MiB no new item
    starts and the group fails saying why."""
    blob = "x" * 200_000
    cases = (
        "playbook: fe-big\ncases:\n  - name: big outputs\n"
        f"    mocks: {{dump: {{output: {{blob: \"{blob}\"}}}}}}\n"
        "    expect: {state: compensated, error: \"MiB in this run\", steps: {\"roll[9]\": skipped}}\n"
    )
    path = directory(tmp_path, cases, name="fe-big.test.yaml", extra={"fe-big.yaml": FE_BIG})
    report = await rehearse(path, POLICIES, env=skip_env)
    assert report.bad_files == [], report.bad_files
    [result] = report.results
    assert result.failures == [], result.failures


SCHEDULED = f"""\
playbook: tiny
cases:
  - name: a nightly firing in production runs as the verified schedule, and still waits for an approver
    trigger: schedule
    params: {{service: checkout}}
    mocks: {{restart: {{output: {{status: 200}}}}}}
    votes: {APPROVE}
    expect: {{state: completed, steps: {{restart: succeeded}}, order: [drain, restart, note]}}
  - name: in staging it runs alone
    trigger: schedule
    params: {{service: checkout, environment: staging}}
    mocks: {{restart: {{output: {{status: 200}}}}}}
    expect: {{state: completed, order: [drain, restart, note]}}
"""


async def test_a_case_can_be_a_schedules_firing(skip_env, tmp_path):
    """An unverified requester's high-impact step in production is denied outright: the first case
    completes only because the run carries a schedule's proof the real admission accepts."""
    report = await rehearse(directory(tmp_path, SCHEDULED), POLICIES, env=skip_env)
    assert report.bad_files == []
    assert [r.failures for r in report.results] == [[], []]


async def test_a_schedule_case_cannot_name_another_requester(skip_env, tmp_path):
    text = SCHEDULED.replace("    trigger: schedule\n", "    trigger: schedule\n    requested_by: cli:mallory\n", 1)
    report = await rehearse(directory(tmp_path, text), POLICIES, env=skip_env)
    assert report.exit_code != 0
    assert any("a trigger: schedule case is requested by schedule" in str(bad) for bad in report.bad_files), report.bad_files


_busy_events: dict[str, asyncio.Event] = {}  # per test: "started" (the activity runs), "gate" (it may end)


@activity.defn(name="test.busy")
async def _busy() -> None:
    _busy_events["started"].set()
    await _busy_events["gate"].wait()


async def _busy_workflow(env: WorkflowEnvironment) -> str:
    """A _Busy workflow whose activity is running now; its id."""
    _busy_events.update(started=asyncio.Event(), gate=asyncio.Event())
    handle = await env.client.start_workflow(_Busy.run, id=f"busy-{uuid.uuid4()}", task_queue="busy")
    await asyncio.wait_for(_busy_events["started"].wait(), 10)
    return handle.id


@workflow.defn(name="TestBusy")
class _Busy:
    """An activity in flight, then a long wait: what a lock is doing as its run's case ends."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(_busy, start_to_close_timeout=timedelta(minutes=5))
        await workflow.sleep(timedelta(days=1))


async def test_ending_a_workflow_with_a_task_in_flight_leaves_the_clock_skipping():
    """The time-skipping server keeps the time lock of a task in flight forever when its workflow
    is terminated meanwhile (temporalio/sdk-java#1138): every later case then runs in real time, and
    one with a 20-minute deadline hangs (CI, stop 34). A case's clean-up waits for the task first.
    Its own server: a leaked lock would stop the shared one's clock for the rest of the session."""
    env = await start_env()
    try:
        async with Worker(env.client, task_queue="busy", workflows=[_Busy], activities=[_busy],
                          workflow_runner=UnsandboxedWorkflowRunner()):
            handle = env.client.get_workflow_handle(await _busy_workflow(env))
            asyncio.get_running_loop().call_later(0.3, _busy_events["gate"].set)  # the activity ends a moment later
            await Rehearsal(env, Catalog(), POLICIES)._clean(None, [handle.id], [])
            assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
            # An hour of server time: at once while the clock skips; never, if a lock leaked.
            await asyncio.wait_for(env.sleep(timedelta(hours=1)), 10)
    finally:
        await env.shutdown()


@workflow.defn(name="TestCancelsAFiredTimer")
class _CancelsAFiredTimer:
    """Makes the time-skipping server refuse a task for real: the signal's task outlasts the timer
    (the clock runs in real time between skips), then cancels it and starts another."""

    def __init__(self) -> None:
        self.poked = False

    @workflow.signal
    def poke(self) -> None:
        time.sleep(0.8)  # the 0.5 s timer fires while this task is in flight
        self.poked = True

    @workflow.run
    async def run(self) -> None:
        try:
            await workflow.wait_condition(lambda: self.poked, timeout=timedelta(seconds=0.5))
        except asyncio.TimeoutError:
            pass
        await workflow.sleep(timedelta(days=1))


async def _make_the_server_refuse_a_task(env: WorkflowEnvironment) -> None:
    async with Worker(env.client, task_queue="refused", workflows=[_CancelsAFiredTimer],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        handle = await env.client.start_workflow(_CancelsAFiredTimer.run, id=f"refused-{uuid.uuid4()}", task_queue="refused")
        await asyncio.sleep(0.1)
        before = REFUSALS.count
        await handle.signal(_CancelsAFiredTimer.poke)
        for _ in range(100):
            if REFUSALS.count > before:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the server did not refuse the task")


async def _leak_a_time_lock(env: WorkflowEnvironment) -> None:
    """A workflow terminated with its activity running: the server keeps that activity's time lock."""
    async with Worker(env.client, task_queue="busy", workflows=[_Busy], activities=[_busy],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        await env.client.get_workflow_handle(await _busy_workflow(env)).terminate("leak")
        _busy_events["gate"].set()


@pytest.mark.parametrize(("spoil", "says"), [
    (_make_the_server_refuse_a_task, "refused a workflow task"),
    (_leak_a_time_lock, "stopped skipping time"),
], ids=["refused task", "leaked time lock"])
async def test_a_case_on_a_server_whose_clock_stopped_runs_again_on_a_fresh_server(tmp_path, monkeypatch, spoil, says):
    """A refused task stays started for good and holds the server's clock, and so does a lock
    nothing saw coming (caught by skipping ten minutes after the case): the case's run, or any
    later case, would run in real time or never end (CI, stop 34: a 20-minute deadline hung for
    300 s). The case runs again on a fresh server; its result there is the one reported."""
    servers = []
    original = Rehearsal.run_case

    async def run_case(self, loaded, lcase):
        servers.append(self.env)
        if len(servers) == 1:
            await spoil(self.env)  # during the case, on its server
        return await original(self, loaded, lcase)

    monkeypatch.setattr(Rehearsal, "run_case", run_case)
    said = []
    report = await rehearse(directory(tmp_path, PASSING), POLICIES, say=said.append)
    [result] = report.results
    assert result.failures == [], result.failures
    assert len(servers) == 2 and servers[0] is not servers[1]
    assert says in said[0] and "running the case again on a fresh server" in said[0]
    assert said[1].startswith("ok")


async def test_a_refusal_stops_waiting_for_the_case_at_once():
    """A run whose own task was refused never ends: the case stops when the refusal is seen, not
    after CASE_SECONDS."""
    async def refused_meanwhile() -> None:
        await asyncio.sleep(0.2)
        REFUSALS.count += 1
        await asyncio.Event().wait()  # the run that never ends

    started = time.monotonic()
    with pytest.raises(ServerRefusedTask):
        await _unless_refused(refused_meanwhile(), 60)
    assert time.monotonic() - started < 5
