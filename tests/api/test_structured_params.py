"""Array and object params through the HTTP API (native JSON) and the CLI (`-p 'hosts=["a","b"]'`,
`-p hosts=a,b`) on the real front door, worker and dev server: typed the same way, errors that name
the param path and the rule, and a log step that reads them back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.api.support import ApiStack, api_stack
from tests.cli.test_cli_api import as_

FLEET = """
name: fleet
summary: Log a fleet
params:
  hosts: {type: array, items: {type: string, pattern: "^[a-z0-9.-]+$"}, min_items: 1, max_items: 3}
  target: {type: object, properties: {zone: {type: string}, weight: {type: integer, default: 1}}, required: false}
steps:
  - id: note
    action: core.log
    with: {message: "{{ params.hosts | join('+') }} {{ params.target | tojson }}"}
"""


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path, playbooks={"fleet": FLEET}) as s:
        yield s


async def test_native_json_through_the_api(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "fleet", {"hosts": ["web-1", "web-2"], "target": {"zone": "eu", "weight": "2"}})
    final = await stack.finished(run_id)
    assert final.state == "completed", final.error
    assert final.params == {"hosts": ["web-1", "web-2"], "target": {"zone": "eu", "weight": 2}}
    assert final.steps[0].output["message"] == 'web-1+web-2 {"weight":2,"zone":"eu"}'


async def test_bad_arrays_and_objects_are_422_naming_path_and_rule(stack: ApiStack) -> None:
    response = await stack.call("POST", "/runs", "alice", body={"playbook": "fleet", "params": {
        "hosts": ["ok", "Not OK", "x", "y"], "target": {"zone": 3, "colour": "red"}}})
    assert response.status_code == 422 and response.json()["rule"] == "params"
    problems = response.json()["problems"]
    assert problems == [
        "param 'hosts': 4 items, more than 3 (max_items)",
        "param 'target': unknown property 'colour' (declared: zone, weight; additional_properties is false)",
    ]
    assert await stack.settled_runs() == []


async def test_cli_json_and_comma_forms_through_the_api(stack: ApiStack) -> None:
    json_form = await as_(stack, "alice", "run", "fleet", "-p", 'hosts=["web-1","web-2"]', "-p",
                          'target={"zone": "eu"}', "--wait", "--json")
    assert json_form.code == 0, json_form
    assert json_form.json()["params"] == {"hosts": ["web-1", "web-2"], "target": {"zone": "eu", "weight": 1}}
    comma_form, bad = await asyncio.gather(
        as_(stack, "alice", "run", "fleet", "-p", "hosts=web-1,web-2", "--wait", "--json"),
        as_(stack, "alice", "run", "fleet", "-p", "hosts=[web-1]"),
    )
    assert comma_form.code == 0 and comma_form.json()["params"]["hosts"] == ["web-1", "web-2"], comma_form
    assert bad.code != 0 and "param 'hosts': not valid JSON" in bad.error_line(), bad
