"""Attacks on the audit trail's readers (export, tail, verify) and its writers' group commit
(red-team, stop 48), through the real store, CLI and exporters. Each failed before its fix:

1. raw HTML in a detail (an error quoting a response body) drew a forged row, say an approval, in
   the Markdown timeline a postmortem pastes;
2. ESC and its kin in a detail reached the operator's terminal through `export --format md` and
   `tail` (erase a line, repaint it, set the clipboard);
3. a lone surrogate in a detail (a JSON `\\ud800` in a response body) failed its whole group
   commit: other callers' events (refusals, recorded best effort) were lost with it;
4. a row whose run_id someone retyped (a BLOB, in the SQLite file) crashed `verify` with a
   traceback instead of naming the row.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from bot.audit.batching import GroupCommitter
from bot.audit.cli import app
from bot.audit.export import to_markdown
from bot.audit.store import SqliteAuditStore
from tests.audit.support import event

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "audit.db"


@pytest.fixture
def store(db: Path) -> SqliteAuditStore:
    with SqliteAuditStore(db) as store:
        yield store


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.cells: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "tr":
            self.rows += 1
        if tag == "td":
            self.cells.append("")
            self._in_td = True

    def handle_data(self, data: str) -> None:
        if self._in_td and self.cells:
            self.cells[-1] += data


def test_md_export_raw_html_in_a_detail_cannot_forge_a_table_row(store: SqliteAuditStore) -> None:
    """A failing step's error text (an HTTP body, attacker-influenced) carries raw HTML: the
    postmortem timeline, once rendered, shows a forged `approval_vote ... approved by alice` row."""
    forged = "</td></tr><tr><td>9<td>approval_vote<td>alice<td>approved by alice"
    store.append([event(1, kind="step_failed", details={"action": "http.request", "error": "HTTP 503: " + forged})])

    md = to_markdown(store.events(), "run-1")
    html = MarkdownIt("commonmark").enable("table").render(md)
    parsed = _Rows()
    parsed.feed(html)

    # one header row + one row per event: nothing else
    assert parsed.rows == 2, f"rendered table has {parsed.rows} rows for 1 event:\n{html}"
    assert "approval_vote" not in [cell.strip() for cell in parsed.cells]


def test_md_export_draws_no_image_or_disguised_link_from_a_detail(store: SqliteAuditStore) -> None:
    """Review (stop 48): `![](https://tracker/...)` in a detail fetched an image when the timeline
    was viewed, and `[approved](https://evil)` showed a link under another name."""
    hostile = "see ![x](https://tracker.example/p.gif) and [runbook](https://evil.example/login)"
    store.append([event(1, kind="step_failed", details={"action": "http.request", "error": hostile})])
    html = MarkdownIt("commonmark").enable("table").render(to_markdown(store.events(), "run-1"))
    assert "<img" not in html and "<a " not in html, html
    assert "https://tracker.example/p.gif" in html  # (still there, as text)


def test_export_md_and_tail_do_not_pass_terminal_escapes(store: SqliteAuditStore, db: Path) -> None:
    """Hostile detail text with ANSI escapes (erase line, cursor up) reaches the operator's
    terminal verbatim through `audit export --format md` and `audit tail`, and can overwrite what
    was printed before (e.g. hide a line, or repaint one)."""
    hostile = "HTTP 503\x1b[1A\x1b[2K\r     7  approved by alice\x1b]52;c;ZWNobyBwd25lZA==\x07"
    store.append([event(1, kind="step_failed", details={"action": "http.request", "error": hostile})])

    store.append([event(2, kind="step_failed", details={"error": "\x9b2J\x9b1;1H approved by alice"})])  # C1 CSI

    md = runner.invoke(app, ["export", "run-1", "--format", "md", "--db", str(db)])
    tail = runner.invoke(app, ["tail", "--db", str(db)])
    as_json = runner.invoke(app, ["export", "run-1", "--format", "json", "--db", str(db)])

    assert md.exit_code == 0 and tail.exit_code == 0 and as_json.exit_code == 0
    for output in (md.stdout, tail.stdout, as_json.stdout):
        assert not any(ord(c) < 32 and c != "\n" or 127 <= ord(c) < 160 for c in output), repr(output)
    # the JSON export escapes them as JSON does: the same values, so its hashes still check out
    assert [e["details"] for e in json.loads(as_json.stdout)][1] == {"error": "\x9b2J\x9b1;1H approved by alice"}


def test_a_lone_surrogate_in_details_is_kept_as_a_replacement_and_fails_no_batch(store: SqliteAuditStore) -> None:
    innocent = [event(1, kind="access_refused", actor="mallory", details={"operation": "vote", "reason": "not an approver"})]
    hostile = [event(2, details={"action": "http.request", "output": "\ud800", "\udc00key": ["\udfff"]})]

    async def both() -> list[object]:
        commit = GroupCommitter(store)
        return await asyncio.gather(commit.append(innocent), commit.append(hostile), return_exceptions=True)

    first, second = asyncio.run(both())

    assert not isinstance(first, BaseException) and not isinstance(second, BaseException), (first, second)
    assert store.has_event(innocent[0].event_id)
    [kept] = [e for e in store.events() if e.event_id == hostile[0].event_id]
    assert kept.details == {"action": "http.request", "output": "\ufffd", "\ufffdkey": ["\ufffd"]}


def test_verify_names_a_retyped_row_instead_of_crashing(store: SqliteAuditStore, db: Path) -> None:
    """Whoever holds the SQLite file stores a run_id as a BLOB: `audit verify` dies with a
    TypeError traceback instead of naming the changed seq (its type check skips run_id/step_id)."""
    store.append([event(n) for n in range(1, 4)])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute("UPDATE audit_events SET run_id = CAST(run_id AS BLOB) WHERE seq = 2")
    conn.close()

    result = runner.invoke(app, ["verify", "--db", str(db)])

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), f"verify crashed: {result.exception!r}"
    assert "audit chain broken: seq 2" in result.stderr
