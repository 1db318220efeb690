"""Slack commands against a real `playbook-bot dev` process (embedded Temporal, its worker as a
child process), signed as Slack signs them, from this (separate) test process.

Not timed: every command must be answered 200 (Bolt answers 404 when a listener missed its ack
deadline), with a working, a missing, a hanging or a failing response_url; and the dev worker
child, killed, is restarted and finishes the run it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bot.devstack import read_record
from bot.engine.state import RunStatus
from bot.engine.workflow import PlaybookRun
from bot.slack.commands import slack_run_id
from tests.e2e.support import Service, base_env, cli, cmdline, descendants, free_port, pid_alive, wait_until, write_policies
from tests.e2e.test_dev_cli import start_dev, stop_dev
from tests.http_server import serving
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import sign

pytestmark = pytest.mark.slow

SECRET = "dev-slack-signing-secret-0123456789"
USER = "U0ALICE"
BURST = 50
PLAYBOOKS = {
    "quick": "name: quick\nsummary: one log line\nowner: sre\nsteps:\n  - id: hello\n    action: core.log\n"
             "    with: {message: hi}\n",
    "nap": "name: nap\nsummary: sleeps, then logs\nowner: sre\nsteps:\n  - id: nap\n    action: core.sleep\n"
           "    with: {duration: 4s}\n  - id: after\n    action: core.log\n    with: {message: woke}\n",
}


@dataclass
class ResponseUrls:
    """Slack's response_url, faked: /ok/KEY records, /fail/KEY answers 500, /hang/KEY holds the
    request until `release` is set."""

    url: str = ""
    answered: dict[str, int] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        urls = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind, _, key = self.path.strip("/").partition("/")
                if kind == "hang":
                    with urls.lock:
                        urls.held.add(key)
                    urls.release.wait(60)
                elif kind == "fail":
                    with urls.lock:
                        urls.failed.add(key)
                    self.send_response(500)
                    self.end_headers()
                    return
                else:
                    with urls.lock:
                        urls.answered[key] = urls.answered.get(key, 0) + 1
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"ok")

        return Handler


@dataclass
class DevSlack:
    env: dict[str, str]
    data_dir: Path
    events: str
    dev: Service
    fake: FakeSlack
    urls: ResponseUrls


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSlack]:
    tmp = tmp_path_factory.mktemp("devslack")
    (tmp / "playbooks").mkdir()
    for name, text in PLAYBOOKS.items():
        (tmp / "playbooks" / f"{name}.yaml").write_text(text)
    urls = ResponseUrls()
    with FakeSlack() as fake, serving(urls.handler()) as base:
        urls.url = base
        fake.add_user(USER, "alice")
        fake.add_usergroup("S0SRE", "sre", [USER])
        data_dir = tmp / "data"
        env = base_env(
            data_dir=data_dir,
            playbooks_dir=tmp / "playbooks",
            policies_dir=write_policies(tmp / "policies"),
            http_port=free_port(),
            dev_server_port=free_port(),
            dev_server_ui_port=free_port(),
            slack_signing_secret=SECRET,
            slack_bot_token=fake.token,
            slack_api_url=fake.api_url,
        )
        dev = start_dev(env, tmp / "logs", "dev")
        try:
            yield DevSlack(env, data_dir, f"http://127.0.0.1:{env['PLAYBOOK_BOT_HTTP_PORT']}/slack/events", dev, fake, urls)
        finally:
            urls.release.set()
            stop_dev(dev, data_dir)


@pytest_asyncio.fixture
async def client(stack: DevSlack) -> AsyncIterator[Client]:
    record = read_record(stack.data_dir)
    assert record is not None
    yield await Client.connect(record.address, data_converter=pydantic_data_converter)


def command(text: str, response_url: str | None) -> tuple[str, str]:
    """A signed-able slash command body and its trigger_id; no response_url field when None
    (older Slack bodies carry none)."""
    trigger = f"{int(time.time())}.7.{uuid.uuid4().hex[:20]}"
    fields = {
        "team_id": "T0FAKE", "channel_id": "C0INCIDENTS", "user_id": USER, "user_name": "alice",
        "command": "/playbook", "text": text, "api_app_id": "A0PLAYBOOK", "trigger_id": trigger,
    }
    if response_url is not None:
        fields["response_url"] = response_url
    return urlencode(fields), trigger


async def burst(stack: DevSlack, bodies: list[str]) -> list[int]:
    """All at once, as a burst of users would; the HTTP status of each."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        async def post(body: str) -> int:
            headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(body, secret=SECRET)}
            return (await http.post(stack.events, content=body, headers=headers)).status_code

        return list(await asyncio.gather(*(post(body) for body in bodies)))


