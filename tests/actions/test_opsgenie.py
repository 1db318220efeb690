"""opsgenie.create / close / note through the real activities, over real HTTP, against a fake
Opsgenie Alert API that checks the documented request shapes (tests/actions/fake_opsgenie.py)."""

from __future__ import annotations

import json
from typing import AsyncIterator, Iterator

import httpx
import pytest
from structlog.testing import capture_logs

from bot.actions.base import ACTION_FAILED, INVALID_PARAMS
from bot.actions.egress import EgressClient
from bot.actions.opsgenie import OpsgenieActions
from bot.actions.secrets import SecretStore
from bot.engine.workflow import idempotency_key
from tests.actions.fake_opsgenie import FakeOpsgenie, serve
from tests.secret_refs import ref

GENIE_KEY = "eb243592-faa2-4ba2-a551q-1afdf565c889"
READ_ONLY_KEY = "0a0b0c0d-read-only-key"
KEY = idempotency_key("run-7", "alert")
SECRETS = SecretStore(environ={"PLAYBOOK_BOT_SECRET_OG_KEY": GENIE_KEY, "PLAYBOOK_BOT_SECRET_OG_RO": READ_ONLY_KEY})


@pytest.fixture(scope="module")
def _og() -> Iterator[FakeOpsgenie]:
    yield from serve(FakeOpsgenie())


@pytest.fixture
def og(_og: FakeOpsgenie) -> FakeOpsgenie:
    _og.keys, _og.read_only_keys = {GENIE_KEY}, {READ_ONLY_KEY}
    _og.alerts.clear(), _og.requests.clear(), _og.outcomes.clear(), _og.answer_next.clear()
    _og.slow_once = 0.0
    return _og


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with EgressClient() as client:
        yield client


def providers(http: httpx.AsyncClient, og: FakeOpsgenie, timeout: float = 10.0) -> list[object]:
    return [OpsgenieActions(http, api_url=og.url, timeout=timeout)]


def create(**extra: object) -> dict[str, object]:
    return {"api_key": ref("OG_KEY"), "message": "checkout is down", **extra}


async def test_create_sends_the_documented_alert_with_the_step_key_as_alias(http, og, run_action) -> None:
    params = create(
        description="health checks failing for 5m",
        priority="P1",
        tags=["checkout", "production"],
        details={"run": "run-7", "replicas": 3},
        entity="checkout",
        responders=[{"type": "team", "name": "sre"}, {"type": "user", "username": "ann@example.com"}],
    )
    result = await run_action("opsgenie.create", params, providers(http, og), secrets=SECRETS, key=KEY)

    assert result.output["alias"] == KEY and result.output["request_id"]
    assert result.output["result"] == "Request will be processed"
    [(method, path, query, headers, raw)] = og.requests
    assert (method, path, query) == ("POST", "/v2/alerts", {})
    assert headers["authorization"] == f"GenieKey {GENIE_KEY}"
    assert headers["content-type"] == "application/json"
    assert json.loads(raw) == {
        "message": "checkout is down",
        "alias": KEY,
        "priority": "P1",
        "description": "health checks failing for 5m",
        "entity": "checkout",
        "tags": ["checkout", "production"],
        "details": {"run": "run-7", "replicas": "3"},
        "responders": [{"type": "team", "name": "sre"}, {"type": "user", "username": "ann@example.com"}],
        "source": "playbook-bot",
    }
    [alert] = og.alerts
    assert (alert.alias, alert.priority, alert.status) == (KEY, "P1", "open")


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"priority": "P6"}, "priority"),
        ({"message": ""}, "message"),
        ({"message": "m" * 131}, "message"),
        ({"alias": "a" * 513}, "alias"),
        ({"tags": [f"t{i}" for i in range(21)]}, "tags"),
        ({"tags": ["x" * 51]}, "tags"),
        ({"details": {"nested": {"no": 1}}}, "details"),
        ({"responders": [{"type": "team"}]}, "responders"),
        ({"responders": [{"type": "team", "username": "a@b.c"}]}, "responders"),
        ({"visibleTo": []}, "visibleTo"),
        ({"api_key": "k\r\nX-Injected: 1"}, "api_key"),
    ],
)
async def test_invalid_params_are_refused_before_anything_is_sent(http, og, run_failing, bad, where) -> None:
    error = await run_failing("opsgenie.create", create(**bad), providers(http, og), secrets=SECRETS)
    assert error.type == INVALID_PARAMS and error.non_retryable and where in error.message
    assert og.requests == []


async def test_a_retry_after_a_timeout_that_reached_opsgenie_creates_no_second_alert(http, og, run_action, run_failing):
    og.slow_once = 2.0
    slow = providers(http, og, timeout=0.3)
    error = await run_failing("opsgenie.create", create(), slow, secrets=SECRETS, key=KEY)
    assert error.type == ACTION_FAILED and not error.non_retryable
    assert len(og.alerts) == 1  # it arrived
    await run_action("opsgenie.create", create(), slow, secrets=SECRETS, key=KEY)
    [alert] = og.alerts
    assert alert.count == 2  # deduplicated by alias
    assert [json.loads(r[4])["alias"] for r in og.requests] == [KEY, KEY]


