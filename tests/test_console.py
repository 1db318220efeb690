"""bot/console.py: how `status` and `run --wait` show a run, whatever its steps' words are."""

from __future__ import annotations

import io

from rich.console import Console

from bot.console import progress_lines, status_table
from bot.engine.state import CompensationStatus, RunStatus, StepStatus

# A target's answer quoted in a step's error: Rich markup, and terminal commands (OSC 52 sets the
# clipboard, CSI 2K erases the line, a newline starts a forged line of its own).
HOSTILE = ("[link=https://evil.example]details[/link] [bold green]approved by alice[/] "
           "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2K\nrun-1: succeeded")


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=400, color_system="truecolor"), out


def test_a_steps_error_is_shown_as_text_never_as_markup_or_terminal_commands() -> None:
    """Red team: `status` drew `[link=...]` as a clickable OSC 8 link and restyled text, and passed
    ESC through to the terminal (clipboard, cursor)."""
    status = RunStatus(run_id="run-1", playbook="p", playbook_hash="h", requested_by="cli:a", trigger="cli",
                       state="failed", error=HOSTILE,
                       steps=[StepStatus(id="s", action="http.request", state="failed", error=HOSTILE)],
                       compensations=[CompensationStatus(step="s", action="http.request", state="failed",
                                                         error=HOSTILE)])
    console, out = terminal()
    console.print(status_table(status))
    shown = out.getvalue()
    assert "\x1b]8;" not in shown and "\x1b]52" not in shown and "\x1b[2K" not in shown
    assert shown.count("[link=https://evil.example]details[/link]") == 3  # error, caption, undo
    assert "\\x1b]52;c;" in shown

    console, out = terminal()
    for line in progress_lines(None, status):
        console.print(line, highlight=False, markup=False)  # as `run --wait` prints them
    shown = out.getvalue()
    assert "\x1b]52" not in shown and "[link=https://evil.example]" in shown
    assert "\nrun-1: succeeded" not in shown  # no line of its own
