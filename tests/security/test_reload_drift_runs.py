"""Red team: a sub-playbook edited between the parent's admission (its approval prompt) and the vote."""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from bot.engine.children import CatalogActivities
from bot.engine.workflow import PlaybookRun
from tests.engine.support import Recorder, catalog_of, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import APPROVAL, policy, vote

PARENT = """
name: parent
owner: sre
steps:
  - id: call
    action: playbook.run
    impact: high
    with: {name: child, params: {target: web}}
"""

CHILD_V1 = """
name: child
params: {target: {type: string, pattern: "^[a-z]+$"}}
steps:
  - {id: scale, action: t.ok, with: {target: "{{ params.target }}", replicas: 3}}
"""

CHILD_V2 = CHILD_V1.replace("id: scale", "id: wipe").replace("replicas: 3", "replicas: 0")


async def _approved_run(client: Client, edit: bool) -> tuple[object, Recorder]:
    parent, v1, v2 = playbook(PARENT), playbook(CHILD_V1), playbook(CHILD_V2)
    served = {"catalog": catalog_of(parent, v1)}
    rec = Recorder(children={"child": v1.content_hash()})  # what the worker's admission pinned
    extra = CatalogActivities(lambda: served["catalog"]).all() + policy(APPROVAL)
    async with worker(client, rec, extra) as w:
        handle = await start(client, w, run_input(parent, requested_by="cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        if edit:
            served["catalog"] = catalog_of(parent, v2)  # the child file is edited while the vote is due
        await handle.execute_update(PlaybookRun.vote, vote("call", "cli:dana"))
        await handle.execute_update(PlaybookRun.vote, vote("call", "cli:erin"))
        status = await asyncio.wait_for(handle.result(), 60)
    return status, rec


async def test_a_child_edited_before_the_vote_does_not_run_as_edited(dev_env) -> None:
    """Red team: the child's snapshot was read from the catalog when the call step ran, after the
    vote, so an edit in between (`scale` became `wipe`) ran steps the approvers were never shown.
    The child is pinned to its version at the parent's admission: edited since, the step fails."""
    status, rec = await _approved_run(dev_env.client, edit=True)
    call = status.step("call")
    assert call.state == "failed" and "changed since this run was admitted" in (call.error or ""), call.error
    assert [c[0] for c in rec.calls] == []  # neither `wipe` nor anything else ran

    status, rec = await _approved_run(dev_env.client, edit=False)  # the control: unedited, it runs
    assert status.state == "completed" and [c[0] for c in rec.calls] == ["scale"]
