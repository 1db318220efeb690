"""`audit migrate`: copy a SQLite trail into PostgreSQL as it is (seq, ts, ids, hashes), so the
chain verifies on the target exactly as on the source. Resumable: a target holding exactly a
prefix of the source gets the rest; any other non-empty target is refused, nothing written."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from bot.audit.postgres import PostgresAuditStore
from bot.audit.store import SqliteAuditStore

BATCH = 1000


class MigrateError(ValueError):
    """The copy cannot start or did not verify; the message says what to fix."""


class MigrateResult(BaseModel):
    source_events: int
    already_there: int
    copied: int
    target_events: int


def sqlite_path(url: str) -> Path:
    """`sqlite:///abs/path.db` (or `sqlite://relative.db`) -> the path."""
    if not url.startswith("sqlite://"):
        raise MigrateError(f"--from must be a sqlite:///path/to/audit.db URL (got {url.split(':', 1)[0]!r})")
    path = url.removeprefix("sqlite://")
    if not path:
        raise MigrateError("--from names no file: use sqlite:///path/to/audit.db")
    return Path(path)


def migrate(source: SqliteAuditStore, target: PostgresAuditStore, batch: int = BATCH) -> MigrateResult:
    checked = source.verify()
    if not checked.ok:
        raise MigrateError(
            f"source {source.path}: audit chain broken: {checked.reason}; a broken trail is not copied "
            "(keep the file as evidence; start the PostgreSQL trail empty)"
        )
    there = target.verify()
    if not there.ok:
        raise MigrateError(f"target {target.name}: audit chain broken: {there.reason}; migrate into an empty database")
    if there.checked > checked.checked:
        raise MigrateError(
            f"target {target.name} holds {there.checked} events, more than the source's {checked.checked}: "
            "it is another trail; migrate into an empty database"
        )
    if there.checked:
        # Both chains verify, so equal hashes at the target's head mean the whole prefix is equal.
        [at] = source.events(after_seq=there.checked - 1, limit=1)
        if at.hash != there.head_hash:
            raise MigrateError(
                f"target {target.name} is not empty and not a copy of this source: its seq {there.checked} has "
                f"hash {there.head_hash[:12]}…, the source's {at.hash[:12]}…; migrate into an empty database"
            )
    copied, after = 0, there.checked
    while chunk := source.events(after_seq=after, limit=batch):
        copied += target.import_events(chunk)
        after = chunk[-1].seq
    result = target.verify()
    if not result.ok or result.checked != checked.checked or result.head_hash != checked.head_hash:
        raise MigrateError(
            f"target {target.name} does not verify after the copy: {result.reason or 'head differs from the source'}"
        )
    return MigrateResult(
        source_events=checked.checked, already_there=there.checked, copied=copied, target_events=result.checked
    )
