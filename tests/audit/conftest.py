from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.audit.store import SqliteAuditStore


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "audit.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteAuditStore]:
    with SqliteAuditStore(db) as store:
        yield store
