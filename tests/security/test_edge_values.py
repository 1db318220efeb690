"""Edge values (red team, edge values not attacked before): what a lying HTTP target hands the
bot at the edges of what Python, pydantic and datetime take.

Each run-level test is the real worker on a Temporal dev server (trust_stack), and asserts what a
secure bot does: a value it cannot use fails the step that reads it (the run then rolls back and
ends), it never fails the workflow task. A workflow task that fails is retried on every replay: the
run never goes on, never rolls back (what it did stays done), never ends, and takes no cancel.

The target below lies within what every JSON reader here takes: a 4,300-digit number (Python's
int-to-str limit, and jiter's, is 4,300 digits) and a `Retry-After` header of any size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType

from bot.engine.state import RunStatus
from tests.http_server import serving
from tests.security.test_forged_activity_results import _gated_run
from tests.security.trust_stack import TrustStack, result, trust_stack


class Target(BaseHTTPRequestHandler):
    """An HTTP target that lies: `/count` answers `{"n": 99...9}` (4,300 digits); `/retry?ra=N`
    answers `Retry-After: N`; `/named` answers `{"name": "\\ud800"}` (a lone surrogate, escaped)."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (b'{"n": ' + b"9" * 4300 + b"}" if self.path.startswith("/count")
                else b'{"name": "\\ud800"}' if self.path.startswith("/named") else b"{}")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.startswith("/retry"):
            self.send_header("Retry-After", self.path.partition("ra=")[2])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with serving(Target) as url:
        yield url


# A child playbook a lying target answers: its second step asks for one more than the count.
SCALE = """
name: scale
summary: Read the replica count, then ask for one more
owner: sre
vars: {sink: "{sink}", target: "TARGET"}
steps:
  - id: read
    action: http.request
    with: {method: GET, url: "{{ vars.target }}/count"}
  - id: scale
    action: http.request
    retry: {max_attempts: 1}
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/scale", json: {replicas: "{{ steps.read.output.json.n + 1 }}"}}
"""

def poked(name: str, summary: str, steps: str, head: str = "") -> str:
    """A playbook whose first step calls the service and is undone on failure (its `undo-poke`
    shows that the run rolled back), then `steps`; `head`: more of its header (params)."""
    return f"""
name: {name}
summary: {summary}
owner: sre
vars: {{sink: "{{sink}}", target: "TARGET"}}
{head}steps:
  - id: poke
    action: http.request
    with: {{method: POST, url: "{{{{ vars.sink }}}}/{{{{ run.id }}}}/poke"}}
    compensate: {{action: http.request, with: {{method: POST, url: "{{{{ vars.sink }}}}/{{{{ run.id }}}}/undo-poke"}}}}
{steps}"""


ASK = """  - id: ask
    action: http.request
    with: {method: GET, url: "{{ vars.target }}/retry?ra=RA"}
"""

SCALER = poked("scaler", "Call the service, then scale as a sub-playbook", """\
  - {id: call, action: playbook.run, with: {name: scale}}
""")

# The same count, handed to a sub-playbook as a param.
HANDER = poked("hander", "Call the service, read the count, hand one more to a sub-playbook", """\
  - id: read
    action: http.request
    with: {method: GET, url: "{{ vars.target }}/count"}
  - {id: call, action: playbook.run, with: {name: counted, params: {n: "{{ steps.read.output.json.n + 1 }}"}}}
""")

COUNTED = """
name: counted
summary: Log a count
owner: sre
params:
  n: {type: integer, default: 1}
steps:
  - id: say
    action: core.log
    with: {message: "n is {{ params.n }}"}
"""

# A high-impact step (allowed without approval outside production) naming what the service said.
NAMED = poked("named", "Read the service's name, then act on it", """\
  - id: read
    action: http.request
    with: {method: GET, url: "{{ vars.target }}/named"}
  - id: act
    action: http.request
    impact: high
    retry: {max_attempts: 1}
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/act", json: {name: "{{ (steps.read.output.body | fromjson).name }}"}}
""", head="params:\n  environment: {type: string, default: staging}\n")

# The same step, its arg a template's own string literal escaping a lone surrogate.
LITERAL = NAMED.replace("name: named", "name: literal").replace(
    """json: {name: "{{ (steps.read.output.body | fromjson).name }}"}""", """json: {name: '{{ "\\ud800" }}'}""")

# Wait as long as the service asks (its Retry-After), after a step the run undoes on failure.
NAP = poked("nap", "Call the service, then wait as long as it asks", ASK + """\
  - id: nap
    action: core.sleep
    with: {duration: "{{ steps.ask.output.headers['retry-after'] }}s"}
""")

# The same, but the service's answer bounds a sub-playbook's wait (playbook.run `timeout`).
CALLER = poked("caller-RA", "Call the service, then a sub-playbook for as long as the service says", ASK + """\
  - id: call
    action: playbook.run
    with: {name: quick, timeout: "{{ steps.ask.output.headers['retry-after'] }}s"}
""")

QUICK = """
name: quick
summary: One log line
owner: sre
steps:
  - id: say
    action: core.log
    with: {message: hi}
"""


# Retry-After values: past timedelta's 999,999,999 days; within it, but `now + it` past year 9999.
OVER_TIMEDELTA, OVER_CALENDAR = "100000000000000", "300000000000"

PLAYBOOKS = {
    "scale": SCALE,
    "scaler": SCALER,
    "hander": HANDER,
    "named": NAMED,
    "literal": LITERAL,
    "counted": COUNTED,
    "nap": NAP.replace("RA", OVER_TIMEDELTA),
    "caller-1": CALLER.replace("caller-RA", "caller-1").replace("RA", OVER_CALENDAR),
    "caller-2": CALLER.replace("caller-RA", "caller-2").replace("RA", OVER_TIMEDELTA),
    "quick": QUICK,
}


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: Any, target: str) -> AsyncIterator[TrustStack]:
    books = {name: text.replace("TARGET", target) for name, text in PLAYBOOKS.items()}
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("edge"), books) as s:
        yield s


