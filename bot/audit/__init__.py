"""Append-only, hash-chained audit trail: every decision and action of a run, verifiable later."""

from bot.audit.events import AuditEvent, EventKind, StoredEvent
from bot.audit.store import AuditUnavailable, SqliteAuditStore, VerifyResult, default_path

__all__ = [
    "AuditEvent",
    "AuditUnavailable",
    "EventKind",
    "SqliteAuditStore",
    "StoredEvent",
    "VerifyResult",
    "default_path",
]
