"""`slack.post` posts at most once: a retry is only made when Slack certainly did not act.

Through the production client (`bot.actions.catalog.slack_client`) and the real activity in a
real workflow step that allows three attempts, against a local HTTP server standing in for Slack
that counts the posts reaching it. A timeout, a connection dropped after the request was sent, or
a 5xx may each have posted: the step fails for good, saying so. A 429 did not post: it is retried.

The run's notifier posts through the same client (the worker builds it with `slack_client`):
one notifier call sends one request whatever the failure, and a 429 is sent again.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bot.actions.activities import build_activities
from bot.actions.base import ACTION_FAILED, ActionInput
from bot.actions.catalog import slack_client
from bot.actions.secrets import SecretStore
from bot.actions.slack import SlackActions
from bot.engine.state import RunStatus, StepStatus
from bot.settings import Settings
from bot.slack.notifier import SlackNotifier, SlackSync
from tests.engine.support import Recorder, playbook, run_input, start, worker
from tests.http_server import serving

TOKEN = "xoxb-counting"
CLIENT_TIMEOUT = 2  # seconds; the hanging server holds a request far longer
MAYBE_POSTED = "may or may not have been posted"

PB = """
name: tell
steps:
  - id: tell
    action: slack.post
    with: {channel: "#incidents", text: "restarting api"}
    retry: {max_attempts: 3, initial_interval: 1s, max_interval: 1s}
"""


@dataclass
class CountingSlack:
    """Answers chat.postMessage by script (the last answer repeats) and counts what reached it."""

    answers: list[str]
    url: str = ""
    posts: int = 0  # requests whose body was read: Slack may have acted on each
    accepted: int = 0  # requests answered ok: certainly posted
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self) -> str:
        with self.lock:
            self.posts += 1
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def _handler(slack: CountingSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.path.endswith("/chat.postMessage"):
                self._send(404, {"ok": False, "error": "unknown_method"})
                return
            answer = slack.next_answer()
            if answer == "hang":
                slack.release.wait(60)  # far past the client's timeout; released when the test ends
                self.close_connection = True
            elif answer == "close":
                self.close_connection = True  # read the request, answer nothing, FIN
            elif answer == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True  # read the request, answer nothing, RST
            elif answer == "500":
                self._send(500, None)
            elif answer == "500-json":
                self._send(500, {"ok": False, "error": "fatal_error"})
            elif answer == "internal_error":
                self._send(200, {"ok": False, "error": "internal_error"})
            elif answer == "429":
                self._send(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"})
            else:
                with slack.lock:
                    slack.accepted += 1
                self._send(200, {"ok": True, "channel": "C0INCIDENTS", "ts": f"1714560000.{slack.accepted:06d}"})

        def _send(self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode() if body is not None else b"<html>Internal Server Error</html>"
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if body is not None else "text/html")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

    return Handler


@pytest.fixture
def counting_slack(request: pytest.FixtureRequest) -> Iterator[CountingSlack]:
    slack = CountingSlack(answers=list(request.param))
    with serving(_handler(slack)) as slack.url:
        try:
            yield slack
        finally:
            slack.release.set()


def _client(base_url: str) -> Any:
    settings = Settings(slack_bot_token=TOKEN, slack_api_url=base_url)
    return slack_client(settings, timeout=CLIENT_TIMEOUT)


async def _run_step(dev_env: Any, base_url: str) -> Any:
    activities = build_activities([SlackActions(_client(base_url))], SecretStore(environ={}))
    async with worker(dev_env.client, Recorder(), activities) as w:
        return await (await start(dev_env.client, w, run_input(playbook(PB)))).result()


MAYBE_TAKEN = pytest.mark.parametrize(
    "counting_slack",
    [["hang"], ["close"], ["reset"], ["500"], ["500-json"], ["internal_error"]],
    ids=["timeout", "closed-after-request", "reset-after-request", "500", "500-fatal_error", "internal_error"],
    indirect=True,
)


@MAYBE_TAKEN
async def test_a_post_slack_may_have_taken_is_never_retried(dev_env, counting_slack: CountingSlack) -> None:
    status = await _run_step(dev_env, counting_slack.url + "/api/")

    step = status.step("tell")
    assert step.state == "failed", status
    assert counting_slack.posts == 1, f"{counting_slack.posts} posts reached Slack; a retry may post twice"
    assert step.attempts == 1
    assert MAYBE_POSTED in (step.error or ""), step.error


@pytest.mark.parametrize("counting_slack", [["429", "ok"]], indirect=True)
async def test_a_rate_limited_post_is_retried_and_posts_once(dev_env, counting_slack: CountingSlack) -> None:
    status = await _run_step(dev_env, counting_slack.url + "/api/")

    assert status.state == "completed", status.error
    assert (counting_slack.posts, counting_slack.accepted) == (2, 1), "the 429, then the one post"
    assert status.step("tell").output == {"channel": "C0INCIDENTS", "ts": "1714560000.000001"}


async def test_a_refused_connection_is_retryable() -> None:
    """Nothing listened, so nothing was sent: the step's retry policy may try again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call
    [post] = build_activities([SlackActions(_client(f"http://127.0.0.1:{port}/api/"))], SecretStore(environ={}))
    arg = ActionInput(run_id="r", step_id="tell", playbook="tell", action="slack.post",
                      params={"channel": "#incidents", "text": "hi"}, idempotency_key="r:tell")
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(post, arg)
    assert caught.value.type == ACTION_FAILED and not caught.value.non_retryable
    assert "could not reach Slack" in caught.value.message and MAYBE_POSTED not in caught.value.message


RUNNING = RunStatus(run_id="r-1", playbook="tell", playbook_hash="h", state="running", requested_by="cli:tester",
                    trigger="cli", steps=[StepStatus(id="tell", action="core.log", state="running")])


async def _notify(base_url: str) -> Any:
    """One sync of a running run, whose only call is the status message's post."""
    return await SlackNotifier(_client(base_url)).sync(SlackSync(channel="#incidents", status=RUNNING))


@MAYBE_TAKEN
async def test_the_notifiers_client_sends_a_post_slack_may_have_taken_once(counting_slack: CountingSlack) -> None:
    state = await _notify(counting_slack.url + "/api/")

    assert counting_slack.posts == 1, f"{counting_slack.posts} posts reached Slack for one notifier call"
    assert state.message_ts is None, "nothing is taken as posted that Slack did not confirm"


@pytest.mark.parametrize("counting_slack", [["429", "ok"]], indirect=True)
async def test_the_notifiers_client_retries_a_rate_limited_post(counting_slack: CountingSlack) -> None:
    state = await _notify(counting_slack.url + "/api/")

    assert (counting_slack.posts, counting_slack.accepted) == (2, 1), "the 429, then the one post"
    assert (state.message_ts, state.channel_id) == ("1714560000.000001", "C0INCIDENTS")
