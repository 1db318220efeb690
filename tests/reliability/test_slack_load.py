"""Slash commands under load and under Slack's own retries, on real HTTP and the real Temporal dev
server, with the front door's Temporal connection slowed by a TCP proxy.

Slack waits 3 s for an ack and then retries the same command (same trigger_id). Whatever the
latency, every command must be acked in time, answered exactly once, and start exactly one run.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bot.audit.events import EventKind
from bot.slack.commands import ACK_BUDGET, slack_run_id
from tests.slack.support import CHANNEL, FORM, Stack, eventually, finished, returns, sign, text_of

SLACK_ACK_LIMIT = 3.0  # seconds Slack waits before it gives up and retries


class LatencyProxy:
    """A TCP proxy that delays every chunk, each way, by a random `delay` (seconds, lo..hi).

    Latency, not bandwidth: chunks keep their order and are not delayed behind one another, so a
    multiplexed gRPC connection sees a slow network rather than a stalled one. `delay` may be
    changed while connections are open."""

    def __init__(self, target: str, delay: tuple[float, float], seed: int = 7) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.delay = delay
        self.rng = random.Random(seed)
        self.chunks = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers += [client_writer, server_writer]
        for reader, writer in [(client_reader, server_writer), (server_reader, client_writer)]:
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while True:
                chunk = await reader.read(65536)
                self.chunks += 1
                last_due = max(last_due, time.monotonic() + self.rng.uniform(*self.delay))
                await queue.put((last_due, chunk))
                if not chunk:
                    break
            await sender
        except (ConnectionError, OSError):
            writer.close()
        finally:
            sender.cancel()


@asynccontextmanager
async def slowed_front_door(
    dev_env: Any, make_slack_stack: Callable[..., AbstractAsyncContextManager[Stack]], delay: tuple[float, float]
) -> AsyncIterator[tuple[Stack, LatencyProxy]]:
    """The stack whose front door reaches Temporal through a LatencyProxy; the worker does not."""
    proxy = LatencyProxy(dev_env.client.service_client.config.target_host, delay=(0.0, 0.0))
    address = await proxy.start()
    try:
        slow = await Client.connect(address, namespace=dev_env.client.namespace, data_converter=pydantic_data_converter)
        proxy.delay = delay
        async with make_slack_stack(front_door_client=slow) as stack:
            yield stack, proxy
    finally:
        await proxy.close()


# Slack is another machine: the load comes from a child process, so the client's own work does
# not slow the event loop the front door and the worker share in these tests. It connects first,
# then sends every request at once and times each from its last byte sent to the status line.
_CLIENT = r"""
import asyncio, json, sys, time
from urllib.parse import urlsplit

async def main():
    spec = json.load(sys.stdin)
    url = urlsplit(spec["url"])
    streams = [await asyncio.open_connection(url.hostname, url.port) for _ in spec["requests"]]

    async def one(request, reader, writer):
        body = request["body"].encode()
        head = [f"POST {url.path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close",
                f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in request["headers"].items()]
        started = time.monotonic()
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        took = time.monotonic() - started
        writer.close()
        return status, took

    json.dump(await asyncio.gather(*(one(r, *s) for r, s in zip(spec["requests"], streams))), sys.stdout)

asyncio.run(main())
"""


async def fire(stack: Stack, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, float]]:
    """POST every (body, signed headers) at once from a child process: [(status, seconds to the ack)]."""
    spec = {"url": f"{stack.url}/slack/events",
            "requests": [{"body": body, "headers": {**FORM, **headers}} for body, headers in requests]}
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", _CLIENT, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(child.communicate(json.dumps(spec).encode()), 120)
    assert child.returncode == 0, "the load client failed"
    return [(status, took) for status, took in json.loads(out)]


def status_posts(stack: Stack, at_least: int) -> list[Any] | None:
    """The runs' status messages (top-level posts), once there are `at_least` of them."""
    posts = [c for c in stack.fake.calls_to("chat.postMessage") if "thread_ts" not in c.params]
    return posts if len(posts) >= at_least else None


def _slack_commands(stack: Stack, outcome: str = "started") -> list[Any]:
    return [e for e in stack.audit.events() if e.kind == EventKind.slack_command and e.details["outcome"] == outcome]


