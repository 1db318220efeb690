"""bot/streams.py: a child's output read by lines, whatever it writes."""

from __future__ import annotations

import asyncio
import sys

from bot.devstack import WorkerProcess
from bot.streams import CUT, LINE_MAX, lines


async def read_all(data: bytes, limit: int = 8) -> list[bytes]:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    return [line async for line in lines(stream, limit)]


async def test_lines_are_cut_not_refused() -> None:
    assert await read_all(b"short\n123456789012\nlast") == [b"short", b"12345678" + CUT, b"last"]
    assert await read_all(b"x" * 100 + b"\nafter\n") == [b"xxxxxxxx" + CUT, b"after"]
    assert await read_all(b"\n\n") == [b"", b""]


async def test_a_worker_line_past_readlines_limit_does_not_stop_devs_copying() -> None:
    """Red team: readline's 64 KiB limit ended the supervisor's copying task on a long log line
    (a 66 KB param through core.log); nothing read the pipe, and the worker blocked in its next
    write, with every run. Here the child writes a 200 KB line, then 2 MB more: all of it is read."""
    script = ("import sys\n"
              "sys.stdout.write('A' * 200_000 + '\\n')\n"
              "for i in range(20_000): sys.stdout.write('line %d %s\\n' % (i, 'b' * 90))\n"
              "sys.stdout.write('done\\n'); sys.stdout.flush()\n")
    seen: list[str] = []
    worker = WorkerProcess([sys.executable, "-c", script], out=seen.append, backoff=(60.0,))
    await worker.start()
    try:
        assert worker.process is not None
        assert await asyncio.wait_for(worker.process.wait(), 30) == 0  # it was never blocked writing
        for _ in range(100):
            if seen and seen[-1] == "worker| done":
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
    assert seen[0] == "worker| " + "A" * LINE_MAX + CUT.decode()
    assert seen[-1] == "worker| done" and len(seen) == 20_002
