"""Reading a child process's output by lines, whatever it writes.

`StreamReader.readline` raises once a line passes its 64 KiB limit. Where a supervisor copies a
child's output (dev's worker, the policy child's stderr), that ended the copying task quietly:
nothing read the pipe again, and the child blocked in its next write (red team: a 66 KB param
logged by `core.log` froze `dev`'s worker, and every run with it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

LINE_MAX = 16 * 1024  # bytes of a line kept; the rest of a longer one is dropped
CUT = b" [...cut]"
_READ = 1 << 16


async def lines(stream: asyncio.StreamReader, limit: int = LINE_MAX) -> AsyncIterator[bytes]:
    """Each line of `stream` (without its newline) until EOF, a longer one cut to `limit` bytes
    and marked CUT. Never raises for what the child writes."""
    held = bytearray()
    cut = False  # the line being read was given out cut already: the rest of it is dropped
    while chunk := await stream.read(_READ):
        held += chunk
        while (end := held.find(b"\n")) >= 0:
            line = bytes(held[:end])
            del held[: end + 1]
            if cut:
                cut = False
                continue
            yield line if len(line) <= limit else line[:limit] + CUT
        if len(held) > limit:
            if not cut:
                yield bytes(held[:limit]) + CUT
                cut = True
            held.clear()
    if held and not cut:
        yield bytes(held)
