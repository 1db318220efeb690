"""Attacks on the front door's HTTP API (/api/v1): no token, a guessed, revoked, rotated or
re-cased token, a token in the URL, a body that claims someone else, the requester approving
their own run from another token, one person meeting a quorum alone, reading or cancelling runs
the policy keeps from them, and hostile bodies. Every refusal is a 4xx naming its rule, changes
nothing, and (for an authenticated principal) is audited."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig
from temporalio.testing import WorkflowEnvironment

from bot.api.routes import MAX_BODY
from bot.identity.tokens import TokenStore
from tests.api.support import ApiStack, Proxy, api_stack


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path) as s:
        yield s


# ---- authentication ---------------------------------------------------------------------------


def _bad_authorizations(stack: ApiStack) -> dict[str, dict[str, Any]]:
    alice = stack.tokens["alice"]
    return {
        "none": {},
        "two words": {"Authorization": f"Bearer {alice} {alice}"},
        "scheme only": {"Authorization": "Bearer"},
        "no scheme": {"Authorization": alice},
        "basic": {"Authorization": "Basic " + base64.b64encode(f"alice:{alice}".encode()).decode()},
        "guessed": {"Authorization": "Bearer pbt_" + "A" * 43},
        "upper-cased": {"Authorization": f"Bearer {alice.upper()}"},
        "swapped case": {"Authorization": f"Bearer {alice.swapcase()}"},
        "truncated": {"Authorization": f"Bearer {alice[:-1]}"},
        "the stored digest": {"Authorization": "Bearer " + TokenStore(stack.settings.tokens_path).entries()["alice"].sha256},
        "non-ascii": {"Authorization": "Bearer pbt_é".encode()},
    }


async def test_requests_without_a_valid_token_are_401_and_change_nothing(stack: ApiStack) -> None:
    for case, headers in _bad_authorizations(stack).items():
        for method, path, body in [("POST", "/runs", {"playbook": "quick", "params": {"service": "x"}}),
                                   ("GET", "/runs", None), ("GET", "/runs/anything", None),
                                   ("POST", "/runs/anything/cancel", {}),
                                   ("POST", "/runs/anything/approvals", {"step": "s", "vote": "approve"})]:
            response = await stack.call(method, path, headers=headers, body=body)
            assert response.status_code == 401, (case, method, path, response.text)
            assert response.json()["rule"] == "token"
            assert response.headers["www-authenticate"].startswith('Bearer realm="playbook-bot"'), case
    assert await stack.settled_runs() == []
    assert stack.refusals() == []  # nobody was authenticated: nothing to attribute


async def test_a_token_in_the_query_string_is_not_accepted(stack: ApiStack) -> None:
    token = stack.tokens["alice"]
    for query in (f"access_token={token}", f"token={token}", f"api_token={token}"):
        response = await stack.call("POST", f"/runs?{query}", body={"playbook": "quick", "params": {"service": "x"}})
        assert response.status_code == 401, query
        listed = await stack.call("GET", f"/runs?{query}")
        assert listed.status_code == 401, query
    assert await stack.settled_runs() == []


async def test_a_second_authorization_header_is_refused(stack: ApiStack) -> None:
    headers = [("Authorization", f"Bearer {stack.tokens['mallory']}"), ("Authorization", f"Bearer {stack.tokens['alice']}")]
    response = await stack.http.post(f"{stack.url}/api/v1/runs", headers=headers,
                                     json={"playbook": "quick", "params": {"service": "x"}})
    assert response.status_code == 401
    assert await stack.settled_runs() == []


async def test_a_revoked_token_stops_working_on_the_running_front_door(stack: ApiStack) -> None:
    assert (await stack.call("GET", "/runs", "carol")).status_code == 200
    assert TokenStore(stack.settings.tokens_path).revoke("carol")
    response = await stack.call("POST", "/runs", "carol", body={"playbook": "quick", "params": {"service": "x"}})
    assert response.status_code == 401 and "revoked" in response.json()["error"]
    assert await stack.settled_runs() == []


def test_a_rotated_token_stops_working_even_within_one_clock_tick(tmp_path: Path) -> None:
    """Re-issuing after a leak writes a file of the same size; on a coarse clock it can carry the
    same mtime. The front door must still see the new file, or the leaked token keeps working."""
    path = tmp_path / "api-tokens.json"
    operator, front_door = TokenStore(path), TokenStore(path)
    leaked = operator.issue("deploy-bot")
    assert front_door.principal_for(leaked) == "api:deploy-bot"
    before = path.stat()
    rotated = operator.issue("deploy-bot")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same clock tick as the first write
    assert path.stat().st_size == before.st_size
    assert front_door.principal_for(leaked) is None
    assert front_door.principal_for(rotated) == "api:deploy-bot"


# ---- authorization ----------------------------------------------------------------------------


async def test_a_principal_the_start_rule_refuses_gets_403_audited_and_nothing_starts(stack: ApiStack) -> None:
    response = await stack.call("POST", "/runs", "mallory", body={"playbook": "quick", "params": {"service": "x"}},
                                headers={"Idempotency-Key": "k1"})
    assert response.status_code == 403
    assert response.json() == {"error": "api:mallory may not start quick: only sre may start playbooks", "rule": "start"}
    assert await stack.settled_runs() == []
    [event] = stack.refusals("api:mallory")
    assert event.details["operation"] == "start" and event.details["rule"] == "start"
    assert "only sre may start playbooks" in event.details["reason"]


async def test_a_body_cannot_claim_another_requester_or_voter(stack: ApiStack) -> None:
    forged = {"playbook": "quick", "params": {"service": "x"}, "requested_by": "api:alice",
              "trigger": {"kind": "alertmanager", "requested_by": "alertmanager"}}
    response = await stack.call("POST", "/runs", "mallory", body=forged)
    assert response.status_code == 422
    assert {p.split(":")[0] for p in response.json()["problems"]} == {"requested_by", "trigger"}
    assert await stack.settled_runs() == []

    run_id = await stack.start("alice", "gated")
    await stack.waiting(run_id, "risky")
    vote = await stack.call("POST", f"/runs/{run_id}/approvals", "mallory",
                            body={"step": "risky", "vote": "approve", "user": "api:bob", "groups": ["sre"]})
    assert vote.status_code == 422
    as_mallory = await stack.call("POST", f"/runs/{run_id}/approvals", "mallory", body={"step": "risky", "vote": "approve"})
    assert as_mallory.status_code == 403 and as_mallory.json()["rule"] == "approver"
    assert (await stack.status(run_id)).step("risky").approvals == []  # type: ignore[union-attr]


async def test_the_requesters_own_tokens_cannot_approve(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "gated")
    await stack.waiting(run_id, "risky")
    for who in ("alice", "alice-laptop"):  # the same person, by data.playbook.people
        response = await stack.call("POST", f"/runs/{run_id}/approvals", who, body={"step": "risky", "vote": "approve"})
        assert response.status_code == 403, (who, response.text)
        assert response.json()["rule"] == "four_eyes"
    status = await stack.status(run_id)
    assert status is not None and status.step("risky").state == "waiting_approval" and status.step("risky").approvals == []
    refused = stack.refusals()
    assert {(e.actor, e.details["operation"], e.details["rule"], e.run_id) for e in refused} == {
        ("api:alice", "vote", "four_eyes", run_id), ("api:alice-laptop", "vote", "four_eyes", run_id)}


async def test_one_person_with_two_tokens_cannot_meet_a_quorum_of_two(stack: ApiStack) -> None:
    run_id = await stack.start("carol", "quorum")
    await stack.waiting(run_id, "risky")
    first = await stack.call("POST", f"/runs/{run_id}/approvals", "alice", body={"step": "risky", "vote": "approve"})
    assert first.status_code == 200 and (first.json()["approvals"], first.json()["needed"]) == (1, 2)
    for who in ("alice-laptop", "alice"):
        again = await stack.call("POST", f"/runs/{run_id}/approvals", who, body={"step": "risky", "vote": "approve"})
        assert again.status_code == 403, (who, again.text)
        assert again.json()["rule"] == "one_vote_per_person"
    status = await stack.status(run_id)
    assert status is not None and status.step("risky").state == "waiting_approval"
    assert [v.user for v in status.step("risky").approvals] == ["api:alice"]

    second = await stack.call("POST", f"/runs/{run_id}/approvals", "dave", body={"step": "risky", "vote": "approve"})
    assert second.status_code == 200
    assert (await stack.finished(run_id)).state == "completed"


async def test_a_run_is_readable_only_by_who_may_start_its_playbook(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "quick", {"service": "payments"})
    await stack.finished(run_id)
    refused = await stack.call("GET", f"/runs/{run_id}", "mallory")
    assert refused.status_code == 403
    assert refused.json()["rule"] == "start" and "only sre may start playbooks" in refused.json()["error"]
    assert "payments" not in refused.text and "steps" not in refused.json()
    assert (await stack.call("GET", "/runs", "mallory")).json()["runs"] == []
    assert (await stack.call("GET", f"/runs/{run_id}", "bob")).status_code == 200
    [event] = stack.refusals("api:mallory")
    assert (event.run_id, event.details["operation"], event.details["rule"]) == (run_id, "status", "start")


async def test_a_refused_cancel_is_audited_and_leaves_the_run_as_it_was(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "hold")
    await stack.step_in(run_id, "wait", "running")
    for who in ("carol", "mallory"):
        response = await stack.call("POST", f"/runs/{run_id}/cancel", who, body={"reason": "let me"})
        assert response.status_code == 403, (who, response.text)
        assert response.json()["rule"] == "cancel"
        assert "only the requester or bob may cancel" in response.json()["error"]
    status = await stack.status(run_id)
    assert status is not None and status.state == "running" and status.cancelled_by is None
    assert status.step("wait").state == "running"
    assert {(e.actor, e.details["rule"]) for e in stack.refusals()} == {("api:carol", "cancel"), ("api:mallory", "cancel")}



# ---- hostile bodies ---------------------------------------------------------------------------

HOSTILE_STARTS: dict[str, tuple[bytes, int]] = {
    "over the limit": (b'{"playbook": "quick", "params": {"service": "' + b"a" * MAX_BODY + b'"}}', 413),
    "deeply nested": (b'{"playbook": "quick", "params": {"service": ' + b"[" * 20000 + b"]" * 20000 + b"}}", 400),
    "not utf-8": (b'{"playbook": "qu\xffick"}', 400),
    "a huge integer": (b'{"playbook": "quick", "params": {"service": "x", "replicas": ' + b"9" * 5000 + b"}}", 400),
    "NaN": (b'{"playbook": "quick", "params": {"service": "x", "replicas": NaN}}', 422),
    "a list": (b"[]", 422),
    "null": (b"null", 422),
    "empty": (b"", 400),
    "nested params": (b'{"playbook": "quick", "params": {"service": {"a": [1, {"b": null}]}}}', 422),
    "a long playbook name": (b'{"playbook": "' + b"x" * 5000 + b'"}', 422),
}


@pytest.mark.parametrize("case", list(HOSTILE_STARTS))
async def test_hostile_start_bodies_are_4xx_and_start_nothing(stack: ApiStack, case: str) -> None:
    content, expected = HOSTILE_STARTS[case]
    response = await stack.call("POST", "/runs", "alice", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == expected, (case, response.status_code, response.text[:300])
    assert response.json()["error"]
    assert await stack.settled_runs() == []


async def test_an_oversize_chunked_body_is_413_without_a_content_length(stack: ApiStack) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"playbook": "quick", "params": {"service": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"a" * 1024
        yield b'"}}'

    response = await stack.http.post(f"{stack.url}/api/v1/runs", headers=stack.auth("alice"), content=chunks())
    assert response.status_code == 413
    assert await stack.settled_runs() == []


async def test_hostile_vote_and_cancel_bodies_are_4xx_and_change_nothing(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "gated")
    await stack.waiting(run_id, "risky")
    for body, expected in [({"step": "risky", "vote": "approve", "reason": "x" * 5000}, 422),
                           ({"step": "risky", "vote": "maybe"}, 422), ({"step": "risky"}, 422), ([], 422)]:
        response = await stack.call("POST", f"/runs/{run_id}/approvals", "bob", body=body)
        assert response.status_code == expected, (body, response.text)
    cancel = await stack.call("POST", f"/runs/{run_id}/cancel", "alice", content=b"{not json")
    assert cancel.status_code == 400
    status = await stack.status(run_id)
    assert status is not None and status.step("risky").approvals == [] and status.cancelled_by is None


async def test_hostile_run_ids_are_404_never_5xx(stack: ApiStack) -> None:
    for run_id in ("x" * 2000, "%00", "a%0Ab", "%C3%A9", "%20", "..%2F..%2Fhealthz"):
        for method, path, body in [("GET", "", None), ("POST", "/cancel", {}),
                                   ("POST", "/approvals", {"step": "s", "vote": "approve"})]:
            response = await stack.call(method, f"/runs/{run_id}{path}", "alice", body=body)
            assert response.status_code == 404, (run_id[:20], method, path, response.text[:200])
    assert await stack.settled_runs() == []


async def test_unauthenticated_bodies_are_not_read(stack: ApiStack) -> None:
    response = await stack.call("POST", "/runs", content=b"x" * (4 * MAX_BODY))
    assert response.status_code == 401  # not 413: nothing is read before the token is checked


# ---- our side ---------------------------------------------------------------------------------


async def test_temporal_unreachable_is_a_503_and_refusals_stay_4xx(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    proxy = Proxy(dev_env.client.service_client.config.target_host)
    quick_to_give_up = RetryConfig(initial_interval_millis=50, max_elapsed_time_millis=1000, max_retries=2)
    client = await Client.connect(await proxy.start(), data_converter=pydantic_data_converter, retry_config=quick_to_give_up)
    async with api_stack(dev_env.client, tmp_path, front_door_client=client) as stack:
        assert (await stack.call("GET", "/runs", "alice")).status_code == 200
        await proxy.cut()
        started = await stack.call("POST", "/runs", "alice", body={"playbook": "quick", "params": {"service": "x"}})
        assert started.status_code == 503 and started.json()["rule"] == "temporal", started.text
        assert (await stack.call("GET", "/runs/some-run", "alice")).status_code == 503
        refused = await stack.call("POST", "/runs", "mallory", body={"playbook": "quick", "params": {"service": "x"}})
        assert refused.status_code == 403
        assert (await stack.call("GET", "/runs")).status_code == 401
        assert [e.actor for e in stack.refusals()] == ["api:mallory"]  # a 503 is ours, not a refusal


async def test_a_tokens_file_that_cannot_be_read_is_a_503_not_an_open_door(stack: ApiStack) -> None:
    stack.settings.tokens_path.write_text("{garbled")
    response = await stack.call("GET", "/runs", "alice")
    assert response.status_code == 503 and response.json()["rule"] == "token"
    assert (await stack.call("GET", "/runs")).status_code == 401


async def test_a_caller_who_may_not_read_a_run_learns_nothing_of_it_from_a_refusal(stack: ApiStack) -> None:
    """Red-team (stop 38): a caller who may not read a run (GET answers 403) still learnt its step
    ids, their states and whether it had ended from refused votes, answers and cancels: the run's
    refusals were told before any read check. They now hear GET's 403; a reader hears the reason."""
    waiting = await stack.start("alice", "hold")
    await stack.step_in(waiting, "wait", "running")
    ended = await stack.start("alice", "quick", {"service": "web"})
    await stack.finished(ended)
    probes = [
        (f"/runs/{waiting}/approvals", {"step": "no-such-step", "vote": "approve"}),  # is there such a step?
        (f"/runs/{waiting}/approvals", {"step": "note", "vote": "approve"}),  # what state is it in?
        (f"/runs/{ended}/approvals", {"step": "note", "vote": "approve"}),  # has the run ended?
        (f"/runs/{ended}/cancel", {"reason": "probe"}),
    ]
    for path, body in probes:
        outsider = await stack.call("POST", path, "mallory", body=body)
        read = await stack.call("GET", "/".join(path.split("/")[:3]), "mallory")  # what GET tells her of that run
        assert (outsider.status_code, outsider.json()) == (403, read.json()), (path, body, outsider.text)
        reader = await stack.call("POST", path, "carol", body=body)
        assert reader.status_code in (404, 409), (path, body, reader.text)  # a reader is told what is wrong
    assert len(stack.refusals("api:mallory")) == 2 * len(probes)  # each refusal on the record (and each GET's)
