"""What text may reach a terminal: anyone's words (a target's error, an alert's label, a log line
quoting either) with their control characters shown, never obeyed."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (Unicode category Cc)


def visible(text: str) -> str:
    """`text` with its control characters shown as `\\xNN`: ESC and its kin would move the cursor,
    repaint lines or set the clipboard of the terminal that shows it (an export, `audit tail`,
    `status`, a console log line)."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