async def burst(stack: Stack, proxy: LatencyProxy, n: int) -> None:
    """n concurrent `/playbook run`: each acked in time, answered once, one run each, none lost."""
    triggers = [f"{int(time.time())}.{i}.{uuid.uuid4().hex[:20]}" for i in range(n)]
    commands = [stack.command(f"run quick n={i}", trigger_id=t) for i, t in enumerate(triggers)]
    chunks_before = proxy.chunks
    acks = await fire(stack, [(body, sign(body)) for body, _ in commands])
    assert proxy.chunks > chunks_before, "the front door's calls went through the proxy"
    slow = [(i, status, round(took, 2)) for i, (status, took) in enumerate(acks) if status != 200 or took >= SLACK_ACK_LIMIT]
    assert not slow, f"acks not 200 within {SLACK_ACK_LIMIT}s: {slow}"
    print(f"{n} commands, proxy delay {proxy.delay}: slowest ack {max(t for _, t in acks):.2f}s, "
          f"median {sorted(t for _, t in acks)[n // 2]:.2f}s")

    run_ids = [slack_run_id("quick", t) for t in triggers]
    for (_, key), run_id in zip(commands, run_ids):
        answer = text_of(await stack.answers(key, timeout=30))
        assert "Started" in answer and run_id in answer, answer
    for run_id in run_ids:
        status = await eventually(lambda run_id=run_id: finished(stack, run_id), timeout=60, what=f"{run_id} finished")
        assert status.state == "completed"
    await asyncio.sleep(0.5)  # a late second answer or run would show now
    answered = {key: len(stack.responses.get(key, [])) for _, key in commands}
    assert set(answered.values()) == {1}, f"answers per command: {Counter(answered.values())}"
    for run_id in run_ids:
        assert len(await stack.runs(f'WorkflowId = "{run_id}"')) == 1, run_id
    on_queue = await stack.runs(f'TaskQueue = "{stack.task_queue}"')
    assert sorted(w.id for w in on_queue) == sorted(run_ids), "no run lost, none extra"
    recorded = Counter(e.details["trigger_id"] for e in _slack_commands(stack))
    assert recorded == Counter(triggers), "one slack_command 'started' event per command"
    started = Counter(e.run_id for e in stack.audit.events() if e.kind == EventKind.run_started)
    assert started == Counter(run_ids)
    statuses = await eventually(lambda: returns(status_posts(stack, n)), what="a status message per run")
    assert Counter(c.params["channel"] for c in statuses) == {CHANNEL: n}, "one status message per run"


# ---- Slack's retries ---------------------------------------------------------------------------


async def retried(stack: Stack, n: int) -> None:
    """n commands, each delivered four times at once (the original and retries 1..3)."""
    triggers = [f"{int(time.time())}.{i}.{uuid.uuid4().hex[:20]}" for i in range(n)]
    commands = [stack.command(f"run quick n={i}", trigger_id=t) for i, t in enumerate(triggers)]
    deliveries = []
    for body, _ in commands:
        deliveries.append((body, sign(body)))
        for attempt in (1, 2, 3):
            deliveries.append((body, {**sign(body), "X-Slack-Retry-Num": str(attempt),
                                      "X-Slack-Retry-Reason": "http_timeout"}))
    random.Random(n).shuffle(deliveries)
    acks = await fire(stack, deliveries)
    late = [(i, status, round(took, 2)) for i, (status, took) in enumerate(acks) if status != 200 or took >= SLACK_ACK_LIMIT]
    assert not late, f"acks not 200 within {SLACK_ACK_LIMIT}s: {late}"

    run_ids = [slack_run_id("quick", t) for t in triggers]
    for (_, key), run_id in zip(commands, run_ids):
        answers = await stack.answers(key, n=4)
        assert all(run_id in a["text"] and a["response_type"] == "ephemeral" for a in answers), answers
        await eventually(lambda run_id=run_id: finished(stack, run_id), what=f"{run_id} finished")
    await asyncio.sleep(0.5)
    for (_, key), run_id in zip(commands, run_ids):
        assert len(stack.responses[key]) == 4, "each delivery answered once"
        runs = await stack.runs(f'WorkflowId = "{run_id}"')
        assert len(runs) == 1, f"{run_id}: {len(runs)} executions"
    assert len(await stack.runs(f'TaskQueue = "{stack.task_queue}"')) == n
    recorded = Counter(e.details["trigger_id"] for e in _slack_commands(stack))
    assert recorded == Counter(triggers), "exactly one slack_command 'started' event per trigger"
    events = stack.audit.events()
    assert Counter(e.run_id for e in events if e.kind == EventKind.run_started) == Counter(run_ids)
    assert Counter(e.run_id for e in events if e.kind == EventKind.step_started) == Counter(run_ids), "each step ran once"


