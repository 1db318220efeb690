"""The audit store tests: a test taking `store` (or `filled`) and not the SQLite file `db` runs on
both backends, SQLite and a real PostgreSQL (tests/pg.py); `@pytest.mark.sqlite_only` opts out."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.audit.store import SqliteAuditStore

BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: an audit store test about the SQLite file itself")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    direct = set(inspect.signature(metafunc.function).parameters)
    sqlite_only = "db" in direct or metafunc.definition.get_closest_marker("sqlite_only") is not None
    metafunc.parametrize("backend", ["sqlite"] if sqlite_only else list(BACKENDS))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "audit.db"


def open_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path, **options: Any) -> Any:
    if backend == "postgres":
        from bot.audit.postgres import PostgresAuditStore

        return PostgresAuditStore(request.getfixturevalue("pg_url"), **options)
    return SqliteAuditStore(tmp_path / "data" / "audit.db", **options)


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteAuditStore]:
    with open_store(backend, request, tmp_path) as store:
        yield store
