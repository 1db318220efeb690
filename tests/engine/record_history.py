"""Record a run's history for the replay tests (run against a live `playbook-bot dev`):

    PLAYBOOK_BOT_DATA_DIR=... .venv/bin/python -m tests.engine.record_history RUN_ID tests/engine/histories/NAME.json

Replaying checked-in histories catches workflow changes that would break runs already in flight.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bot.settings import Settings
from bot.temporal import connect


async def record(run_id: str, target: Path) -> None:
    client = await connect(Settings())
    history = await client.get_workflow_handle(run_id).fetch_history()
    target.write_text(history.to_json())
    print(f"wrote {target} ({len(history.events)} events)")


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1], Path(sys.argv[2])))
