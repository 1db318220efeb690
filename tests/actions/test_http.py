from __future__ import annotations

import json
import socket
from typing import AsyncIterator

import pytest
from structlog.testing import capture_logs

from bot.actions.base import ACTION_FAILED, INVALID_PARAMS, SECRET_MISSING
from bot.actions.egress import EgressClient
from bot.actions.http import BODY_LIMIT, JSON_MAX_DEPTH, HttpActions
from bot.actions.secrets import MASK, SecretStore
from tests.secret_refs import ref


@pytest.fixture
async def http() -> AsyncIterator[list[object]]:
    async with EgressClient() as client:
        yield [HttpActions(client)]


async def test_get_sends_idempotency_key_and_query_and_parses_json(http, fake_api, run_action) -> None:
    result = await run_action(
        "http.request",
        {"url": fake_api.url("/echo"), "query": {"service": "api", "n": 3}, "headers": {"X-Trace": "abc"}},
        http,
        key="run-42/restart",
    )

    [sent] = fake_api.requests
    assert sent.method == "GET"
    assert sent.headers["idempotency-key"] == "run-42/restart"
    assert sent.headers["x-trace"] == "abc"
    assert sent.query == {"service": ["api"], "n": ["3"]}
    out = result.output
    assert out["status"] == 200
    assert out["headers"] == {"content-type": "application/json"}

    # `query` adds to a query string the URL already has (a key it names replaces the URL's); nothing is dropped
    await run_action("http.request", {"url": fake_api.url("/echo?token=t1&n=1"), "query": {"n": 2, "x": "y"}}, http)
    assert fake_api.requests[-1].query == {"token": ["t1"], "n": ["2"], "x": ["y"]}
    assert out["truncated"] is False
    assert out["json"]["headers"]["idempotency-key"] == "run-42/restart"
    assert json.loads(out["body"]) == out["json"]


async def test_compensation_sends_its_own_key(http, fake_api, run_action) -> None:
    await run_action("http.request", {"method": "delete", "url": fake_api.url("/echo")}, http, key="run-42/restart/undo")
    [sent] = fake_api.requests
    assert (sent.method, sent.headers["idempotency-key"]) == ("DELETE", "run-42/restart/undo")


async def test_post_json_body(http, fake_api, run_action) -> None:
    payload = {"service": "api", "replicas": 3, "force": True, "tags": ["a"]}
    result = await run_action("http.request", {"method": "POST", "url": fake_api.url("/echo"), "json": payload}, http)

    [sent] = fake_api.requests
    assert sent.method == "POST"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.body) == payload
    assert result.output["status"] == 200


async def test_post_raw_body(http, fake_api, run_action) -> None:
    await run_action(
        "http.request",
        {"method": "PUT", "url": fake_api.url("/echo"), "body": "a=1", "headers": {"Content-Type": "text/plain"}},
        http,
    )
    [sent] = fake_api.requests
    assert (sent.body, sent.headers["content-type"]) == (b"a=1", "text/plain")


async def test_head_has_empty_body_and_no_json(http, fake_api, run_action) -> None:
    result = await run_action("http.request", {"method": "HEAD", "url": fake_api.url("/echo")}, http)
    assert result.output["status"] == 200 and result.output["body"] == "" and "json" not in result.output


async def test_unexpected_status_is_a_permanent_failure_with_output(http, fake_api, run_failing) -> None:
    url = fake_api.url("/status/201")
    error = await run_failing("http.request", {"method": "POST", "url": url, "expected_status": 200}, http)

    assert error.type == ACTION_FAILED and error.non_retryable
    assert f"POST {url} returned 201, expected 200" in error.message
    assert "upstream says no" in error.message
    assert error.details[0]["output"]["status"] == 201


async def test_expected_status_list_accepts_listed_codes(http, fake_api, run_action) -> None:
    result = await run_action("http.request", {"url": fake_api.url("/status/404"), "expected_status": [200, 404]}, http)
    assert result.output["status"] == 404


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (500, True), (429, True), (408, True), (404, False), (409, False)])
async def test_status_retryability(http, fake_api, run_failing, status: int, retryable: bool) -> None:
    url = fake_api.url(f"/status/{status}")
    error = await run_failing("http.request", {"method": "PATCH", "url": url}, http)

    assert error.type == ACTION_FAILED
    assert error.non_retryable is not retryable
    assert f"PATCH {url} returned {status}, expected 2xx: status {status}: upstream says no" in error.message


async def test_connection_refused_is_retryable(http, run_failing) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"
    error = await run_failing("http.request", {"url": url}, http)

    assert error.type == ACTION_FAILED and not error.non_retryable
    assert f"GET {url} failed: ConnectError" in error.message


async def test_timeout_is_retryable(http, fake_api, run_failing) -> None:
    error = await run_failing("http.request", {"url": fake_api.url("/slow/2"), "timeout": "200ms"}, http)
    assert error.type == ACTION_FAILED and not error.non_retryable
    assert "timed out" in error.message


