"""Signed chain-head checkpoints, kept where the bot's database role cannot rewrite them.

The hash chain shows an edit, a deleted row and a cut-off end; it cannot show a whole table
rewritten with recomputed hashes, by anyone who can write the table (the DB owner, a superuser,
whoever holds the SQLite file). So the worker periodically appends `{seq, hash, ts}` of the head,
sealed with the envelope key (HMAC-SHA256 through Keyring.seal, the key the worker already holds
and the database never sees), to PLAYBOOK_BOT_AUDIT_CHECKPOINT_FILE (opened O_APPEND, one JSON
line each) and to the log. `audit verify --checkpoints FILE` then checks that every checkpoint
is still in the chain: the event at its seq exists and has its hash.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from bot.audit.events import format_ts
from bot.audit.store import AuditUnavailable
from bot.identity.proofs import Keyring

LABEL = "playbook-bot audit checkpoint"
log = structlog.get_logger(__name__)


class Checkpoint(BaseModel):
    seq: int
    hash: str
    ts: str
    seal: str

    def content(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "ts": self.ts}


def make_checkpoint(store: Any, keyring: Keyring, now: datetime | None = None) -> Checkpoint | None:
    """The current head, sealed; None for an empty trail."""
    head = store.last(1)
    if not head:
        return None
    content = {"seq": head[0].seq, "hash": head[0].hash, "ts": format_ts(now or datetime.now(UTC))}
    return Checkpoint(**content, seal=keyring.seal(LABEL, content))


def append_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """One line, appended (O_APPEND: never over what is there) and synced."""
    line = (checkpoint.model_dump_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_checkpoints(path: Path, store: Any, keyring: Keyring) -> tuple[int, list[str]]:
    """(checkpoints read, problems): each line must be sealed by a key held here, and the chain
    must still hold an event at its seq with its hash."""
    problems: list[str] = []
    count = 0
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        count += 1
        where = f"{path}:{number}"
        try:
            checkpoint = Checkpoint.model_validate(json.loads(text))
        except (ValueError, ValidationError):
            problems.append(f"{where}: not a checkpoint line (JSON with seq, hash, ts, seal)")
            continue
        if not keyring.seal_holds(LABEL, checkpoint.content(), checkpoint.seal):
            problems.append(f"{where}: seal does not verify with the envelope key(s) held here (forged or another key)")
            continue
        found = store.events(after_seq=checkpoint.seq - 1, limit=1)
        if not found or found[0].seq != checkpoint.seq:
            problems.append(f"{where}: seq {checkpoint.seq} was checkpointed at {checkpoint.ts} but is no longer in the trail (events were removed)")
        elif found[0].hash != checkpoint.hash:
            problems.append(f"{where}: seq {checkpoint.seq} has another hash than checkpointed at {checkpoint.ts} (the trail was rewritten)")
    return count, problems


class Checkpointer:
    """The worker's loop: every `interval` seconds, a checkpoint when the head has moved."""

    def __init__(self, store: Any, path: Path, keyring: Keyring, interval: float) -> None:
        self.store, self.path, self.keyring, self.interval = store, path, keyring, interval
        self._last_seq: int | None = None

    def write_if_moved(self) -> Checkpoint | None:
        checkpoint = make_checkpoint(self.store, self.keyring)
        if checkpoint is None or checkpoint.seq == self._last_seq:
            return None
        append_checkpoint(self.path, checkpoint)
        self._last_seq = checkpoint.seq
        log.info("audit checkpoint", **checkpoint.model_dump())  # the log is a second copy
        return checkpoint

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.once()

    async def once(self) -> None:
        try:
            await asyncio.to_thread(self.write_if_moved)
        except (AuditUnavailable, OSError) as exc:
            log.warning("audit checkpoint not written; trying again next interval", reason=str(exc))


def start_checkpoints(store: Any, path: Path, keyring: Keyring, interval: float) -> Any:
    """Start the loop; returns the async callback that stops it and writes a last checkpoint."""
    if not keyring.can_verify:
        from bot.settings import ConfigError

        raise ConfigError(
            "PLAYBOOK_BOT_AUDIT_CHECKPOINT_FILE needs a key to seal checkpoints with: set PLAYBOOK_BOT_ENVELOPE_KEY"
        )
    checkpointer = Checkpointer(store, path, keyring, interval)
    task = asyncio.create_task(checkpointer.run(), name="audit checkpoints")

    async def stop() -> None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await checkpointer.once()

    return stop
