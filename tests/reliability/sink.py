"""A local HTTP API for side effects: it answers 200 and remembers every request with its
Idempotency-Key, so "each side effect exactly once" is counted at the receiving end, not assumed.
Paths under /slow take SLOW_SECONDS to answer (a caller may die meanwhile)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from tests.http_server import serving

SLOW_SECONDS = 3


@dataclass
class Hit:
    path: str
    key: str | None
    at: float


@dataclass
class Sink:
    """A local HTTP API that answers 200 and remembers every request it saw."""

    url: str
    hits: list[Hit] = field(default_factory=list)

    def keys(self) -> Counter[str | None]:
        return Counter(hit.key for hit in self.hits)


@pytest.fixture
def sink() -> Iterator[Sink]:
    hits: list[Hit] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            with lock:
                hits.append(Hit(self.path, self.headers.get("Idempotency-Key"), time.monotonic()))
            if self.path.startswith("/slow"):
                time.sleep(SLOW_SECONDS)  # an API that takes its time: the caller may die meanwhile
            body = b'{"ok": true}'
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the worker that asked was killed
                pass

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield Sink(url, hits)
