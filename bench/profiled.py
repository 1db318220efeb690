"""`playbook-bot` under cProfile, for `--profile DIR` of the benches (py-spy cannot attach here).

    python -m bench.profiled OUT.prof serve|worker|dev

The CLI leaves through os._exit (bot/cli.py main); the profile is dumped just before it, once the
process was stopped as usual (SIGTERM). Only the main thread is profiled: work handed to threads
(asyncio.to_thread, SQLite) shows as the wait for it. `BENCH_PROFILE_CLOCK=cpu` in the bench's
environment profiles CPU time instead of wall time (see main).
"""

from __future__ import annotations

import cProfile
import os
import sys
import time


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    sys.argv = ["playbook-bot", *args]
    # BENCH_PROFILE_CLOCK=cpu: the main thread's CPU time, not wall time. On a busy 2-core machine a
    # wall-clock profile charges a syscall for the time the process waited to be scheduled again.
    cpu = os.environ.get("BENCH_PROFILE_CLOCK") == "cpu"
    profile = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
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
