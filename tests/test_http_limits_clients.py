"""bot/http_limits.py against legitimate clients it must never cut: large bodies, keep-alive, a handler
that reads its body late (review of the bounds: the first two drew a 431, the third a disconnect)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from bot import http_limits
from bot.devstack import free_port
from bot.lifecycle import Http
from bot.readiness import Readiness
from bot.server import create_app, read_limited
from bot.settings import Settings
from tests.test_http_limits import connection

DEADLINE = 0.5


@pytest_asyncio.fixture
async def door(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(http_limits, "REQUEST_DEADLINE", DEADLINE)
    router = APIRouter()

    @router.post("/echo")
    async def echo(request: Request) -> PlainTextResponse:
        body = await read_limited(request, 1 << 20)
        return PlainTextResponse(f"got {len(body or b'')}")

    @router.post("/work")
    async def work(request: Request) -> PlainTextResponse:
        body = await read_limited(request, 1 << 20)
        await asyncio.sleep(DEADLINE * 3)  # the handler's own work: not timed (bot/http_limits.py)
        return PlainTextResponse(f"got {len(body or b'')}")

    @router.post("/slow")
    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.sleep(DEADLINE * 3)  # e.g. waits on Temporal / the audit trail before reading
        body = await read_limited(request, 1 << 20)
        return PlainTextResponse(f"got {len(body or b'')}")

    port = free_port()
    http = Http(Settings(data_dir=tmp_path, http_host="127.0.0.1", http_port=port),
                create_app(Readiness(), [router]))
    await http.start()
    try:
        yield port
    finally:
        await http.stop()


async def posted(port: int, path: str, size: int) -> bytes:
    """The answer to one POST of `size` bytes to `path`, head and body in one write."""
    body = b"x" * size
    async with connection(port) as (reader, writer):
        writer.write(b"POST %s HTTP/1.1\r\nHost: bot\r\nContent-Length: %d\r\n\r\n" % (path.encode(), size) + body)
        await writer.drain()
        return await response(reader)


async def response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def test_keep_alive_after_a_large_body_sent_after_its_head(door: int) -> None:
    """The chunk that ends a >64 KiB body is counted as the next head: 431 on a legit connection."""
    body = b"x" * 300_000
    async with connection(door) as (reader, writer):
        for _ in range(2):
            writer.write(b"POST /echo HTTP/1.1\r\nHost: bot\r\nContent-Length: %d\r\n\r\n" % len(body))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(body)
            await writer.drain()
            got = await response(reader)
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"got 300000"), got


async def test_a_body_the_server_does_not_read_yet_is_not_the_clients_fault(door: int) -> None:
    """Reading pauses at 64 KiB of unread body; the deadline goes on running while the server itself
    does not read (a handler that awaits before reading, or a pipelined request)."""
    got = await posted(door, "/slow", 200_000)
    assert got.endswith(b"got 200000"), got


@pytest.mark.parametrize("size", [100_000, 300_000, 900_000])
async def test_one_write_of_a_large_legit_request(door: int, size: int) -> None:
    got = await posted(door, "/echo", size)
    assert got.endswith(b"got %d" % size), got[:60]


async def test_bursts_past_the_high_water_mark_do_not_restart_the_deadline(door: int) -> None:
    """Every burst of > 64 KiB pauses reading (disarms the deadline); the app's next receive()
    resumes it and _resumed arms a *fresh* REQUEST_DEADLINE. A client that trickles, then bursts
    65 KiB just before each deadline, holds its connection up to 1 MiB / 65 KiB = 16 deadlines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", door)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
                 b"content-length: 1000000\r\n\r\n")
    await writer.drain()
    started, sent = time.monotonic(), 0
    try:
        while time.monotonic() - started < DEADLINE * 6 and sent < 900_000:
            await asyncio.sleep(DEADLINE * 0.7)
            writer.write(b"y" * 70_000)
            await writer.drain()
            sent += 70_000
        try:
            data = await asyncio.wait_for(reader.read(100), 0.2)
            alive = data != b""
        except asyncio.TimeoutError:
            alive = True  # open, nothing said: still reading our request
    except ConnectionError:
        alive = False
    finally:
        writer.close()
    held = time.monotonic() - started
    assert not alive, f"a request still arriving after {held:.1f}s ({sent} bytes), its deadline {DEADLINE}s"


async def test_a_handler_that_works_after_reading_a_large_body_is_not_cut(door: int) -> None:
    """Review: a deadline saved when reading paused in the request's last chunk was re-armed when the
    handler read the body, and cut the connection while the handler worked."""
    got = await posted(door, "/work", 100_000)
    assert got.endswith(b"got 100000"), got
