"""An audit store outage never blocks a rollback, and loses nothing (issue 14, item 3).

A real worker (shipped activities, SQLite audit store) on the dev server. The outage is a real
one: another process holds SQLite's write lock (BEGIN IMMEDIATE) longer than the store waits, so
every append fails with `database is locked`, as it does behind a stuck writer or a full disk.
"""

from __future__ import annotations

import functools
import sqlite3
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.common import WorkflowIDReusePolicy

from bot.audit import backend
from bot.audit.backend import AuditStore
from bot.audit.postgres import PostgresAuditStore
from bot.audit.store import SqliteAuditStore, default_path
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from tests.engine.support import catalog_of, playbook, run_input, wait_for_state
from tests.engine.test_audit_trail import ALLOW_POLICY, flush_attempts
from tests.waiting import eventually


def _settings(tmp_path: Path) -> Settings:
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(ALLOW_POLICY)
    return Settings(data_dir=tmp_path / "data", policies_dir=tmp_path / "policies", shell_allow=["sh", "touch"])


def _outage_playbook(tmp_path: Path) -> str:
    def touch(name: str) -> str:
        return f'{{action: shell.run, with: {{argv: [touch, "{tmp_path / name}"]}}}}'

    go = tmp_path / "go"
    return f"""
name: outage
owner: sre
steps:
  - {{id: prep, action: shell.run, with: {{argv: [touch, "{tmp_path / 'prep'}"]}}, compensate: {touch('prep-undone')}}}
  - id: hold
    action: shell.run
    with: {{argv: [sh, -c, "while [ ! -f {go} ]; do sleep 0.1; done"]}}
    compensate: {touch('hold-undone')}
  - id: both
    parallel:
      - {{id: left, action: shell.run, with: {{argv: [touch, "{tmp_path / 'left'}"]}}, compensate: {touch('left-undone')}}}
      - {{id: right, action: shell.run, with: {{argv: [touch, "{tmp_path / 'right'}"]}}, compensate: {touch('right-undone')}}}
  - {{id: boom, action: http.request, with: {{url: "http://127.0.0.1:9/unreachable"}}, retry: {{max_attempts: 1}}}}
"""


BEFORE = [
    ("run_started", None),
    ("step_started", "prep"),
    ("step_succeeded", "prep"),
    ("step_started", "hold"),
    ("step_succeeded", "hold"),
]
PARALLEL = {("step_started", "left"), ("step_succeeded", "left"), ("step_started", "right"), ("step_succeeded", "right")}
UNDO_PARALLEL = {("compensation_started", "left"), ("compensation_succeeded", "left"),
                 ("compensation_started", "right"), ("compensation_succeeded", "right")}
AFTER = [
    ("compensation_started", "hold"),
    ("compensation_succeeded", "hold"),
    ("compensation_started", "prep"),
    ("compensation_succeeded", "prep"),
    ("run_finished", None),
]


def _in_run_order(trail: list[tuple[str, str | None]]) -> None:
    """The whole story once, in the run's order (left and right ran side by side: either first)."""
    assert len(trail) == len(set(trail)) == len(BEFORE) + 4 + 2 + 4 + len(AFTER), trail
    assert trail[: len(BEFORE)] == BEFORE
    assert set(trail[5:9]) == PARALLEL
    for step in ("left", "right"):
        assert trail.index(("step_started", step)) < trail.index(("step_succeeded", step))
        assert trail.index(("compensation_started", step)) < trail.index(("compensation_succeeded", step))
    assert trail[9:11] == [("step_started", "boom"), ("step_failed", "boom")]
    assert set(trail[11:15]) == UNDO_PARALLEL  # the saga undoes the group's steps before hold
    assert trail[15:] == AFTER


