"""A threaded HTTP server on a free local port, for the fakes tests talk to over real HTTP."""

from __future__ import annotations

import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's listen backlog is 5: a burst of 100 connections (Bolt's auth.test from each
    # first request, a burst's answers) overflowed it, and the kernel's SYN-ACK retries held them
    # back 1, 3, 7, 15, 31 s. The services these fakes stand for take a burst.
    request_queue_size = 1024

    def handle_error(self, request: object, client_address: object) -> None:
        """A client dropping a kept-alive connection (a pooled client closing, a process exiting)
        is not an error of the fake's: only the rest is printed."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 in a daemon thread (over TLS with `tls`); yields the base URL,
    stops the server after."""
    server = _Server(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
