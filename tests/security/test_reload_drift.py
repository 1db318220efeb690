"""Red team: reloads and version drift between what was asked, approved and run (playbook and
policy files edited, replaced or half-written while the bot serves them)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from bot.policy.embedded import EmbeddedEngine
from tests.playbook.test_reload import echo, live_over, message, write
from tests.policy.conftest import BASE_INPUT, POLICIES

# -- policies ----------------------------------------------------------------------------------



@pytest.fixture
def policies_copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target

FREEZE = {"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z", "reason": "audit"}


@pytest.mark.parametrize("oddity", [
    pytest.param("[" * 5000 + "]" * 5000, id="nested-5000-deep"),   # RecursionError
    pytest.param("1" * 5000, id="5000-digit-number"),               # ValueError, not JSONDecodeError
])
async def test_a_data_edit_the_reader_chokes_on_fails_closed_and_stays_closed(policies_copy, oddity):
    """An edit that adds a freeze (or drops an approver) together with a value json.loads raises
    something other than JSONDecodeError on: the first question is denied (INTERNAL), then the
    signature is already marked seen and the OLD policy answers again, silently: verdict_hash is
    the old hash (a front door's verdict of the old policy is trusted) and ready() is True."""
    data_path = policies_copy / "playbook" / "data.json"
    async with EmbeddedEngine(policies_copy, reload_interval=0) as engine:
        before = await engine.decide(BASE_INPUT)
        old_hash = engine.policy_hash
        data = json.loads(data_path.read_text())
        data["freezes"] = [FREEZE]
        data_path.write_text(json.dumps(data)[:-1] + ', "generated": ' + oddity + "}")
        first = await engine.decide(BASE_INPUT)
        second = await engine.decide({**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": "run-2"}})
        ready, verdict = await engine.ready(), engine.verdict_hash
    assert before.allow
    assert not first.allow
    assert not second.allow, f"the replaced policy answered again: {second}"
    assert verdict != old_hash and ready is False


async def test_a_same_size_edit_that_keeps_its_mtime_is_picked_up(policies_copy):
    """tree_signature is (path, mtime_ns, size): a freeze moved onto today by an edit of the same
    length whose mtime is kept (rsync -a/cp -p/tar of a reproducible build, a restored backup, two
    writes in one kernel tick) is never loaded, and no signal forces it (SIGHUP reloads playbooks
    only). A fresh process (a restarted front door) loads the new version: the fleet disagrees."""
    data_path = policies_copy / "playbook" / "data.json"
    data = json.loads(data_path.read_text())
    data["freezes"] = [{**FREEZE, "start": "2025-02-01T00:00:00Z", "end": "2025-02-02T00:00:00Z"}]
    data_path.write_text(json.dumps(data))
    async with EmbeddedEngine(policies_copy, reload_interval=0) as engine:
        before = await engine.decide(BASE_INPUT)
        stat = data_path.stat()
        data["freezes"] = [FREEZE]  # the same length: February -> March
        data_path.write_text(json.dumps(data))
        os.utime(data_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert data_path.stat().st_size == stat.st_size
        after = await engine.decide({**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": "run-2"}})
    async with EmbeddedEngine(policies_copy, reload_interval=0) as fresh:
        restarted = await fresh.decide(BASE_INPUT)
    assert before.allow and not restarted.allow
    assert not after.allow, "the running engine still answers with the replaced data"




async def test_sighup_has_the_policy_read_its_files_again(policies_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit no signature can see (here: the signature held still) is read after `recheck`, which
    SIGHUP calls (bot.lifecycle.watch_catalog): before, SIGHUP reloaded playbooks only."""
    from bot.policy import embedded

    monkeypatch.setattr(embedded, "tree_signature", lambda root: ("held still",))
    data_path = policies_copy / "playbook" / "data.json"
    async with EmbeddedEngine(policies_copy, reload_interval=0) as engine:
        assert (await engine.decide(BASE_INPUT)).allow
        data = json.loads(data_path.read_text())
        data["freezes"] = [FREEZE]
        data_path.write_text(json.dumps(data))
        assert (await engine.decide({**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": "run-2"}})).allow  # unseen
        engine.recheck()
        assert not (await engine.decide({**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": "run-3"}})).allow
