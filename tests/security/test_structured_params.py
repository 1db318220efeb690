"""Array and object params are data all the way down (format v1.1).

Real PlaybookRun on the dev server, the real worker assembly and a local HTTP sink, as in
test_secrets.py. Attacks: strings inside an array or object that spell a template or a secret
reference (they must arrive as written, never rendered or resolved), and values a raw Temporal
client sends past the front door that are too long, too wide or too deep (the worker re-types
params and refuses them before any step runs). The policy sees the array and object params exactly
as typed, marked as the requester's choice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.playbook.model import PARAM_MAX_DEPTH, PARAM_MAX_ITEMS, PARAM_MAX_KEYS
from bot.settings import Settings
from tests.security.test_secrets import DEPLOY, Bot, Sink, assert_nothing_leaked, sink, with_sink

__all__ = ["sink"]  # the fixture, used by name

# The decision is allowed only when the policy sees the params exactly as the requester gave them,
# marked as the requester's: proof that arrays and objects reach policy unchanged.
POLICY = """package playbook.authz

import rego.v1

default decision := {"allow": false, "require_approval": false, "min_approvals": 0, "approver_groups": [],
	"reasons": ["params did not reach policy as given"]}

decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": []} if {
	input.params.hosts == ["web-1", "{{ secret('DEPLOY_TOKEN') }}", "${secret:DEPLOY_TOKEN}", "{{ 7 * 7 }}"]
	input.params.target == {"zone": "{{ secret('DEPLOY_TOKEN') }}", "extra": {"deep": ["${secret:DEPLOY_TOKEN}"]}}
	input.provenance.params.hosts == "requester"
	input.provenance.params.target == "requester"
	input.step["with"].json.hosts == input.params.hosts
}

default approver := {"allow": false, "reasons": []}

default start := {"allow": true, "reasons": []}
"""

HOSTS = ["web-1", "{{ secret('DEPLOY_TOKEN') }}", "${secret:DEPLOY_TOKEN}", "{{ 7 * 7 }}"]
TARGET = {"zone": "{{ secret('DEPLOY_TOKEN') }}", "extra": {"deep": ["${secret:DEPLOY_TOKEN}"]}}

PLAYBOOK = """
name: structured
secrets: [DEPLOY_TOKEN]
vars: {sink: "@SINK@"}
params:
  hosts: {type: array, items: {type: string}, min_items: 1}
  target: {type: object, properties: {zone: {type: string}}, additional_properties: true, required: false}
steps:
  - id: call
    action: http.request
    impact: high
    with:
      method: POST
      url: "{{ vars.sink }}/structured"
      headers: {X-Legit: "{{ secret('DEPLOY_TOKEN') }}"}
      json: {hosts: "{{ params.hosts }}", target: "{{ params.target }}", text: "{{ params.hosts | tojson }}",
             first: "{{ params.hosts[1] }}", markers: "{{ params.target.extra.deep | join(' ') }}"}
"""


@pytest_asyncio.fixture
async def bot(dev_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bot:
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"DEPLOY_TOKEN={DEPLOY}\n")
    settings = Settings(data_dir=tmp_path / "data", policies_dir=tmp_path / "policies", secrets_file=secrets,
                        slack_bot_token=None)
    return Bot(settings, dev_env.client)


async def test_strings_inside_arrays_and_objects_stay_literal_and_reach_policy_unchanged(bot: Bot, sink: Sink) -> None:
    status, _ = await bot.run(with_sink(PLAYBOOK, sink), {"hosts": HOSTS, "target": TARGET})
    assert status.state == "completed", status.error  # the policy allowed it: it saw the values as given
    [sent] = sink.requests
    body = json.loads(sent.body)
    assert body["hosts"] == HOSTS and body["first"] == HOSTS[1], "never rendered: {{ 7 * 7 }} is not 49"
    assert body["target"] == {"zone": TARGET["zone"], "extra": TARGET["extra"]}
    assert json.loads(body["text"]) == HOSTS
    assert_nothing_leaked(sink)
    assert sink.legit() == [DEPLOY], "the template's own secret() still reaches the action"


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"hosts": ["h"] * (PARAM_MAX_ITEMS + 1)}, f"more than {PARAM_MAX_ITEMS}"),
        ({"hosts": ["h"], "target": {f"k{i}": i for i in range(PARAM_MAX_KEYS + 1)}}, f"more than the {PARAM_MAX_KEYS}"),
        ({"hosts": ["h"], "target": {"deep": json.loads("[" * (PARAM_MAX_DEPTH + 1) + "]" * (PARAM_MAX_DEPTH + 1))}},
         f"nested more than {PARAM_MAX_DEPTH}"),
        ({"hosts": ["x" * 40_000, "y" * 40_000]}, "bytes of JSON, more than the 65536"),
        ({"hosts": "web-1,web-2", "target": {"zone": 7}}, None),  # text and a number are typed, as at the front door
    ],
)
async def test_a_raw_client_cannot_send_oversized_or_deep_values(
    bot: Bot, sink: Sink, params: dict[str, Any], says: str | None
) -> None:
    status, _ = await bot.run(with_sink(PLAYBOOK, sink), params, refused=says is not None)
    if says is None:
        assert status.params == {"hosts": ["web-1", "web-2"], "target": {"zone": "7"}}
        return
    assert says in (status.error or ""), status.error
    assert sink.requests == [], "no step ran"
    assert len(status.error or "") < 1000, "the refusal does not echo the value"
