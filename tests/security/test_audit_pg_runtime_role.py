"""Attacks by someone holding the bot's own PostgreSQL role (RUNTIME_GRANTS: what `audit schema
--grant` gives it), e.g. a leaked PLAYBOOK_BOT_AUDIT_URL. Episode state is mutable, but a resolve
must not be undone: a late firing delivery (a retry, an HA peer) would then remediate a resolved alert.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from bot.audit.pg_schema import grant_runtime
from bot.audit.postgres import PostgresAuditStore
from tests.pg import PgCluster


@pytest.fixture
def runtime(pg_cluster: PgCluster, pg_url: str) -> Iterator[tuple[PostgresAuditStore, psycopg.Connection]]:
    """The store the bot runs with, and a raw connection of the same role (the attacker's)."""
    dbname = pg_url.rsplit("/", 1)[1]
    role = f"bot_{dbname}"
    pg_cluster.create_role(role, dbname)
    with PostgresAuditStore(pg_url) as owner, psycopg.connect(pg_url, autocommit=True) as conn:
        assert owner.check_writable() is None  # migrated by the owner
        grant_runtime(conn, role)
    url = pg_cluster.url(dbname, user=role)
    with PostgresAuditStore(url) as bot, psycopg.connect(url, autocommit=True) as attacker:
        yield bot, attacker


@pytest.mark.parametrize("attack", [
    "UPDATE episodes SET resolved_at = NULL WHERE episode_id = 'ep'",
    "UPDATE episodes SET episode_id = 'gone' WHERE episode_id = 'ep'",
])
def test_the_runtime_role_cannot_unresolve_an_episode(
    runtime: tuple[PostgresAuditStore, psycopg.Connection], attack: str
) -> None:
    bot, attacker = runtime
    assert bot.claim_episode("ep").claimed
    bot.resolve_episode("ep")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="episode"):
        attacker.execute(attack)  # type: ignore[arg-type]
    after = bot.claim_episode("ep", rerun=True, stale_after=0)
    assert not after.claimed and after.resolved_at is not None


def test_the_bots_own_episode_writes_still_work(runtime: tuple[PostgresAuditStore, psycopg.Connection]) -> None:
    """Claim, release, claim again, start, rerun, release of the rerun, resolve: all allowed."""
    bot, _ = runtime
    first = bot.claim_episode("ep")
    bot.release_episode("ep", first.runs)
    assert bot.episode("ep").runs == 0
    again = bot.claim_episode("ep")
    assert again.claimed and again.runs == 1
    bot.episode_started("ep", 1)
    rerun = bot.claim_episode("ep", rerun=True)
    assert rerun.claimed and rerun.runs == 2
    bot.release_episode("ep", 2)
    assert (bot.episode("ep").runs, bot.episode("ep").started) == (1, True)
    assert bot.resolve_episode("ep").resolved_at is not None
    assert bot.resolve_episode("ep").resolved_at == bot.episode("ep").resolved_at
