"""The top entries of a cProfile dump, as the benches print them with `--profile DIR`."""

from __future__ import annotations

import io
import pstats
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def top(path: Path, entries: int = 15) -> str:
    """The heaviest functions by own time (the loop's idle wait in epoll included: it says how busy
    the process was), then the bot's own functions by cumulative time."""
    if not path.exists():
        return f"(no profile at {path}: the process did not stop cleanly)"
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    out.write(f"== {path.name}: by own time ==\n")
    stats.sort_stats("tottime").print_stats(entries)
    out.write(f"== {path.name}: the bot's functions by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(f"{ROOT}/bot/(?!cli.py)", entries)
    text = out.getvalue().replace(f"{ROOT}/", "").replace(str(Path(sys.prefix)), "<venv>")
    return "\n".join(line for line in text.splitlines() if line.strip() and "List reduced" not in line)
