"""A typed answer to a `core.confirm` number step that is a float but no JSON number (red team).

`ConfirmParams.answer` (bot/actions/core.py) reads a `type: number` answer with `float(text)`, which
takes "nan", "inf", "Infinity" and "1e999". The confirm update handler (bot/engine/workflow.py
`confirm`) then records the answer: `_record(..., approval_vote, {"answer": nan, ...})` builds an
AuditEvent whose `details` validator refuses NaN/inf (canonical JSON, allow_nan=False) with a
ValueError, raised in the update handler: the SDK fails the workflow task, on every replay. The
API answers 503 ("Workflow Task in failed state"), and the run is wedged: it takes no other answer,
vote or cancel, never rolls back and never ends. Anyone the approver rule lets answer (a token
holder, a Slack user in the owner group typing "inf" into the modal) does it with one answer.
Secure: the answer is refused (4xx, naming the input rule) and the run still waits for a good one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.api.support import ApiStack, api_stack

HOW_LONG = """
name: how-long
summary: Ask how many minutes to drain for
owner: sre
steps:
  - id: minutes
    action: core.confirm
    with: {message: "Drain for how many minutes?", input: {type: number}}
  - id: say
    action: core.log
    with: {message: "draining for {{ steps.minutes.output.value }} minutes"}
"""


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path, {"how-long": HOW_LONG}) as s:
        yield s


async def _task_failures(stack: ApiStack, run_id: str) -> list[str]:
    history = await stack.temporal.get_workflow_handle(run_id).fetch_history()
    return [f"{e.workflow_task_failed_event_attributes.failure.message}"
            for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]


@pytest.mark.parametrize("answer", ["nan", "1e999"])
async def test_a_number_answer_that_is_no_json_number_does_not_wedge_the_run(stack: ApiStack, answer: str) -> None:
    run_id = await stack.start("alice", "how-long")
    await stack.waiting(run_id, "minutes")
    response = await stack.call("POST", f"/runs/{run_id}/confirmations", "bob",
                                body={"step": "minutes", "value": answer})
    failures = await _task_failures(stack, run_id)
    assert not failures, f"the answer wedged the run (API said {response.status_code}): {[f[:200] for f in failures[:1]]}"
    assert response.status_code == 422, response.text
    good = await stack.call("POST", f"/runs/{run_id}/confirmations", "bob", body={"step": "minutes", "value": 5})
    assert good.status_code == 200, good.text
    assert (await stack.finished(run_id)).state == "completed"
