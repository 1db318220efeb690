"""The notifier's Slack Web API client keeps its connections (bot/slack/web.py): slack_sdk alone
opens a connection, on slack.com a TCP and TLS handshake, for every call it is not handed a
session for. The other clients keep a connection per call: a kept connection the far end closes
just as a call is written on it fails that call unsent, which a `slack.post` step cannot retry."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler

from aiohttp import web
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from structlog.testing import capture_logs

from bot.actions.catalog import slack_client
from bot.actions.slack import SlackActions, SlackPostParams
from bot.settings import Settings
from bot.slack.notifier import SlackNotifier
from bot.slack.app import reply_ephemeral
from bot.slack.web import PooledWebClient, pooled, respond_kept
from tests.http_server import serving
from tests.slack.fake_slack import FakeSlack

CALLS = 20


def _client(fake_slack: FakeSlack, tmp_path) -> PooledWebClient:
    settings = Settings(data_dir=tmp_path, slack_bot_token=fake_slack.token, slack_api_url=fake_slack.api_url)
    client = slack_client(settings, pooled=True)
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


def _answer(handler: BaseHTTPRequestHandler, payload: dict[str, object], *headers: tuple[str, str]) -> None:
    """A Web API answer: 200, JSON, with `headers` besides."""
    body = json.dumps(payload).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _CookieSetter(BaseHTTPRequestHandler):
    """An API answering ok that sets a cookie, noting the Cookie header of each request."""

    protocol_version = "HTTP/1.1"
    seen: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _CookieSetter.seen.append(self.headers.get("Cookie"))
        _answer(self, {"ok": True}, ("Set-Cookie", "session=from-an-earlier-answer; Path=/"))

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


class _ClosesReusedConnections(BaseHTTPRequestHandler):
    """Answers the first request on a connection and keeps it open, then drops the connection when
    a second request comes on it, unanswered and not acted on (its idle close racing a reuse)."""

    protocol_version = "HTTP/1.1"
    acted: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if getattr(self, "_served", False):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._served = True
        _ClosesReusedConnections.acted.append(json.loads(body or b"{}").get("text", ""))
        _answer(self, {"ok": True, "channel": "C0INCIDENTS", "ts": "1714560000.000100"})

    def log_message(self, *args: object) -> None:
        pass


async def test_a_slack_post_step_never_meets_a_connection_the_server_closed(tmp_path):
    """slack.post takes a dropped connection as "may have posted" and is not retried: on a kept
    connection the step failed for good though Slack never saw the post (review of the pooled client)."""
    _ClosesReusedConnections.acted = []
    with serving(_ClosesReusedConnections) as url:
        settings = Settings(data_dir=tmp_path, slack_bot_token="xoxb-test", slack_api_url=url + "/api/")
        actions = SlackActions(slack_client(settings))
        for text in ("first", "second", "third"):
            await actions.post(SlackPostParams(channel="C0INCIDENTS", text=text), None)
    assert _ClosesReusedConnections.acted == ["first", "second", "third"]


async def test_a_burst_past_a_hundred_calls_is_not_held_for_connections(tmp_path):
    """No cap on the pool's connections (aiohttp's default is 100, and the wait for one counts in
    the call's timeout): 150 syncs' calls at once against a Slack taking a second each all land.
    (An asyncio server here: the fake's listen backlog would hold connections back itself.)"""
    answered: list[str] = []

    async def api(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        answered.append(request.match_info["method"])
        return web.json_response({"ok": True, "channel": "C0INCIDENTS", "ts": "1714560000.000100"})

    server = web.Application()
    server.router.add_post("/api/{method}", api)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        settings = Settings(data_dir=tmp_path, slack_bot_token="xoxb-test", slack_api_url=f"http://127.0.0.1:{port}/api/")
        client = slack_client(settings, timeout=2, pooled=True)
        outcomes = await asyncio.gather(*(client.chat_postMessage(channel="C0INCIDENTS", text=f"m{i}")
                                          for i in range(150)), return_exceptions=True)
        await client.aclose()
    finally:
        await runner.cleanup()
    assert [o for o in outcomes if isinstance(o, BaseException)] == [] and len(answered) == 150


def test_the_sessions_of_loops_that_have_closed_are_dropped(fake_slack, tmp_path):
    client = _client(fake_slack, tmp_path)
    for _ in range(5):
        asyncio.run(_post(client, 1))  # never closed by its caller
    assert len(client._sessions) == 1, "one entry: the last loop's (the others were dropped on the next use)"


class _ResponseUrl(BaseHTTPRequestHandler):
    """Slack's response_url, faked: answers 200 "ok", noting each message and each new connection."""

    protocol_version = "HTTP/1.1"
    messages: list[dict[str, object]] = []
    connections = 0

    def setup(self) -> None:
        _ResponseUrl.connections += 1
        super().setup()

    def do_POST(self) -> None:  # noqa: N802
        _ResponseUrl.messages.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


async def test_a_burst_of_answers_keeps_its_connections(fake_slack):
    """The front door's answers (bot/slack/app.py reply_ephemeral) go over the answers' kept
    connections, the response_url's included: Bolt's `respond` opens a session, and a connection (a
    TLS handshake with hooks.slack.com), for each. Same message as Bolt's."""
    _ResponseUrl.messages, _ResponseUrl.connections = [], 0
    web = pooled(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    with serving(_ResponseUrl) as url:
        body = {"command": "/playbook", "channel_id": "C0INCIDENTS", "user_id": "U0ALICE"}
        respond = AsyncRespond(response_url=f"{url}/commands/T0/1/abc")
        for i in range(10):
            await reply_ephemeral(web, body, respond, f"answer {i}")
        assert _ResponseUrl.connections == 1
        assert _ResponseUrl.messages == [{"text": f"answer {i}", "response_type": "ephemeral", "replace_original": False}
                                         for i in range(10)]
        # with blocks, as `/playbook status` answers: the same fields as Bolt's respond sends
        await respond_kept(respond, web, "status", response_type="ephemeral", blocks=[{"type": "divider"}])
        await respond(text="status", response_type="ephemeral", blocks=[{"type": "divider"}])
        assert _ResponseUrl.messages[-1] == _ResponseUrl.messages[-2]
    await web.aclose()
    assert fake_slack.posts() == []


async def test_an_answer_on_a_kept_connection_the_far_end_closed_reaches_the_user_once(fake_slack):
    """The response_url drops a reused connection unanswered (its idle close racing a reuse): the
    answer still reaches the user, once, whichever way (slack_sdk's connection-error retry sends it
    again on a new connection; were that to fail too, chat.postEphemeral would)."""
    _ClosesReusedConnections.acted = []  # as a response_url here
    web = pooled(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    with serving(_ClosesReusedConnections) as url:
        body = {"command": "/playbook", "channel_id": "C0INCIDENTS", "user_id": "U0ALICE"}
        respond = AsyncRespond(response_url=f"{url}/commands/T0/1/abc")
        for text in ("first", "second"):
            await reply_ephemeral(web, body, respond, text)
    await web.aclose()
    posted = [c.params.get("text") for c in fake_slack.calls if c.method == "chat.postEphemeral"]
    assert sorted(_ClosesReusedConnections.acted + posted) == ["first", "second"]


class _Failing(_ResponseUrl):
    """A response_url answering 500."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()


async def test_an_answer_with_blocks_falls_back_to_chat_post_ephemeral_with_them(fake_slack):
    """`/playbook status` answers with blocks: when its response_url fails, the user still gets
    them through chat.postEphemeral (the answer used to go through Bolt's respond alone)."""
    fake_slack.add_user("U0ALICE", "alice")
    web = pooled(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*ack*: completed"}}]
    with serving(_Failing) as url:
        body = {"command": "/playbook", "channel_id": "C0INCIDENTS", "user_id": "U0ALICE"}
        await reply_ephemeral(web, body, AsyncRespond(response_url=f"{url}/commands/T0/1/abc"), "ack: completed", blocks)
    await web.aclose()
    [call] = [c for c in fake_slack.calls if c.method == "chat.postEphemeral"]
    assert call.ok and call.params.get("text") == "ack: completed"
    sent = call.params["blocks"]
    assert (json.loads(sent) if isinstance(sent, str) else sent) == blocks


async def test_an_answer_to_a_body_without_a_response_url_goes_straight_to_chat_post_ephemeral(fake_slack):
    """A command body without a response_url (older Slack bodies carry none): Bolt's respond
    raised for each answer, and each was logged as a failure before chat.postEphemeral took it,
    the loop's time in a burst of them."""
    fake_slack.add_user("U0ALICE", "alice")
    web = pooled(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    body = {"command": "/playbook", "channel_id": "C0INCIDENTS", "user_id": "U0ALICE"}
    with capture_logs() as logs:
        await reply_ephemeral(web, body, AsyncRespond(response_url=None), "ack: completed")
    await web.aclose()
    [call] = [c for c in fake_slack.calls if c.method == "chat.postEphemeral"]
    assert call.ok and call.params.get("text") == "ack: completed"
    assert [log["event"] for log in logs if log["log_level"] == "warning"] == []
