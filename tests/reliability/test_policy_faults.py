"""OPA faults are denies: whatever goes wrong between the worker and OPA, the high-impact step
never reaches the API it would call, what was done is rolled back once, and the deny is in the
audit trail with its reason. A blip shorter than the retries is not a deny. A fault at the worker's
own `start` check refuses the run before anything happens.

A real worker (`worker_deps`: OpaEngine, audit store, http.request) against the fake OPA server
(OPA's REST data API) and a local HTTP sink that counts each side effect by idempotency key.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.devstack import free_port
from bot.engine.runs import start_run
from bot.engine.state import RunStatus, TriggerContext
from bot.engine.worker import make_worker, worker_deps
from bot.identity.keys import front_door_keyring
from bot.identity.principals import Actor
from bot.playbook.loader import load_file
from bot.settings import Settings
from tests.policy.fake_opa import FakeOpa, rules
from tests.reliability.sink import Hit, Sink
from tests.slack.support import ENVELOPE_KEY

TOKEN = "opa-token"
SRE = Actor("api:sre-1", verified_by="api")  # the requester, as the HTTP API's front door vouches for it
# What the fake OPA answers: every step may run, anyone may start, approve and cancel.
ALLOW_ALL = rules(
    decision=lambda input: {
        "allow": True, "require_approval": False, "min_approvals": 0, "approver_groups": [], "reasons": ["ok"],
    },
    approver=lambda input: {"allow": True, "reasons": []},
    start=lambda input: {"allow": True, "reasons": []},
    cancel=lambda input: {"allow": True, "reasons": []},
)

PLAYBOOK = """
name: restart-api
owner: sre
steps:
  - id: prep
    action: http.request
    with: {{method: POST, url: "{sink}/prep"}}
    compensate: {{action: http.request, with: {{method: POST, url: "{sink}/undo-prep"}}}}
  - id: risky
    action: http.request
    impact: high
    with: {{method: POST, url: "{sink}/risky"}}
"""


@pytest.fixture(scope="module")
def opa_server() -> Iterator[FakeOpa]:
    server = FakeOpa(ALLOW_ALL)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def opa(opa_server: FakeOpa) -> Iterator[FakeOpa]:
    opa_server.reset()
    opa_server.token = TOKEN
    yield opa_server
    opa_server.reset()


async def run_once(dev_env: Any, tmp_path: Path, sink: Sink, opa_url: str, token: str = TOKEN,
                   during: Any = None) -> tuple[RunStatus, list[Any]]:
    (tmp_path / "restart-api.yaml").write_text(PLAYBOOK.format(sink=sink.url))
    settings = Settings(
        data_dir=tmp_path / "data", playbooks_dir=tmp_path, policies_dir=tmp_path,
        opa_url=opa_url, opa_token=token, opa_timeout=0.5, task_queue=f"opa-{uuid.uuid4()}",
        envelope_key=ENVELOPE_KEY,
    )
    async with worker_deps(settings) as deps, make_worker(dev_env.client, settings.task_queue, deps.activities):
        handle = await start_run(
            dev_env.client, settings.task_queue, load_file(tmp_path / "restart-api.yaml"), {},
            TriggerContext(kind="api", requested_by=SRE.principal), actor=SRE, keyring=front_door_keyring(settings),
        )
        if during is not None:
            await during()
        status = await handle.result()
        return status, deps.audit.events(status.run_id)


def at_prep(sink: Sink, fault: Callable[[], None]) -> None:
    """Inject `fault` when `prep` reaches the sink, before it is answered: after the worker's own
    `start` check (which a faulty OPA refuses, see the test below) and before `risky` asks OPA."""

    def react(hit: Hit) -> None:
        if hit.path == "/prep":
            fault()

    sink.on_hit = react


def _slow(opa: FakeOpa) -> None:
    opa.delay = 1.5


def _wrong_token(opa: FakeOpa) -> None:
    opa.token = "rotated"


FAULTS = {
    "500": lambda opa: setattr(opa, "fault", "500"),
    "undefined": lambda opa: setattr(opa, "fault", "undefined"),
    "malformed result": lambda opa: setattr(opa, "fault", "malformed"),
    "body not json": lambda opa: setattr(opa, "fault", "not_json"),
    "slower than the timeout": _slow,
    "token rejected": _wrong_token,
    "unreachable": lambda opa: opa.stop(),  # OPA goes away mid-run: nothing listens there any more
}


@pytest.mark.parametrize("fault", [*FAULTS])
async def test_every_opa_fault_denies_and_nothing_high_impact_happens(
    dev_env, tmp_path, sink, opa, fault
) -> None:
    if fault == "unreachable":
        server = FakeOpa(ALLOW_ALL)  # its own server, which the fault stops
        server.token = TOKEN
        server.start()
    else:
        server = opa
    at_prep(sink, lambda: FAULTS[fault](server))
    try:
        status, events = await run_once(dev_env, tmp_path, sink, server.url)
    finally:
        if server is not opa:
            server.stop()

    assert status.state == "compensated", status.error
    assert status.step("risky").state == "denied"
    assert "policy" in (status.step("risky").error or "")
    keys = Counter(hit.path for hit in sink.hits)
    assert keys == Counter({"/prep": 1, "/undo-prep": 1}), "no /risky; prep done and undone once each"

    decisions = [e for e in events if e.kind == "policy_decision" and e.step_id == "risky"]
    assert decisions, "the deny is recorded"
    assert all(d.details["allow"] is False and d.details["reasons"] for d in decisions)
    denied = [e for e in events if e.kind == "step_failed" and e.step_id == "risky"]
    assert len(denied) == 1 and denied[0].details["state"] == "denied"
    assert [e.details["state"] for e in events if e.kind == "run_finished"] == ["compensated"]


@pytest.mark.parametrize("fault", ["500", "unreachable"])
async def test_an_opa_fault_at_the_workers_start_check_refuses_the_run(dev_env, tmp_path, sink, opa, fault) -> None:
    """The worker asks `start` itself before the first step: a fault there refuses the run, nothing runs."""
    if fault == "unreachable":
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    else:
        FAULTS[fault](opa)
        url = opa.url
    status, events = await run_once(dev_env, tmp_path, sink, url)

    assert status.state == "cancelled"
    assert (status.error or "").startswith("refused by the worker's start check: "), status.error
    assert sink.hits == [], "no step ran"
    assert [s.state for s in status.steps] == ["pending", "pending"]
    assert [e.details["state"] for e in events if e.kind == "run_finished"] == ["cancelled"]


async def test_a_blip_shorter_than_the_retries_is_not_a_deny(dev_env, tmp_path, sink, opa) -> None:
    """OPA slow for a moment: the first ask times out, the retry is answered, the step runs once."""
    at_prep(sink, lambda: _slow(opa))

    def asks() -> int:
        return sum(1 for r in opa.requests if r["path"].endswith("decision"))

    async def recover() -> None:
        while asks() == 0:  # the first ask has arrived and will outlast the 0.5 s timeout
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)
        opa.delay = 0

    status, events = await run_once(dev_env, tmp_path, sink, opa.url, during=recover)
    assert asks() >= 2, "the first ask timed out and a retry was answered"
    assert status.state == "completed", status.error
    assert Counter(hit.path for hit in sink.hits) == Counter({"/prep": 1, "/risky": 1})
    decisions = [e for e in events if e.kind == "policy_decision" and e.step_id == "risky"]
    assert [d.details["allow"] for d in decisions] == [True], "only the answer that counted is recorded"