class Outage:
    """The store the run writes to, and a real way to take it away: SQLite's write lock held by
    another connection (`database is locked`, as behind a stuck writer or a full disk), or
    PostgreSQL itself stopped (`pg_ctl stop`), the worker's store object reconnecting on its own."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.settings = _settings(tmp_path)
        if kind == "postgresql":
            self.cluster = request.getfixturevalue("pg_cluster")
            self.url = request.getfixturevalue("pg_url")
            self.settings = self.settings.model_copy(update={"audit_url": SecretStr(self.url)})
        else:
            # The worker's store gives up on the held lock after 1 s instead of its 5 s busy timeout:
            # the same failures, each flush attempt sooner (PostgreSQL's refused connection is quick).
            request.getfixturevalue("monkeypatch").setattr(
                backend, "SqliteAuditStore", functools.partial(SqliteAuditStore, timeout=1.0))
        self._holder: sqlite3.Connection | None = None

    def store(self) -> AuditStore:
        if self.kind == "postgresql":
            return PostgresAuditStore(self.url)
        return SqliteAuditStore(default_path(self.settings))  # WAL: readers pass the writer's lock

    @property
    def readable_while_down(self) -> bool:
        return self.kind == "sqlite"

    def begin(self) -> None:
        if self.kind == "postgresql":
            self.cluster.stop()
        else:
            self._holder = sqlite3.connect(default_path(self.settings), isolation_level=None)
            self._holder.execute("BEGIN IMMEDIATE")  # every append now fails, locked

    def end(self) -> None:
        if self.kind == "postgresql":
            self.cluster.start_if_stopped()
        elif self._holder is not None:
            self._holder.execute("ROLLBACK")
            self._holder.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_store_outage_mid_run_blocks_no_undo_and_the_trail_is_complete_once_it_is_back(
    dev_env, tmp_path, request, kind
):
    outage = Outage(kind, tmp_path, request)
    pb = playbook(_outage_playbook(tmp_path))
    async with worker_deps(outage.settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            handle = await dev_env.client.start_workflow(
                PlaybookRun.run, run_input(pb, requested_by="cli:carl"), id=f"outage-{uuid.uuid4()}",
                task_queue=worker.task_queue,
            )
            run_id = handle.id

            def recorded() -> list[tuple[str, str | None]]:
                with outage.store() as store:
                    return [(e.kind.value, e.step_id) for e in store.events(run_id=run_id)]

            async def hold_started() -> bool:
                return ("step_started", "hold") in recorded()

            await eventually(hold_started, timeout=60, what="the hold step on the record")
            outage.begin()
            try:
                (tmp_path / "go").touch()  # hold ends; boom fails; the saga undoes hold and prep
                status = await wait_for_state(
                    handle, lambda s: s.state == "compensated" and s.audit_pending > 0, timeout=180
                )
                assert [c.state for c in status.compensations] == ["succeeded"] * 4
                assert [c.step for c in status.compensations][2:] == ["hold", "prep"]
                for step in ("prep", "hold", "left", "right"):
                    assert (tmp_path / f"{step}-undone").exists(), step
                assert status.not_undone == []
                # The run holds at its end: its record waits for the store, the flusher retries.
                await eventually(lambda: flush_attempts(handle, 3), timeout=180, what="three failed flushes")
                if outage.readable_while_down:
                    assert ("run_finished", None) not in recorded()
                    assert ("compensation_succeeded", "prep") not in recorded()
                assert (await handle.query(PlaybookRun.status)).audit_pending > 0
            finally:
                outage.end()  # the store is back
            status = await handle.result()

    assert status.state == "compensated" and status.audit_pending == 0
    _in_run_order(recorded())  # every event once, in the run's order, run_finished last
    with outage.store() as store:
        assert store.verify().ok
        events = store.events(run_id=run_id)
    execution = (handle.first_execution_run_id or "").replace("-", "")
    assert execution and all(f"/{execution}:" in e.event_id for e in events), [e.event_id for e in events]
    assert events[-1].details["state"] == "compensated"


SIMPLE = """
name: twice
steps:
  - {id: only, action: core.log, with: {message: hello}}
"""


async def test_a_run_id_used_twice_keeps_both_executions_on_the_record(dev_env, tmp_path):
    """A second execution under the same workflow id (Temporal allows it after the first ended, or
    after retention) writes event ids of its own: the first run's trail does not swallow it."""
    settings = _settings(tmp_path)
    pb = playbook(SIMPLE)
    workflow_id = f"twice-{uuid.uuid4()}"
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps:
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
            handles = []
            for _ in range(2):
                handle = await dev_env.client.start_workflow(
                    PlaybookRun.run, run_input(pb, requested_by="cli:carl"), id=workflow_id,
                    task_queue=worker.task_queue, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                )
                await handle.result()
                handles.append(handle)
    first, second = ((h.first_execution_run_id or "").replace("-", "") for h in handles)
    with SqliteAuditStore(default_path(settings)) as store:
        events = store.events(run_id=workflow_id)
        assert store.verify().ok
    mine = {run: [(e.kind.value, e.details.get("state")) for e in events if f"/{run}:" in e.event_id]
            for run in (first, second)}
    assert mine[first] == [("run_started", None), ("step_started", None), ("step_succeeded", None),
                           ("run_finished", "completed")]
    # The worker refuses a run id already used (a run id names one run): that refusal is the second
    # execution's story, and it is on the record beside the first's.
    assert mine[second] == [("run_finished", "cancelled")]
    assert len(events) == 5
