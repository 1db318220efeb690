"""`slack.post` against the fake Slack Web API: what it sends, and how Slack's errors end the step."""

from __future__ import annotations

import socket
from typing import AsyncIterator

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.actions.base import ACTION_FAILED, ACTION_REFUSED, INVALID_PARAMS
from bot.actions.secrets import SecretStore
from tests.secret_refs import ref
from bot.actions.slack import SlackActions
from tests.slack.fake_slack import FakeSlack


@pytest.fixture
async def slack(fake_slack: FakeSlack) -> AsyncIterator[list[object]]:
    # No client-side retries here: the step's own retry policy is what these tests pin down.
    client = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url, retry_handlers=[])
    yield [SlackActions(client)]


async def test_posts_to_a_channel_by_name(slack, fake_slack, run_action) -> None:
    result = await run_action("slack.post", {"channel": "#incidents", "text": "Restarting *api*"}, slack)

    assert result.output == {"channel": "C0INCIDENTS", "ts": fake_slack.messages[0].ts}
    [call] = fake_slack.calls_to("chat.postMessage")
    assert call.params["channel"] == "#incidents"
    assert call.params["text"] == "Restarting *api*"
    assert "thread_ts" not in call.params


async def test_replies_in_a_thread(slack, fake_slack, run_action) -> None:
    parent = await run_action("slack.post", {"channel": "C0INCIDENTS", "text": "run started"}, slack)
    reply = await run_action(
        "slack.post", {"channel": "C0INCIDENTS", "text": "step done", "thread_ts": parent.output["ts"]}, slack
    )

    assert reply.output["ts"] != parent.output["ts"]
    assert fake_slack.message("C0INCIDENTS", reply.output["ts"]).thread_ts == parent.output["ts"]


async def test_secret_reference_is_resolved_in_the_activity(slack, fake_slack, run_action) -> None:
    secrets = SecretStore(environ={"PLAYBOOK_BOT_SECRET_BRIDGE_PIN": "4711"})
    params = {"channel": "#incidents", "text": f"bridge pin {ref('BRIDGE_PIN')}"}
    await run_action("slack.post", params, slack, secrets=secrets)

    assert fake_slack.calls_to("chat.postMessage")[0].params["text"] == "bridge pin 4711"


async def test_not_configured_is_refused_naming_the_setting(run_failing) -> None:
    error = await run_failing("slack.post", {"channel": "#incidents", "text": "hi"}, [SlackActions(None)])

    assert error.type == ACTION_REFUSED
    assert error.non_retryable
    assert "PLAYBOOK_BOT_SLACK_BOT_TOKEN" in error.message


@pytest.mark.parametrize(
    ("channel", "setup", "code"),
    [
        ("#nowhere", None, "channel_not_found"),
        ("#general", "not_member", "not_in_channel"),
        ("#incidents", "bad_token", "invalid_auth"),
    ],
)
async def test_final_slack_errors_fail_at_once_with_the_code(fake_slack, run_failing, channel, setup, code) -> None:
    fake_slack.not_member.add("C0GENERAL")
    token = "xoxb-wrong" if setup == "bad_token" else fake_slack.token
    client = AsyncWebClient(token=token, base_url=fake_slack.api_url, retry_handlers=[])

    error = await run_failing("slack.post", {"channel": channel, "text": "hi"}, [SlackActions(client)])

    assert error.type == ACTION_FAILED
    assert error.non_retryable
    assert code in error.message
    assert error.details[0]["output"]["error"] == code
    assert fake_slack.messages == []


async def test_rate_limit_is_retryable(slack, fake_slack, run_failing) -> None:
    fake_slack.rate_limit(1, retry_after=7)

    error = await run_failing("slack.post", {"channel": "#incidents", "text": "hi"}, slack)

    assert error.type == ACTION_FAILED
    assert not error.non_retryable
    assert "ratelimited" in error.message and "Retry-After 7s" in error.message
    assert fake_slack.messages == []


async def test_server_error_is_final_since_slack_may_have_posted(slack, fake_slack, run_failing) -> None:
    fake_slack.server_error(1, status=503)

    error = await run_failing("slack.post", {"channel": "#incidents", "text": "hi"}, slack)

    assert error.type == ACTION_FAILED
    assert error.non_retryable, "a retry could post the message twice"
    assert "may or may not have been posted" in error.message
    assert error.details[0]["output"]["maybe_posted"] is True


async def test_connection_refused_is_retryable(run_failing) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nothing listens there
    client = AsyncWebClient(token="xoxb-x", base_url=f"http://127.0.0.1:{port}/api/", retry_handlers=[])

    error = await run_failing("slack.post", {"channel": "#incidents", "text": "hi"}, [SlackActions(client)])

    assert error.type == ACTION_FAILED
    assert not error.non_retryable
    assert "could not reach Slack" in error.message


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"channel": "", "text": "hi"}, "channel"),
        ({"channel": "#incidents", "text": "   "}, "text"),
        ({"channel": "#incidents", "text": "x" * 40_001}, "text"),
        ({"channel": "#incidents", "text": "hi", "thread_ts": "yesterday"}, "thread_ts"),
        ({"channel": "#incidents", "text": "hi", "thread_ts": 1714560000.0001}, "thread_ts"),
        ({"channel": "#incidents", "text": "hi", "blocks": []}, "blocks"),
    ],
)
async def test_bad_params(slack, fake_slack, run_failing, params, where) -> None:
    error = await run_failing("slack.post", params, slack)

    assert error.type == INVALID_PARAMS
    assert where in error.message
    assert fake_slack.calls == []