def ephemerals(stack: DevSlack, marker: str) -> int:
    return sum(1 for c in stack.fake.calls_to("chat.postEphemeral") if marker in str(c.params.get("text")))


async def test_burst_with_response_url_all_acked_and_answered(stack: DevSlack, client: Client) -> None:
    keys = [uuid.uuid4().hex for _ in range(BURST)]
    sent = [command("run quick", f"{stack.urls.url}/ok/{key}") for key in keys]
    assert await burst(stack, [body for body, _ in sent]) == [200] * BURST
    wait_until(lambda: all(stack.urls.answered.get(key) == 1 for key in keys), 60, "every command answered once")
    for _, trigger in sent[:3]:
        run = await client.get_workflow_handle(slack_run_id("quick", trigger), result_type=RunStatus).result()
        assert run.state == "completed" and run.requested_by == f"slack:{USER}"


async def test_burst_without_response_url_all_acked_and_answered_by_post_ephemeral(stack: DevSlack) -> None:
    sent = [command("run quick", None) for _ in range(BURST)]
    assert await burst(stack, [body for body, _ in sent]) == [200] * BURST
    # no response_url: each user is told by chat.postEphemeral, naming their run
    wait_until(lambda: all(ephemerals(stack, slack_run_id("quick", t)) == 1 for _, t in sent), 60,
               "every command answered by chat.postEphemeral")


async def test_failing_response_urls_do_not_cost_other_commands_their_ack(stack: DevSlack) -> None:
    """Hanging and failing answers are pending while the next burst is acked; nothing is lost."""
    stack.urls.release.clear()
    hanging = [command("run quick", f"{stack.urls.url}/hang/{uuid.uuid4().hex}") for _ in range(10)]
    failing = [command("run quick", f"{stack.urls.url}/fail/{uuid.uuid4().hex}") for _ in range(10)]
    unknown = [command("run no-such-playbook", f"{stack.urls.url}/hang/{uuid.uuid4().hex}") for _ in range(10)]
    assert await burst(stack, [b for b, _ in hanging + failing + unknown]) == [200] * 30
    wait_until(lambda: len(stack.urls.held) >= 4, 30, "answers held by the hanging response_url")

    keys = [uuid.uuid4().hex for _ in range(BURST)]
    good = [command("run quick", f"{stack.urls.url}/ok/{key}") for key in keys]
    assert await burst(stack, [body for body, _ in good]) == [200] * BURST
    assert not stack.urls.release.is_set() and stack.urls.held, "acked while the hanging answers were still held"

    # the failed answers fell back to chat.postEphemeral; once Slack's hang ends, everyone is told
    wait_until(lambda: len(stack.urls.failed) == 10, 60, "the failing response_url tried")
    wait_until(lambda: all(ephemerals(stack, slack_run_id("quick", t)) == 1 for _, t in failing), 60,
               "failed answers sent by chat.postEphemeral instead")
    stack.urls.release.set()
    wait_until(lambda: all(stack.urls.answered.get(key) == 1 for key in keys), 120, "every good command answered")


# ---- the worker child --------------------------------------------------------------------------


def worker_pids(stack: DevSlack) -> set[int]:
    return {pid for pid in descendants(stack.dev.pid)
            if re.search(r"playbook-bot worker$|bot\.cli worker$", cmdline(pid)) and pid_alive(pid)}


async def test_killed_worker_child_is_restarted_and_finishes_its_run(stack: DevSlack, client: Client) -> None:
    announced = re.search(r"Worker\s+pid (\d+)", stack.dev.stderr())
    assert announced, stack.dev
    [first] = worker_pids(stack)
    started = cli(["run", "nap", "--json"], stack.env)
    assert started.code == 0, str(started)
    handle = client.get_workflow_handle(started.json()["run_id"], result_type=RunStatus)
    deadline = time.monotonic() + 30
    while (await handle.query(PlaybookRun.status)).step("nap").state != "running":
        assert time.monotonic() < deadline, "the nap never started"
        await asyncio.sleep(0.1)

    os.kill(first, signal.SIGKILL)
    replaced = wait_until(lambda: (pids := worker_pids(stack) - {first}) and pids, 60, "a new worker child")
    assert not pid_alive(first)
    final = await asyncio.wait_for(handle.result(), 120)
    assert final.state == "completed"
    assert [(s.id, s.state) for s in final.steps] == [("nap", "succeeded"), ("after", "succeeded")]
    assert "dev worker exited; restarting it" in stack.dev.stderr()
    assert worker_pids(stack) == replaced
