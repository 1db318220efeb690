"""A lock holder's worker is SIGKILLed: the holder finishes on another worker and releases, and the
run queued behind it starts exactly once, after it. Real worker subprocesses, a real dev server,
side effects counted by Idempotency-Key at a local HTTP sink (see test_worker_crash.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.reliability.sink import Sink
from tests.reliability.test_worker_crash import Rig, result_while_alive, rig, start, wait_for  # noqa: F401  (rig: fixture)

pytestmark = pytest.mark.slow

LOCKED = """\
name: locked-crash
summary: Two side effects around a durable timer, one run per target at a time
owner: sre-oncall
concurrency: {{key: "web-frontend", limit: 1, on_busy: queue}}
steps:
  - id: a
    action: http.request
    with: {{method: POST, url: "{sink}/a"}}
  - id: wait
    action: core.sleep
    with: {{duration: 4s}}
  - id: b
    action: http.request
    with: {{method: POST, url: "{sink}/b"}}
"""


async def test_the_queued_run_starts_once_after_a_holder_whose_worker_was_killed(rig: Rig, sink: Sink) -> None:  # noqa: F811
    text = LOCKED.format(sink=sink.url)
    holder = await start(rig, text, "locked-crash")
    first = rig.worker("worker-1")
    await wait_for(holder, lambda s: s.step("wait").state == "running", [first], timeout=60)
    queued = await start(rig, text, "locked-crash")
    status = await wait_for(
        queued, lambda s: s.state == "queued" and (s.waiting_for or {}).get("holder") == holder.id, [first], timeout=60
    )
    assert status.waiting_for and status.waiting_for["key"] == "web-frontend"
    assert first.kill() == -9

    second = rig.worker("worker-2")
    done = await result_while_alive(holder, [second], timeout=120)
    assert done.state == "completed", done.model_dump_json(indent=2)
    after = await result_while_alive(queued, [second], timeout=120)
    assert after.state == "completed", after.model_dump_json(indent=2)

    assert sink.keys() == Counter({f"{holder.id}:a": 1, f"{holder.id}:b": 1, f"{queued.id}:a": 1, f"{queued.id}:b": 1})
    order = [(hit.key or "").rsplit(":", 1)[0].split("/")[0] for hit in sink.hits]  # (each key's run id)
    assert order == [holder.id, holder.id, queued.id, queued.id], "the queued run acted only after the holder ended"
