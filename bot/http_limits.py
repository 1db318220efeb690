"""What uvicorn's httptools protocol lacks at the front door: a bound on a request's head, and a
deadline for a whole request to arrive.

Both matter before any route, token or body limit runs, so to anyone who can reach the port
(`/slack/events` must be reachable from the internet). Measured against `serve` (red team):
- the protocol keeps every header line in a list, and the parser a header's value while it grows,
  with no bound: one unauthenticated connection sent 500 MB of headers in 0.7 s and the process
  grew by 570 MB;
- uvicorn's only timeout (keep-alive) starts after a first response: a client that never finished
  its headers (or its body) held its connection and file descriptor for good, and 1,100 of them
  left a process with the usual 1,024-descriptor limit unable to accept an alert.

So a head past HEAD_MAX bytes is answered 431 and the connection closed, and a request not wholly
received REQUEST_DEADLINE seconds after its first byte (or after the connection opened) is closed.
A request's handler is not timed: the deadline ends once the request has arrived.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger(__name__)

HEAD_MAX = 64 * 1024  # bytes of request line and headers (h11's default bound is 16 KiB)
REQUEST_DEADLINE = 15.0  # seconds for a request to arrive whole (bodies here are at most 1 MiB)
LINGER = 1.0  # seconds a refused connection is read (and dropped) so its client reads the 431
_TOO_LARGE = f"request line and headers exceed {HEAD_MAX} bytes".encode()


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, with HEAD_MAX and REQUEST_DEADLINE (module docstring)."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _Flow(transport, self)  # (before any request: each request's cycle takes this one)
        self._head_bytes = 0  # of the head being received, counted by whole chunks
        self._in_head = True  # a new connection's first bytes are a head
        self._marks = 0  # requests begun, heads and requests ended on this connection
        self._refused = False
        self._left: float | None = None  # of the deadline, while the server has paused reading
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(REQUEST_DEADLINE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._deadline is None:  # a keep-alive connection's next request begins
            self._arm(REQUEST_DEADLINE)
        if self._refused:
            return  # read and dropped until the close: unread input would reset the 431 away
        marks = self._marks
        super().data_received(data)
        # A chunk in which a request began, its head ended or the request ended is not counted
        # (part of it is body, or another request): so at most HEAD_MAX and two chunks of a head
        # are ever held.
        if self._in_head and self._marks == marks and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_MAX:
                self._refuse_head()

    def on_message_begin(self) -> None:
        self._marks += 1
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._marks += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._left = None  # (a pause in this request's last chunk: nothing left to time)
        self._in_head, self._head_bytes = True, 0  # what comes next on this connection is a head
        self._marks += 1
        super().on_message_complete()

    def _refuse_head(self) -> None:
        self._disarm()
        log.warning("request head too large; connection closed", client=_client(self), limit_bytes=HEAD_MAX)
        self._refused = True
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete:  # an earlier request's answer is still to come:
            self.transport.close()  # no 431 in the middle of it
            return
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; "
                             b"charset=utf-8\r\nconnection: close\r\ncontent-length: " + str(len(_TOO_LARGE)).encode()
                             + b"\r\n\r\n" + _TOO_LARGE)
        if self.transport.can_write_eof():  # the answer goes out whole; what still comes in is dropped
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.warning("request not received in time; connection closed", client=_client(self),
                        deadline_s=REQUEST_DEADLINE)
            self.transport.close()

    def _paused(self) -> None:
        """The server stopped reading (a body the app has not read yet): no fault of the client's, so
        the deadline stops too, keeping what was left of it."""
        if self._deadline is not None:
            self._left = max(0.0, self._deadline.when() - self.loop.time())
            self._disarm()

    def _resumed(self) -> None:
        """Reading again: the deadline goes on with what was left of it (a fresh one per pause let a
        client that burst past the high-water mark before each deadline hold on 16 times as long)."""
        if self._left is not None and not self._in_head and not self.transport.is_closing():
            self._arm(self._left)
        self._left = None

    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def _client(protocol: HttpToolsProtocol) -> str | None:
    client = getattr(protocol, "client", None)
    return f"{client[0]}:{client[1]}" if client else None


class _Flow(FlowControl):
    """uvicorn's flow control, telling the protocol when the server pauses and resumes reading, so
    that a request's deadline runs only while the server reads it."""

    def __init__(self, transport: asyncio.Transport, protocol: BoundedHttpTools) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def pause_reading(self) -> None:
        paused = self.read_paused
        super().pause_reading()
        if not paused:
            self._protocol._paused()

    def resume_reading(self) -> None:
        paused = self.read_paused  # (uvicorn resumes on every receive, paused or not)
        super().resume_reading()
        if paused:
            self._protocol._resumed()
