"""The settle wait and the takeover rule of bot/playbook/reload.py against what a review found: a
file dated in the future, a forced reload's wait, a kept holder's call checks, aliases nesting deep."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from bot.playbook.reload import LiveCatalog
from tests.playbook.test_reload import echo, live_over, message, write


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LiveCatalog, "SETTLE", 0.0)


def _future(path: Path, seconds: float) -> None:
    t = time.time() + seconds
    os.utime(path, (t, t))


def test_a_file_with_a_future_mtime_blocks_every_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`touch -d tomorrow x.yaml`, a tarball built on a host whose clock runs ahead, NFS server skew:
    _unsettled reads the newest mtime of ANY file, so every later edit is never served by the poll."""
    live = live_over(tmp_path, **{"echo.yaml": echo("v1"), "other.yaml": echo("o1", name="other")})
    monkeypatch.setattr(LiveCatalog, "SETTLE", 1.0)
    _future(live.directory / "other.yaml", 3600)  # unrelated file, mtime an hour ahead
    write(live.directory, "echo.yaml", echo("v2-fix"))
    time.sleep(1.1)
    live.check()  # the poll, well past SETTLE
    assert message(live()).startswith("v2-fix"), "the fix is never served while another file's mtime is in the future"


def test_a_forced_reload_sleeps_at_most_settle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP / an admission's refresh (wait=True): the docstring says 'at most SETTLE'; with a
    future mtime it sleeps until that time, holding _checking (every other check queues behind it)."""
    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    monkeypatch.setattr(LiveCatalog, "SETTLE", 1.0)
    _future(live.directory / "echo.yaml", 30)
    done = threading.Event()
    t = threading.Thread(target=lambda: (live.check(force=True), done.set()), daemon=True)
    t.start()
    assert done.wait(3.0), "a forced check (SIGHUP) is still sleeping 3 s on; SETTLE is 1 s"


CALLER = """
name: echo
params: {instance: {type: string}}
steps:
  - {id: call, action: playbook.run, with: {name: nowhere}}
"""


def test_the_holder_kept_by_takeover_skips_the_call_checks(tmp_path: Path) -> None:
    """_reloaded() uses load_file (one file): a holder edited to call a playbook that does not exist
    is served, although load_directory refuses such a playbook."""
    live = live_over(tmp_path, **{"echo.yaml": echo("prod")})
    write(live.directory, "echo-copy.yaml", echo("experiment"))
    write(live.directory, "echo.yaml", CALLER)
    live.check()
    steps = live().get("echo").playbook.steps
    assert steps[0].action != "playbook.run", "a playbook calling an unknown sub-playbook is served"


def _alias_deep(levels_per_anchor: int = 50, anchors: int = 25) -> str:
    items = ["&l0 " + "[" * levels_per_anchor + "x" + "]" * levels_per_anchor]
    items += [f"&l{i} " + "[" * levels_per_anchor + f"*l{i - 1}" + "]" * levels_per_anchor for i in range(1, anchors)]
    return ("name: deep\nowner: sre\nsteps:\n  - id: one\n    action: http.request\n"
            "    with: {method: POST, url: 'https://x.internal/', json: [" + ", ".join(items) + "]}\n")


def test_aliases_nest_past_the_depth_limit(tmp_path: Path) -> None:
    """_too_big memoizes a node's size by id(): an alias met again deeper is not re-checked for depth,
    so anchors each 50 deep, each wrapping the one before, nest 1,250 levels in a 2.9 KB file; the
    RecursionError escapes load_directory again, and the reload beside it never completes."""
    live = live_over(tmp_path, **{"echo.yaml": echo("v1"), "other.yaml": echo("o1", name="other")})
    write(live.directory, "deep.yaml", _alias_deep())
    write(live.directory, "other.yaml", echo("o2-fixed", name="other"))
    live.check()
    assert message(live(), "other").startswith("o2-fixed"), f"the fix beside it was never served: {live.errors}"
