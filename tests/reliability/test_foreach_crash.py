"""A worker SIGKILLed in the middle of a foreach item: a new worker finishes the run, and each
item's side effects reach the API once (the one cut off mid-flight again, with the same
Idempotency-Key, which carries the item's address)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.reliability.sink import Sink, sink  # noqa: F401  (fixture)
from tests.reliability.test_worker_crash import Rig, result_while_alive, rig, start, wait_for  # noqa: F401

pytestmark = pytest.mark.slow

ROLL = """\
name: kill-roll
summary: A rolling change over three hosts; the worker dies while an item's slow call is in flight
owner: sre-oncall
vars: {{hosts: [h0, h1, h2]}}
steps:
  - id: roll
    foreach: "{{{{ vars.hosts }}}}"
    as: host
    steps:
      - id: drain
        action: http.request
        with: {{method: POST, url: "{sink}/drain/{{{{ host }}}}"}}
      - id: restart
        action: http.request
        with: {{method: POST, url: "{sink}/slow/{{{{ host }}}}"}}
"""


# `make chaos` (25 s; `make test` must stay under 10 minutes on 2 cores): test_worker_crash keeps a
# SIGKILLed worker mid step in `make test`.
@pytest.mark.chaos
async def test_worker_sigkilled_mid_item_each_items_side_effects_once(rig: Rig, sink: Sink) -> None:  # noqa: F811
    handle = await start(rig, ROLL.format(sink=sink.url), "kill-roll")
    first = rig.worker("worker-1")
    deadline = time.monotonic() + 60
    while not any(hit.path == "/slow/h1" for hit in sink.hits):  # item 1's slow call is in flight
        assert time.monotonic() < deadline, f"item 1 never reached its slow call: {[h.path for h in sink.hits]}"
        assert first.proc.poll() is None, str(first)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert first.kill() == -9
    killed_at = time.monotonic()

    second = rig.worker("worker-2")
    final = await result_while_alive(handle, [second], timeout=120)

    assert final.state == "completed", final.model_dump_json(indent=2)
    assert [item.state for item in final.step("roll").items or []] == ["succeeded"] * 3
    key = f"{handle.id}:roll"
    expected = Counter({f"{key}[{i}].drain": 1 for i in range(3)})
    expected.update({f"{key}[0].restart": 1, f"{key}[1].restart": 2, f"{key}[2].restart": 1})
    assert sink.keys() == expected, "only the call cut off by the kill was sent again, with the same key"
    assert [hit.path for hit in sink.hits] == ["/drain/h0", "/slow/h0", "/drain/h1", "/slow/h1", "/slow/h1",
                                               "/drain/h2", "/slow/h2"]
    assert sink.hits[4].at > killed_at
    assert final.step("roll[1].restart").attempts == 2
