"""Playbook constants reach step arguments, `when` and compensations as vars.NAME."""

from __future__ import annotations

from tests.engine.support import Recorder, execute, playbook


async def test_vars_render_in_steps_conditions_and_compensations(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: consts
vars: {api: "https://deploy.internal", pools: [a, b], undo: true}
params: {svc: {type: string}}
steps:
  - id: call
    action: t.ok
    when: "{{ vars.undo }}"
    with: {url: "{{ vars.api }}/v1/{{ params.svc }}", pools: "{{ vars.pools }}"}
    compensate: {action: t.ok, with: {url: "{{ vars.api }}/undo"}}
  - id: boom
    action: t.fail
"""
    )
    status = await execute(dev_env.client, rec, pb, params={"svc": "api"})
    assert status.state == "compensated"
    assert rec.calls[0] == ("call", False, {"url": "https://deploy.internal/v1/api", "pools": ["a", "b"]})
    assert rec.calls[-1] == ("call", True, {"url": "https://deploy.internal/undo"})