async def _task_failures(handle: Any) -> list[str]:
    history = await handle.fetch_history()
    out = []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            failure = e.workflow_task_failed_event_attributes.failure
            out.append(f"{failure.message}" + (f" <- {failure.cause.message[:160]}" if failure.HasField("cause") else ""))
    return out


async def _ended(handle: Any, timeout: float = 15, child: Any = None) -> RunStatus:
    try:
        return await result(handle, timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        said = f" (its child's: {(await _task_failures(child))[:1]})" if child is not None else ""
        raise AssertionError(f"the run never ended ({type(exc).__name__}); its workflow task fails on every replay: "
                             f"{(await _task_failures(handle))[:1]}{said}") from None


# ---- 1. a child whose end no decoder reads --------------------------------------------------------


@pytest.mark.parametrize("name", ["scaler", "hander"], ids=["child-args", "child-params"])
async def test_a_childs_unreadable_end_does_not_wedge_its_parent(stack: TrustStack, name: str) -> None:
    """The target answers a 4,300-digit count (every JSON reader here takes it) and the child asks
    for `n + 1`: 4,301 digits. pydantic encodes it; no reader decodes it (jiter: "number out of
    range"). The child's `scale` step fails (its worker cannot decode the action's input), the
    child ends failed, and its RunStatus result holds those args. The parent awaits the child's end
    typed (`_child_end`, bot/engine/subplaybooks.py, `result_type=RunStatus`), so the SDK fails the
    parent's workflow task decoding it, on every replay: the parent's call step never fails, its
    `poke` is never undone, the parent never ends. Secure: the call step fails, the run rolls back.

    `child-params`: the parent reads the count and hands `n + 1` to the child as a param. The child's
    RunInput is encoded; the child's first workflow task cannot decode it, on every replay, so the
    child never starts its admission (which would refuse the param), never pokes, never ends, and
    the parent waits for it for ever."""
    handle = await _gated_run(stack, name)
    status = await _ended(handle, child=stack.client.get_workflow_handle(f"{handle.id}.call"))
    assert status.step("call").state in ("failed", "compensated"), status.step("call")
    assert f"/{handle.id}/undo-poke" in stack.sink.of(handle.id)


# ---- 2. a duration past what timedelta or the calendar holds -------------------------------------


async def test_a_sleep_as_long_as_the_target_asks_does_not_wedge_the_run(stack: TrustStack) -> None:
    """`core.sleep {duration: "<Retry-After>s"}`: a target answering `Retry-After: 100000000000000`
    makes `timedelta(seconds=1e14)` raise OverflowError (not a ValueError) inside pydantic's
    validation of SleepParams; pydantic passes it through, and `_sleep` (bot/engine/workflow.py)
    catches ValidationError only: the run's workflow task fails on every replay. Secure: the `nap`
    step fails (bad duration) and the run undoes `poke`."""
    handle = await _gated_run(stack, "nap")
    status = await _ended(handle)
    assert status.step("nap").state == "failed", status.step("nap")
    assert f"/{handle.id}/undo-poke" in stack.sink.of(handle.id)


@pytest.mark.parametrize("name", ["caller-1", "caller-2"], ids=["now-plus-timeout-past-9999", "timeout-past-timedelta"])
async def test_a_child_timeout_as_long_as_the_target_asks_does_not_wedge_the_run(stack: TrustStack, name: str) -> None:
    """`playbook.run {timeout: "<Retry-After>s"}`. 300000000000 s is a timedelta, but
    `workflow.now() + timeout` in `_await_child` (bot/engine/subplaybooks.py) is past year 9999:
    OverflowError ("date value out of range") in workflow code, after the child started.
    100000000000000 s is no timedelta: OverflowError from `RunPlaybookParams.model_validate` in
    `_call_child`, which catches ValidationError only. Either way the workflow task fails on every
    replay. Secure: the call step fails and the run undoes `poke`."""
    handle = await _gated_run(stack, name)
    status = await _ended(handle)
    assert status.step("call").state in ("failed", "compensated"), status.step("call")
    assert f"/{handle.id}/undo-poke" in stack.sink.of(handle.id)


# ---- 3. a lone surrogate in a high-impact step's args ---------------------------------------------


@pytest.mark.parametrize("name", ["named", "literal"], ids=["fromjson", "template-literal"])
async def test_a_lone_surrogate_a_template_makes_reads_as_an_actions_output_does(stack: TrustStack, name: str) -> None:
    """The target's body is `{"name": "\\ud800"}`. The action masks surrogates out of what it
    decodes (`output.json`), but `body` keeps the text, and `fromjson` (bot/playbook/data.py) gave
    U+D800 back; a template's own string literal (`'{{ "\\ud800" }}'`) makes one too. The
    high-impact step's arg `name` held it, `_gate` asked the policy, and pydantic could not encode
    the PolicyRequest ("surrogates not allowed"), raised in workflow code while scheduling the
    question; once denied, the run's own status (its result) could not be encoded either: the
    workflow task failed on every replay. Now whatever a template gives reads a lone surrogate as
    U+FFFD, as the action's own `output.json` does: the step acts and the run completes."""
    handle = await _gated_run(stack, name)
    status = await _ended(handle)
    assert status.state == "completed" and status.step("act").state == "succeeded", status.step("act")
    assert status.step("act").args["json"] == {"name": "\ufffd"}
    assert f"/{handle.id}/act" in stack.sink.of(handle.id)
