"""bot/logging.py: what a log line on a terminal can carry."""

from __future__ import annotations

import io
import logging

import structlog

from bot import logging as bot_logging


def test_a_console_line_carries_no_terminal_command_or_forged_line_from_data() -> None:
    """Red team: the console renderer wrote the event's text and a traceback raw, so a `core.log`
    message over an annotation could set the terminal's clipboard (OSC 52), erase lines, or start a
    forged `[info] approval recorded` line of its own."""
    out = io.StringIO()
    saved, handlers = structlog.get_config(), logging.getLogger().handlers[:]
    bot_logging.configure("INFO", "console", out)
    try:
        hostile = "disk full\n2026-12-07T10:00:00Z [info     ] approval recorded \x1b]52;c;cm0gLXJm\x07\x1b[2K\x9b"
        structlog.get_logger("test").info(hostile, detail=hostile)
        try:
            raise RuntimeError(hostile)
        except RuntimeError:
            structlog.get_logger("test").exception("step failed")
    finally:  # (as it was: later tests in this process read what structlog writes)
        structlog.configure(**saved)
        logging.getLogger().handlers[:] = handlers
    shown = out.getvalue()
    assert not any(c in shown for c in ("\x1b", "\x07", "\x9b"))
    assert "\n2026-12-07T10:00:00Z [info     ] approval recorded" not in shown
    assert "disk full\\x0a2026-12-07T10:00:00Z" in shown
    assert "  Traceback (most recent call last):\n" in shown  # a traceback keeps its lines, indented