async def test_redirect_not_followed_by_default(http, fake_api, run_failing, run_action) -> None:
    error = await run_failing("http.request", {"url": fake_api.url("/redirect")}, http)
    assert error.non_retryable
    assert error.details[0]["output"]["headers"]["location"] == "/echo"

    result = await run_action("http.request", {"url": fake_api.url("/redirect"), "follow_redirects": True}, http)
    assert result.output["status"] == 200 and result.output["url"] == fake_api.url("/echo")


async def test_a_json_body_nested_past_the_bound_is_kept_as_text_only(http, fake_api, run_action) -> None:
    """Red-team finding: a target answering 440 bytes of JSON nested 220 deep had the step return
    it parsed, and the workflow, whose decoder stops at 200 levels, could never take the result:
    its task failed for ever, the run stuck with nothing rolled back. Parsed only to JSON_MAX_DEPTH."""
    for depth in (220, JSON_MAX_DEPTH + 1):
        deep = await run_action("http.request", {"url": fake_api.url(f"/nested/{depth}")}, http)
        assert "json" not in deep.output
        assert deep.output["body"].startswith("[[[") and deep.output["status"] == 200
    bounded = await run_action("http.request", {"url": fake_api.url(f"/nested/{JSON_MAX_DEPTH}")}, http)
    assert json.loads(bounded.output["body"]) == bounded.output["json"]


async def test_a_secret_the_body_limit_falls_inside_is_masked_whole(http, fake_api, run_action) -> None:
    """Red-team finding (stop 48): the body was cut at BODY_LIMIT, then masked; a token the cut split
    was no longer known, and all but its last character reached the step's output (status, Slack,
    the trail). Whoever fills a header from an alert's annotation places the cut, against a target
    that echoes the request."""
    token = "tok-9b1f64c2d7e84a3f8e21"
    secrets = SecretStore(environ={"PLAYBOOK_BOT_SECRET_API_TOKEN": token})

    async def call(pad: int) -> dict:
        params = {"url": fake_api.url("/echo"),
                  "headers": {"X-Incident": "a" * pad, "Authorization": f"Bearer {ref('API_TOKEN')}"}}
        return (await run_action("http.request", params, http, secrets=secrets)).output

    start = (await call(100))["body"].index(MASK)
    out = await call(100 + BODY_LIMIT - (len(token) - 1) - start)  # the cut one character before its end
    assert out["truncated"] is True and len(out["body"].encode()) <= BODY_LIMIT
    assert token[:-1] not in out["body"] and token[:8] not in out["body"]


async def test_large_body_is_truncated(http, fake_api, run_action) -> None:
    result = await run_action("http.request", {"url": fake_api.url("/big")}, http)
    assert result.output["truncated"] is True
    assert result.output["body"] == "x" * BODY_LIMIT
    assert "json" not in result.output


async def test_secret_header_is_resolved_sent_and_masked(http, fake_api, run_action) -> None:
    secrets = SecretStore(environ={"PLAYBOOK_BOT_SECRET_DEPLOY_TOKEN": "s3cr3t-value"})
    with capture_logs() as logs:
        result = await run_action(
            "http.request",
            {"url": fake_api.url("/echo"), "headers": {"Authorization": f"Bearer {ref('DEPLOY_TOKEN')}"}},
            http,
            secrets=secrets,
        )

    [sent] = fake_api.requests
    assert sent.headers["authorization"] == "Bearer s3cr3t-value"
    assert "s3cr3t-value" not in json.dumps(result.output)
    assert result.output["json"]["headers"]["authorization"] == f"Bearer {MASK}"
    assert "s3cr3t-value" not in repr(logs) and "Bearer" not in repr(logs)


async def test_secret_in_failure_message_is_masked(http, fake_api, run_failing) -> None:
    secrets = SecretStore(environ={"PLAYBOOK_BOT_SECRET_HOOK": "hook-secret"})
    error = await run_failing("http.request", {"url": fake_api.url(f"/status/500?k={ref('HOOK')}")}, http, secrets=secrets)
    assert "hook-secret" not in error.message and MASK in error.message
    assert fake_api.requests[0].query == {"k": ["hook-secret"]}


async def test_missing_secret_fails_before_sending(http, fake_api, run_failing) -> None:
    error = await run_failing("http.request", {"url": fake_api.url("/echo"), "headers": {"X": ref("NOPE")}}, http)
    assert error.type == SECRET_MISSING and error.non_retryable
    assert fake_api.requests == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "/relative"}, "url"),
        ({}, "url"),
        ({"url": "http://h", "method": "TRACE"}, "method"),
        ({"url": "http://h", "json": {"a": 1}, "body": "x"}, "not both"),
        ({"url": "http://h", "expected_status": 999}, "expected_status"),
        ({"url": "http://h", "timeout": "30"}, "timeout"),
        ({"url": "http://h", "headers": {"Idempotency-Key": "mine"}}, "headers"),
        ({"url": "http://h", "headers": {"X": "a\r\nInjected: 1"}}, "headers"),
        ({"url": "http://h", "verb": "GET"}, "verb"),
    ],
)
async def test_bad_params(http, fake_api, run_failing, params: dict, field: str) -> None:
    error = await run_failing("http.request", params, http)
    assert error.type == INVALID_PARAMS and error.non_retryable
    assert error.message.startswith("http.request: bad params:") and field in error.message
    assert fake_api.requests == []
