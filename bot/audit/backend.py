"""Which audit store a process uses: PostgreSQL when PLAYBOOK_BOT_AUDIT_URL is set (one chain and
one episode table for every front door and worker), else the SQLite file in the data dir."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from bot.audit.episodes import Episode
from bot.audit.events import AuditEvent, StoredEvent
from bot.audit.store import SqliteAuditStore, VerifyResult, default_path
from bot.settings import ConfigError

if TYPE_CHECKING:
    from bot.settings import Settings

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class AuditStore(Protocol):
    """What both backends offer; every method raises AuditUnavailable when the store is down."""

    def append(self, events: Sequence[AuditEvent], *, new_only: bool = False) -> list[StoredEvent]: ...
    def check_writable(self) -> str | None: ...
    def events(self, run_id: str | None = None, after_seq: int = 0, limit: int | None = None) -> list[StoredEvent]: ...
    def last(self, n: int, run_id: str | None = None) -> list[StoredEvent]: ...
    def get_event(self, event_id: str) -> StoredEvent | None: ...
    def get_events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]: ...
    def has_event(self, event_id: str) -> bool: ...
    def has_run(self, run_id: str) -> bool: ...
    def run_last_recorded(self, run_id: str, exclude_execution: str | None = None) -> datetime | None: ...
    def run_ended(self, run_id: str, since: datetime) -> bool: ...
    def verify(self) -> VerifyResult: ...
    def episode(self, episode_id: str) -> Episode: ...
    def episodes_of(self, episode_ids: Sequence[str]) -> list[Episode]: ...
    def later_episode(self, episode_id: str) -> Episode | None: ...
    def claim_episode(self, episode_id: str, *, rerun: bool = False, stale_after: float = 120.0) -> Episode: ...
    def episode_started(self, episode_id: str, runs: int) -> Episode: ...
    def release_episode(self, episode_id: str, runs: int) -> None: ...
    def resolve_episode(self, episode_id: str) -> Episode: ...
    def close(self) -> None: ...


def audit_url(settings: Settings) -> str | None:
    """PLAYBOOK_BOT_AUDIT_URL, checked: only a postgresql:// URL selects another backend."""
    if settings.audit_url is None:
        return None
    url = settings.audit_url.get_secret_value()
    if not url.startswith(POSTGRES_SCHEMES):
        raise ConfigError(
            f"PLAYBOOK_BOT_AUDIT_URL must start with postgresql:// (got {url.split(':', 1)[0]!r}); "
            "leave it unset for the SQLite file in PLAYBOOK_BOT_DATA_DIR"
        )
    return url


def open_store(settings: Settings, *, create: bool = True) -> AuditStore:
    """The configured store, not yet connected (both open lazily, so a store that is down can be
    built and recovers later). `create=False`: PostgreSQL's schema is not created (readers)."""
    url = audit_url(settings)
    if url is None:
        return SqliteAuditStore(default_path(settings))
    from bot.audit.postgres import PostgresAuditStore

    return PostgresAuditStore(url, create=create)


def describe(store: object) -> str:
    """Where a store is, for messages: the file, or the URL without its password."""
    name = getattr(store, "name", None) or getattr(store, "path", None)
    return str(name)
