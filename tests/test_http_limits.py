"""The front door below the application (bot/http_limits.py), as `serve` serves it (bot.lifecycle.Http:
uvicorn over a real socket): a head too large is refused before it is held, a request that never
arrives whole does not hold its connection. Red team: before, 500 MB of headers from one
unauthenticated connection were buffered, and a connection that sent half a head stayed open for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot import http_limits
from bot.devstack import free_port
from bot.lifecycle import Http
from bot.readiness import Readiness
from bot.server import create_app
from bot.settings import Settings

DEADLINE = 0.5  # REQUEST_DEADLINE for these tests (15 s in the door)


@pytest_asyncio.fixture
async def door(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(http_limits, "REQUEST_DEADLINE", DEADLINE)
    port = free_port()
    http = Http(Settings(data_dir=tmp_path, http_host="127.0.0.1", http_port=port), create_app(Readiness()))
    await http.start()
    try:
        yield port
    finally:
        await http.stop()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def answer(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(300), 10)


async def flood(writer: asyncio.StreamWriter, chunk: bytes, total: int) -> int:
    """Send `chunk` until `total` bytes went, or the door hung up; the bytes sent."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    return sent


async def test_a_normal_request_and_a_large_body_in_one_chunk_pass(door: int) -> None:
    async with connection(door) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bot\r\nX-Pad: " + b"a" * 30_000 + b"\r\n\r\n")
        assert (await answer(reader)).startswith(b"HTTP/1.1 200")
    body = b"x" * 200_000  # arrives with its head in one write: its bytes are body, not head
    async with connection(door) as (reader, writer):
        writer.write(b"POST /healthz HTTP/1.1\r\nHost: bot\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert (await answer(reader)).startswith(b"HTTP/1.1 405")  # the app's answer, not the door's 431


@pytest.mark.parametrize("shape", ["many lines", "one endless line"])
async def test_a_head_past_the_bound_is_refused_431_and_not_held(door: int, shape: str) -> None:
    async with connection(door) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bot\r\n" + (b"X-Pad: " if shape == "one endless line" else b""))
        line = b"a" * 1000 if shape == "one endless line" else b"X-Pad: " + b"a" * 1000 + b"\r\n"
        await flood(writer, line * 64, 1024 * 1024)  # (unbounded before: it read on, waiting for the end)
        got = await answer(reader)
    assert got.startswith(b"HTTP/1.1 431"), got


async def test_a_request_that_never_arrives_whole_loses_its_connection(door: int) -> None:
    async with connection(door) as (partial, writer), connection(door) as (idle, _), \
            connection(door) as (slow_body, body_writer):
        writer.write(b"POST /alertmanager HTTP/1.1\r\nHost: bot\r\nX-Slow: ")  # and nothing more
        body_writer.write(b"POST /alertmanager HTTP/1.1\r\nHost: bot\r\nContent-Length: 100\r\n\r\nabc")
        for stream in (partial, idle):
            assert await asyncio.wait_for(stream.read(), DEADLINE + 5) == b""  # closed by the door
        await asyncio.wait_for(slow_body.read(), DEADLINE + 5)  # (the app may answer before the body: then closed)


async def test_a_keep_alive_connection_serves_request_after_request(door: int) -> None:
    """The deadline is per request: a connection used for longer than it is not cut."""
    async with connection(door) as (reader, writer):
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bot\r\n\r\n")
            assert (await answer(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(DEADLINE * 0.8)


async def _echo_length(scope, receive, send) -> None:  # noqa: ANN001  (ASGI)
    """Reads the whole body, then answers with its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(str(size)))]})
    await send({"type": "http.response.body", "body": str(size).encode()})


@pytest.mark.parametrize("expect_continue", [False, True])
async def test_a_large_body_in_many_chunks_is_the_apps_to_answer(tmp_path: Path, expect_continue: bool) -> None:
    """Review (CI): the chunk that ended a body was counted as the next request's head, and a body
    that ended in a chunk past 64 KiB drew a 431 over the app's own answer."""
    port = free_port()
    http = Http(Settings(data_dir=tmp_path, http_host="127.0.0.1", http_port=port), _echo_length)
    await http.start()
    try:
        async with connection(port) as (reader, writer):
            body = b"y" * 300_000
            head = b"POST /echo HTTP/1.1\r\nHost: bot\r\nContent-Length: %d\r\n" % len(body)
            writer.write(head + (b"Expect: 100-continue\r\n" if expect_continue else b"") + b"\r\n")
            if expect_continue:
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
            for i in range(0, len(body), 100_000):
                writer.write(body[i:i + 100_000])
                await writer.drain()
                await asyncio.sleep(0.02)
            got = await answer(reader)
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"300000"), got
    finally:
        await http.stop()
