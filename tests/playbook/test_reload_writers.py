"""bot/playbook/reload.py's settle wait against writers: one still writing after the wait, and a clock that
runs behind the files' (review: both had a half-written file read)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bot.playbook import reload as reload_mod
from bot.playbook.reload import LiveCatalog
from tests.playbook.test_reload import echo, live_over, message

FULL = echo("v2-full")
PREFIX = FULL[: FULL.index("steps:")] + "steps:\n  - {id: say, action: core.log, with: {message: \"v2-prefix\"}}\n"


def test_a_write_still_going_on_after_the_wait_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cat > echo.yaml` (same inode, in place), a part every 0.4 s (never SETTLE apart). A forced
    check (SIGHUP, an admission's refresh) sleeps for the first part's SETTLE, then reads whatever
    is there without looking again: a prefix that parses is served."""
    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    monkeypatch.setattr(LiveCatalog, "SETTLE", 1.0)
    target = live.directory / "echo.yaml"

    def writer() -> None:
        with open(target, "w") as f:
            for part in ["name: echo\n", PREFIX, PREFIX + "# more\n", PREFIX + "# more\n# more\n",
                         PREFIX + "# more\n# more\n# more\n", PREFIX + "# more\n" * 4]:
                f.seek(0); f.truncate(); f.write(part); f.flush()
                time.sleep(0.4)
            f.seek(0); f.truncate(); f.write(FULL)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.2)
    live.check(force=True)
    served = message(live())
    thread.join()
    assert not served.startswith("v2-prefix"), "a file still being written was read: the wait never looked again"


def test_a_clock_behind_the_files_ctime_reads_a_half_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS, a clock behind the server's by 2 s: every fresh ctime is 'in the future' and counts as settled."""
    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    monkeypatch.setattr(LiveCatalog, "SETTLE", 1.0)
    real = time.time_ns
    monkeypatch.setattr(reload_mod.time, "time_ns", lambda: real() - 2_000_000_000)
    (live.directory / "echo.yaml").write_text(PREFIX)  # in place: a prefix that parses, mid-write
    live.check()  # the poll right after
    assert not message(live()).startswith("v2-prefix"), "read at once: the settle wait is off"
