"""A local HTTP API for side effects: it answers 200 and remembers every request with its
Idempotency-Key, so "each side effect exactly once" is counted at the receiving end, not assumed.
Paths under /slow take SLOW_SECONDS to answer (a caller may die meanwhile). `on_hit` runs before a
request is answered: the exact moment for a test to change the world (inject a fault) between steps."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
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
    on_hit: Callable[[Hit], None] | None = None  # called in the server's thread, before the answer

    def keys(self) -> Counter[str | None]:
        """The run and step each request's key names (`<run id>:<step id>`): an engine-v9 key's
        `/<first execution>` left out (raw_keys has it)."""
        return Counter(_EXECUTION.sub(":", hit.key) if hit.key else hit.key for hit in self.hits)

    def raw_keys(self) -> Counter[str | None]:
        return Counter(hit.key for hit in self.hits)


_EXECUTION = re.compile(r"/[0-9a-f]{32}:")


@pytest.fixture
def sink() -> Iterator[Sink]:
    hits: list[Hit] = []
    lock = threading.Lock()
    made: list[Sink] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            hit = Hit(self.path, self.headers.get("Idempotency-Key"), time.monotonic())
            with lock:
                hits.append(hit)
            react = made[0].on_hit if made else None
            if react is not None:
                react(hit)
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
        made.append(Sink(url, hits))
        yield made[0]