@pytest.mark.parametrize("status", [429, 500, 502])
async def test_throttling_and_server_errors_are_retried(http, og, run_action, run_failing, status) -> None:
    og.answer_next.append(status)
    error = await run_failing("opsgenie.create", create(), providers(http, og), secrets=SECRETS, key=KEY)
    assert error.type == ACTION_FAILED and not error.non_retryable and str(status) in error.message
    assert og.alerts == []
    await run_action("opsgenie.create", create(), providers(http, og), secrets=SECRETS, key=KEY)
    assert len(og.alerts) == 1


async def test_bad_or_read_only_keys_fail_for_good(http, og, run_failing) -> None:
    bad = SecretStore(environ={"PLAYBOOK_BOT_SECRET_OG_KEY": "not-a-known-key"})
    error = await run_failing("opsgenie.create", create(), providers(http, og), secrets=bad)
    assert error.non_retryable and "401" in error.message and "not-a-known-key" not in error.message
    error = await run_failing("opsgenie.create", create(api_key=ref("OG_RO")), providers(http, og), secrets=SECRETS)
    assert error.non_retryable and "403" in error.message
    assert og.alerts == []


async def test_a_request_opsgenie_refuses_is_not_retried(http, og, run_failing) -> None:
    """Opsgenie answers 422 for what it will not take; here a message of spaces only."""
    error = await run_failing("opsgenie.create", create(message="   "), providers(http, og), secrets=SECRETS)
    assert error.type == ACTION_FAILED and error.non_retryable
    assert "422" in error.message and "Message can not be empty" in error.message


async def test_close_in_a_compensation_closes_what_its_step_created(http, og, run_action) -> None:
    await run_action("opsgenie.create", create(), providers(http, og), secrets=SECRETS, key=KEY)
    undo = idempotency_key("run-7", "alert", compensation=True)
    result = await run_action("opsgenie.close", {"api_key": ref("OG_KEY"), "note": "rolled back"},
                              providers(http, og), secrets=SECRETS, key=undo, compensation=True)
    assert result.output["alias"] == KEY
    method, path, query, _, raw = og.requests[-1]
    assert (method, path, query) == ("POST", f"/v2/alerts/{KEY}/close", {"identifierType": ["alias"]})
    assert json.loads(raw) == {"note": "rolled back", "source": "playbook-bot"}
    assert og.alerts[0].status == "closed"


async def test_close_as_a_step_needs_the_alias(http, og, run_failing) -> None:
    error = await run_failing("opsgenie.close", {"api_key": ref("OG_KEY")}, providers(http, og), secrets=SECRETS,
                              key=idempotency_key("run-7", "close"))
    assert error.type == INVALID_PARAMS and "alias" in error.message
    assert og.requests == []


async def test_an_alias_stays_one_path_segment(http, og, run_action) -> None:
    """An alias (often from alert labels) cannot reach another endpoint through `/`, `?` or `..`."""
    for alias in ["a/../../v2/alerts", "x?identifierType=id", ".."]:
        await run_action("opsgenie.close", {"api_key": ref("OG_KEY"), "alias": alias}, providers(http, og),
                         secrets=SECRETS)
        method, path, query, _, _ = og.requests[-1]
        assert path.startswith("/v2/alerts/") and path.endswith("/close") and path.count("/") == 4
        assert query == {"identifierType": ["alias"]}
    assert [o.split(":")[0] for o in og.outcomes.values()] == [
        "close a/../../v2/alerts", "close x?identifierType=id", "close .."
    ]


async def test_note_adds_to_the_alert_with_that_alias(http, og, run_action, run_failing) -> None:
    await run_action("opsgenie.create", create(), providers(http, og), secrets=SECRETS, key=KEY)
    result = await run_action("opsgenie.note", {"api_key": ref("OG_KEY"), "alias": KEY, "note": "restart failed"},
                              providers(http, og), secrets=SECRETS)
    assert result.output["alias"] == KEY
    assert og.alerts[0].notes == ["restart failed"]
    error = await run_failing("opsgenie.note", {"api_key": ref("OG_KEY"), "alias": KEY, "note": ""},
                              providers(http, og), secrets=SECRETS)
    assert error.type == INVALID_PARAMS and "note" in error.message


async def test_the_key_never_reaches_outputs_errors_or_logs(http, og, run_action, run_failing) -> None:
    with capture_logs() as logs:
        result = await run_action("opsgenie.create", create(description=f"key is {ref('OG_KEY')}"),
                                  providers(http, og), secrets=SECRETS, key=KEY)
        og.answer_next.append(500)
        error = await run_failing("opsgenie.create", create(), providers(http, og), secrets=SECRETS, key=KEY)
    text = repr(result.output) + error.message + repr(error.details) + repr(logs)
    assert GENIE_KEY not in text
    assert any(entry.get("event") == "opsgenie request" for entry in logs)
