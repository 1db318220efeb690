"""The policy engine's reload fails closed whatever reading the files raises (review)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from bot.policy.embedded import EmbeddedEngine
from tests.policy.conftest import BASE_INPUT
from tests.security.test_reload_drift import FREEZE, policies_copy  # noqa: F401


async def test_a_signature_that_raises_fails_closed_and_stays_closed(policies_copy: Path) -> None:  # noqa: F811
    """tree_signature is outside _reload's try: a stat that raises anything but FileNotFoundError
    (a symlink loop: ELOOP; a directory without x: EACCES) escapes, _next_check has already moved
    on, and the old policy answers every other question until the next check (and ready() is True)."""
    data_path = policies_copy / "playbook" / "data.json"
    async with EmbeddedEngine(policies_copy, reload_interval=30) as engine:
        assert (await engine.decide(BASE_INPUT)).allow
        engine.recheck()
        data = json.loads(data_path.read_text())
        data["freezes"] = [FREEZE]
        data_path.write_text(json.dumps(data))
        os.symlink("loop.rego", policies_copy / "loop.rego")  # ELOOP on stat
        first = await engine.decide({**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": "run-2"}})
        second = await engine.decide({**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": "run-3"}})
        ready = await engine.ready()
    assert not first.allow
    assert not second.allow, "the old policy (no freeze) answered again after the failed read"
    assert ready is False