async def test_slack_retries_sent_concurrently_start_one_run(slack: Stack) -> None:
    await retried(slack, 1)


@pytest.mark.chaos
async def test_slack_retries_of_many_commands_start_one_run_each(slack: Stack) -> None:
    await retried(slack, 25)


# ---- ack under a slow Temporal -----------------------------------------------------------------


async def test_acks_in_time_with_temporal_slowed(dev_env: Any, make_slack_stack: Any) -> None:
    async with slowed_front_door(dev_env, make_slack_stack, delay=(0.15, 0.4)) as (stack, proxy):
        await burst(stack, proxy, 20)


@pytest.mark.chaos
async def test_acks_in_time_for_a_storm_with_temporal_slowed(dev_env: Any, make_slack_stack: Any) -> None:
    async with slowed_front_door(dev_env, make_slack_stack, delay=(0.15, 0.4)) as (stack, proxy):
        await burst(stack, proxy, 100)


async def past_the_budget(dev_env: Any, make_slack_stack: Any, n: int) -> None:
    """A start round trip longer than Slack's 3 s (so past ACK_BUDGET too): acked at the budget
    anyway, the run still starts exactly once, and the command is answered once it has."""
    delay = (1.5, 1.6)  # each way: a round trip of 3 s or more
    async with slowed_front_door(dev_env, make_slack_stack, delay=delay) as (stack, proxy):
        triggers = [f"{int(time.time())}.{i}.{uuid.uuid4().hex[:20]}" for i in range(n)]
        commands = [stack.command(f"run quick n={i}", trigger_id=t) for i, t in enumerate(triggers)]
        sent = time.monotonic()
        acks = await fire(stack, [(body, sign(body)) for body, _ in commands])
        late = [(i, status, round(took, 2)) for i, (status, took) in enumerate(acks)
                if status != 200 or took >= SLACK_ACK_LIMIT]
        assert not late, f"acks not 200 within {SLACK_ACK_LIMIT}s: {late}"
        assert all(took >= ACK_BUDGET * 0.9 for _, took in acks), f"the start did not outlast the budget: {acks}"
        print(f"{n} commands past the budget: acks {min(t for _, t in acks):.2f}..{max(t for _, t in acks):.2f}s")
        for (_, key), trigger in zip(commands, triggers):
            answers = await stack.answers(key, timeout=30)
            assert "Started" in text_of(answers) and slack_run_id("quick", trigger) in text_of(answers)
        assert time.monotonic() - sent > SLACK_ACK_LIMIT, "answered once the slow start finished, after the ack"
        for trigger in triggers:
            run_id = slack_run_id("quick", trigger)
            status = await eventually(lambda run_id=run_id: finished(stack, run_id), timeout=60, what="finished")
            assert status.state == "completed"
        await asyncio.sleep(1.0)
        assert all(len(stack.responses[key]) == 1 for _, key in commands), "answered once"
        assert sorted(w.id for w in await stack.runs(f'TaskQueue = "{stack.task_queue}"')) == sorted(
            slack_run_id("quick", t) for t in triggers
        )
        assert Counter(e.details["trigger_id"] for e in _slack_commands(stack)) == Counter(triggers)


async def test_ack_in_time_when_temporal_is_slower_than_the_budget(dev_env: Any, make_slack_stack: Any) -> None:
    await past_the_budget(dev_env, make_slack_stack, 3)


@pytest.mark.chaos
async def test_many_acks_in_time_when_temporal_is_slower_than_the_budget(dev_env: Any, make_slack_stack: Any) -> None:
    await past_the_budget(dev_env, make_slack_stack, 30)
