"""Red team: reloads and version drift between what was asked, approved and run (playbook and
policy files edited, replaced or half-written while the bot serves them)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from bot.playbook.reload import LiveCatalog
from bot.policy.embedded import EmbeddedEngine
from tests.playbook.test_reload import echo, live_over, message, write
from tests.policy.conftest import BASE_INPUT, POLICIES

@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests write a file and look at once: the settle time (a changed file left alone 1 s
    before it is read) is the half-written file's test's alone."""
    monkeypatch.setattr(LiveCatalog, "SETTLE", 0.0)


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


# -- playbooks -------------------------------------------------------------------------------


def test_one_deeply_nested_file_does_not_freeze_every_other_playbooks_reload(tmp_path: Path) -> None:
    """A playbook author's 2 KB file of nested brackets raised RecursionError out of the loader;
    the reload then never completed, so every other edit (a fix, a removal) was never served, and
    /readyz (catalog errors) said nothing."""
    live = live_over(tmp_path, **{"echo.yaml": echo("v1"), "other.yaml": echo("o1", name="other")})
    write(live.directory, "deep.yaml", "name: deep\nvars:\n  x: " + "[" * 1000 + "]" * 1000 + "\nsteps: []\n")
    write(live.directory, "other.yaml", echo("o2-fixed", name="other"))
    (live.directory / "echo.yaml").unlink()  # withdrawn: it must stop being admitted
    for _ in range(3):  # the watcher polls again and again
        try:
            live.check()
        except RecursionError:
            pass
    assert message(live(), "other").startswith("o2-fixed"), "the fix beside it was never served"
    assert "echo" not in live(), "the withdrawn playbook is still served"
    assert live.errors is not None and "deep.yaml" in live.errors


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """Nine lines of anchors (under 600 bytes) took 15 s and 500 MB per level-7 load (x10 per level)
    in every front door and worker reloading the directory."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * 10) + "]")
    body = "\n".join("    " + line for line in lines)
    text = f"name: bomb\nowner: sre-oncall\nvars:\n{body}\nsteps:\n  - {{id: one, action: core.log, with: {{message: hi}}}}\n"
    assert len(text) < 600
    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    write(live.directory, "bomb.yaml", text)
    started = time.monotonic()
    live.check()
    assert time.monotonic() - started < 2.0
    assert "bomb" not in live() and live.errors is not None and "bomb.yaml" in live.errors


def test_a_second_file_claiming_a_served_name_does_not_take_it_over(tmp_path: Path) -> None:
    """`cp restart-service.yaml restart-service-copy.yaml` to try an edit: '-' sorts before '.', so
    the copy loads first, the established file is the one 'already used', and the copy's steps
    become what every new run of that name runs (/readyz shows an error, nothing refuses)."""
    live = live_over(tmp_path, **{"echo.yaml": echo("prod")})
    write(live.directory, "echo-copy.yaml", echo("experiment"))
    live.check()
    assert live.errors is not None and "already used" in live.errors
    assert message(live()).startswith("prod"), "the name moved to the newcomer"


GATED = """name: echo
owner: sre-oncall
params: {instance: {type: string}}
steps:
  - id: restart
    action: http.request
    with: {method: POST, url: "https://deploy.internal/restart"}
    impact: high
"""


def test_a_half_written_file_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that is not atomic (scp, rsync --inplace, `cat >`, git checkout creating the file,
    an editor writing a hard-linked file in place) leaves a prefix on disk for a moment. A poll that
    lands then loads the prefix if it parses: here the restart step without its `impact: high`,
    i.e. with no policy gate; a run started meanwhile keeps that snapshot for good, and the worker
    admits the prefix version for RETIRED_GRACE (60 s) after the write completes."""
    live = live_over(tmp_path, **{"echo.yaml": GATED})
    monkeypatch.setattr(LiveCatalog, "SETTLE", 1.0)  # (as served: a changed file is read once left alone 1 s)
    assert live().get("echo").playbook.steps[0].impact == "high"
    path = live.directory / "echo.yaml"
    full = GATED.replace("https://deploy.internal/restart", "https://deploy.internal/v2/restart")
    with open(path, "w") as file:  # in place, as scp does: the prefix is on disk, then the rest
        file.write(full[: full.index("    impact: high")])
        file.flush()
        live.check()  # the watcher's poll lands mid-write
        file.write(full[full.index("    impact: high"):])
    served = live().get("echo").playbook.steps[0]
    assert served.impact == "high", "a prefix of the file was served: the high-impact step lost its gate"
    time.sleep(1.1)
    live.check()  # the next poll, the write long done
    assert live().get("echo").playbook.steps[0].with_["url"] == "https://deploy.internal/v2/restart"
