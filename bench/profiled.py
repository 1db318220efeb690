"""`playbook-bot` under cProfile, for `--profile DIR` of the benches (py-spy cannot attach here).

    python -m bench.profiled OUT.prof serve|worker|dev

The CLI leaves through os._exit (bot/cli.py main); the profile is dumped just before it, once the
process was stopped as usual (SIGTERM). Only the main thread is profiled: work handed to threads
(asyncio.to_thread, SQLite) shows as the wait for it.
"""

from __future__ import annotations

import cProfile
import os
import sys


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    sys.argv = ["playbook-bot", *args]
    profile = cProfile.Profile()
    leave = os._exit

    def dump_then_exit(code: int) -> None:
        profile.disable()
        profile.dump_stats(out)
        leave(code)

    os._exit = dump_then_exit  # type: ignore[assignment]
    from bot.cli import main as cli

    profile.enable()
    cli()


if __name__ == "__main__":
    main()
