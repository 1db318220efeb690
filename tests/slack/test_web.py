"""The Slack Web API client keeps its connections (bot/slack/web.py): slack_sdk alone opens a
connection, on slack.com a TCP and TLS handshake, for every call it is not handed a session for."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler

from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler

from bot.actions.catalog import slack_client
from bot.settings import Settings
from bot.slack.notifier import SlackNotifier
from bot.slack.web import PooledWebClient
from tests.http_server import serving
from tests.slack.fake_slack import FakeSlack

CALLS = 20


def _client(fake_slack: FakeSlack, tmp_path) -> PooledWebClient:
    settings = Settings(data_dir=tmp_path, slack_bot_token=fake_slack.token, slack_api_url=fake_slack.api_url)
    client = slack_client(settings)
    assert isinstance(client, PooledWebClient)
    return client


async def _post(client: PooledWebClient, n: int) -> None:
    for i in range(n):
        await client.chat_postMessage(channel="C0INCIDENTS", text=f"call {i}")


async def test_calls_reuse_the_clients_connections(fake_slack, tmp_path):
    client = _client(fake_slack, tmp_path)
    await _post(client, CALLS)  # one after another: one connection
    assert fake_slack.connections == 1
    await asyncio.gather(*(_post(client, 4) for _ in range(5)))  # five at a time: at most five more
    assert fake_slack.connections <= 6
    assert len(fake_slack.posts()) == CALLS + 20
    await client.aclose()
    await _post(client, 1)  # closed: the next call opens a session again
    assert fake_slack.connections <= 7 and len(fake_slack.posts()) == CALLS + 21
    await client.aclose()


async def test_the_notifiers_copy_without_rate_limit_retries_shares_the_connections(fake_slack, tmp_path):
    client = _client(fake_slack, tmp_path)
    notifier = SlackNotifier(client)
    assert not any(isinstance(h, AsyncRateLimitErrorRetryHandler) for h in notifier.web.retry_handlers)
    assert any(isinstance(h, AsyncRateLimitErrorRetryHandler) for h in client.retry_handlers), "the caller's kept"
    await _post(client, 3)
    await _post(notifier.web, 3)
    assert fake_slack.connections == 1 and len(fake_slack.posts()) == 6
    await client.aclose()


def test_one_client_serves_more_than_one_event_loop(fake_slack, tmp_path):
    """Built once at startup, used from the CLI's asyncio.run and a thread's loop: each loop has its
    own session (an aiohttp session is bound to the loop that opened it)."""
    client = _client(fake_slack, tmp_path)

    async def twice() -> None:
        await _post(client, 2)
        await client.aclose()

    asyncio.run(twice())
    thread = threading.Thread(target=lambda: asyncio.run(twice()))
    thread.start()
    thread.join(timeout=30)
    asyncio.run(twice())
    assert len(fake_slack.posts()) == 6 and fake_slack.connections == 3


class _CookieSetter(BaseHTTPRequestHandler):
    """An API answering ok that sets a cookie, noting the Cookie header of each request."""

    protocol_version = "HTTP/1.1"
    seen: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _CookieSetter.seen.append(self.headers.get("Cookie"))
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Set-Cookie", "session=from-an-earlier-answer; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def test_no_cookie_is_carried_from_one_call_to_the_next():
    """A kept session would keep what a response sets and send it with every later call, as
    slack_sdk's session per call never did."""
    _CookieSetter.seen = []
    with serving(_CookieSetter) as url:
        # a host name: aiohttp keeps no cookie from an IP address anyway
        client = PooledWebClient(token="xoxb-test", base_url=f"{url.replace('127.0.0.1', 'localhost')}/api/")
        for _ in range(3):
            await client.api_call("auth.test")
        await client.aclose()
    assert _CookieSetter.seen == [None, None, None]
