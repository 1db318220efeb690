"""Playbooks reloaded under running processes (bot/playbook/reload.py): valid edits picked up, an
invalid one refused with its error while the previous version is kept, removed files dropped;
and the same end to end, a front door and a `playbook-bot worker` process reloading while alerts
arrive."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.engine.runs import get_status
from bot.engine.worker import open_policy_and_audit
from bot.playbook.loader import Catalog, load_directory
from bot.playbook.reload import LiveCatalog, catalog_hash, directory_signature
from bot.server import Readiness, create_app
from bot.lifecycle import Http, load_catalog, watch_catalog
from bot.services import front_door
from bot.settings import Settings
from tests.reliability.alertmanager_support import (
    AUTH,
    ENVELOPE_KEY,
    ROOT,
    TOKEN,
    WorkerProcess,
    firing,
    webhook,
)
from tests.waiting import eventually, terminate_open
from bot.devstack import free_port


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests write a file and look at once: the settle time (a changed file left alone 1 s
    before it is read) is the half-written file's test's alone."""
    monkeypatch.setattr(LiveCatalog, "SETTLE", 0.0)


def echo(version: str, name: str = "echo") -> str:
    return f"""
name: {name}
params: {{instance: {{type: string}}}}
triggers:
  alertmanager:
    - matchers: ['alertname="Echo"']
      params: {{instance: "{{{{ alert.labels.instance }}}}"}}
steps:
  - {{id: say, action: core.log, with: {{message: "{version} {{{{ params.instance }}}}"}}}}
"""


BROKEN = "name: echo\nsteps:\n  - {id: say, action: core.nope}\n"


def write(directory: Path, name: str, text: str) -> None:
    """Replace a file as an editor or a checkout does (a new inode, a new mtime)."""
    temporary = directory / f".{name}.tmp"
    temporary.write_text(text)
    os.replace(temporary, directory / name)


def live_over(tmp_path: Path, **files: str) -> LiveCatalog:
    directory = tmp_path / "playbooks"
    directory.mkdir()
    for name, text in files.items():
        write(directory, name, text)
    settings = Settings(playbooks_dir=directory, data_dir=tmp_path / "data")
    return load_catalog(settings)


def message(catalog: Catalog, name: str = "echo") -> str:
    return catalog.get(name).playbook.steps[0].with_["message"]


def test_a_valid_edit_replaces_the_version_served(tmp_path):
    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    first = live.hash
    assert live.check() is False, "nothing changed"
    write(live.directory, "echo.yaml", echo("v2"))
    assert live.check() is True
    assert message(live()).startswith("v2") and live.hash != first and live.errors is None
    assert live.hash == catalog_hash(live())


def test_an_invalid_edit_keeps_the_previous_version_and_says_why(tmp_path):
    live = live_over(tmp_path, **{"echo.yaml": echo("v1"), "other.yaml": echo("o1", name="other")})
    before = live.hash
    write(live.directory, "echo.yaml", BROKEN)
    write(live.directory, "other.yaml", echo("o2", name="other"))  # a valid edit beside it still lands
    assert live.check() is True
    assert message(live()).startswith("v1"), "the broken file keeps the version it had"
    assert message(live(), "other").startswith("o2")
    assert live.errors is not None and "echo.yaml" in live.errors and "core.nope" in live.errors
    assert live.hash != before
    write(live.directory, "echo.yaml", echo("v3"))
    assert live.check() is True
    assert message(live()).startswith("v3") and live.errors is None


def test_a_removed_file_goes_and_a_missing_directory_keeps_everything(tmp_path):
    live = live_over(tmp_path, **{"echo.yaml": echo("v1"), "other.yaml": echo("o1", name="other")})
    (live.directory / "other.yaml").unlink()
    assert live.check() is True
    assert live().names() == ["echo"]
    moved = live.directory.rename(tmp_path / "elsewhere")
    assert live.check() is False and live().names() == ["echo"], "mid-swap: serve what we have"
    assert live.errors is not None and "no such file or directory" in live.errors
    moved.rename(live.directory)
    live.check(force=True)
    assert live().names() == ["echo"] and live.errors is None


def test_a_replaced_version_is_admitted_for_a_grace_period_only(tmp_path):
    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    old = live().get("echo").hash
    write(live.directory, "echo.yaml", echo("v2"))
    live.check()
    new = live().get("echo").hash
    assert live().retired("echo", old) is True and live().retired("echo", new) is False
    assert live().retired("other", old) is False
    live.grace = 0.0
    write(live.directory, "echo.yaml", echo("v3"))
    live.check()
    assert live().retired("echo", new) is False, "no grace: a replaced version is refused at once"


async def test_sighup_reloads_when_polling_is_off(tmp_path):
    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    stop = asyncio.Event()
    watcher = asyncio.create_task(live.watch(None, stop))
    await asyncio.sleep(0.1)
    write(live.directory, "echo.yaml", echo("v2"))
    await asyncio.sleep(0.3)
    assert message(live()).startswith("v1"), "no polling: nothing happens until SIGHUP"
    os.kill(os.getpid(), signal.SIGHUP)
    await eventually(lambda: _async(message(live()).startswith("v2")), timeout=5, what="SIGHUP reload")
    stop.set()
    await watcher


async def _async(value: object) -> object:
    return value


@dataclass
class Doors:
    """A `playbook-bot worker` process and a front door in this process, both serving `directory`."""

    settings: Settings
    live: LiveCatalog
    worker: WorkerProcess
    url: str
    web: httpx.AsyncClient

    async def readyz(self, base: str) -> dict:
        return (await self.web.get(f"{base}/readyz")).json().get("catalog") or {}


@asynccontextmanager
async def doors(client, tmp_path: Path, *, watch: bool = True, **worker_settings) -> AsyncIterator[Doors]:
    """echo v1 in a fresh playbooks directory; the front door reloads every 0.2 s (`watch`)."""
    directory = tmp_path / "playbooks"
    directory.mkdir()
    write(directory, "echo.yaml", echo("v1"))
    settings = Settings(data_dir=tmp_path / "data", playbooks_dir=directory, policies_dir=ROOT / "policies",
                        http_port=free_port(), alertmanager_token=TOKEN, envelope_key=ENVELOPE_KEY,
                        task_queue=f"tq-{uuid.uuid4()}", playbooks_reload_interval=0.2)
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=30) as web:
        worker = WorkerProcess(settings, client.service_client.config.target_host, tmp_path / "logs", **worker_settings)
        stack.callback(worker.stop)
        await worker.ready(web)
        policy, audit = await open_policy_and_audit(stack, settings)
        live = load_catalog(settings)
        if watch:
            watch_catalog(stack, settings, live, asyncio.Event())
        app = create_app(Readiness(facts={"catalog": live.facts}), front_door(settings, client, live, policy, audit))
        http = Http(settings, app)
        await http.start()
        stack.push_async_callback(http.stop)
        stack.push_async_callback(terminate_open, client, settings.task_queue)
        yield Doors(settings, live, worker, f"http://127.0.0.1:{settings.http_port}", web)


async def deliver(door: Doors, instance: str) -> str:
    """One new alert episode; its run id (the front door answered `started`)."""
    body = webhook([firing(uuid.uuid4().hex[:16], "Echo", instance=instance)])
    response = await door.web.post(f"{door.url}/alertmanager", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    [outcome] = response.json()
    assert outcome["outcome"] == "started", outcome
    return outcome["run_id"]


@pytest.mark.chaos  # `make chaos`: see below
async def test_a_front_door_and_a_worker_process_reload_while_alerts_arrive(dev_env, tmp_path):
    """valid v1, then v2, then a broken file, then v3: every alert is answered 200 and its run
    completes (never refused by the worker for a version mismatch), each with the version both
    processes serve at the time; /readyz shows the same catalog hash on both, and the error.

    Out of `make test` for now: in 2 of 3 full-suite runs on 2 cores (never alone, nor beside the
    heaviest modules) the worker, after agreeing on v2, reported v1's catalog hash once the broken
    file arrived, and refused the front door's v2 runs. Refusing is the safe failure, but it is
    unexplained: under investigation (stop 22's note)."""
    client = dev_env.client
    async with doors(client, tmp_path) as door:
        directory, live = door.settings.playbooks_dir, door.live
        sent: list[tuple[str, str]] = []  # (run id, the version served when it was answered)

        async def send(instance: str) -> None:
            run_id = await deliver(door, instance)
            sent.append((run_id, message(live()).split()[0]))

        async def both_serve(version: str, errors: bool = False) -> None:
            async def agreed() -> bool:
                # Hashes equal, and both with or without errors (their text lists the actions each
                # process registered: a test process may hold test-only ones).
                ours, theirs = await door.readyz(door.url), await door.readyz(door.worker.url)
                return (message(live()).startswith(version) and ours["hash"] == theirs["hash"]
                        and ours["playbooks"] == theirs["playbooks"]
                        and (ours["errors"] is not None) == (theirs["errors"] is not None) == errors)
            try:
                await eventually(agreed, timeout=60, what=f"both processes serving {version}")
            except AssertionError as exc:
                ours, theirs = await door.readyz(door.url), await door.readyz(door.worker.url)
                raise AssertionError(f"{exc}\nfront door {ours}\nworker {theirs}\n"
                                     f"worker log:\n{door.worker.service.stderr()[-3000:]}") from None

        async def steady_alerts(done: asyncio.Event) -> None:
            n = 0
            while not done.is_set():
                n += 1
                await send(f"steady-{n}")
                await asyncio.sleep(0.2)

        done = asyncio.Event()
        steady = asyncio.create_task(steady_alerts(done))
        await both_serve("v1")
        write(directory, "echo.yaml", echo("v2"))
        await both_serve("v2")
        write(directory, "echo.yaml", BROKEN)
        await both_serve("v2", errors=True)
        for base in (door.url, door.worker.url):
            readyz = await door.readyz(base)
            assert "echo.yaml" in readyz["errors"] and "core.nope" in readyz["errors"], (base, readyz)
        await send("while-broken")
        write(directory, "echo.yaml", echo("v3"))
        await both_serve("v3")
        await send("after-fix")
        done.set()
        await steady

        assert {version for _, version in sent} >= {"v1", "v2", "v3"}
        for run_id, version in sent:
            status = await eventually(lambda: _finished(client, run_id), timeout=60, what=f"{run_id} finished")
            assert status.state == "completed", (run_id, status.state, status.error)
            said = status.steps[0].output["message"].split()[0]
            # Answered while the front door served `version`; it started the version it served just
            # before or after answering (a reload may land in between), never another.
            assert said in {"v1", "v2", "v3"} and abs(int(said[1]) - int(version[1])) <= 1, (run_id, said, version)


async def test_a_worker_behind_the_front_door_reloads_at_admission(dev_env, tmp_path):
    """The worker polls only on SIGHUP here, so it has not seen the edit the front door serves: its
    admission reloads before refusing a version it does not know, and the run completes."""
    client = dev_env.client
    async with doors(client, tmp_path, watch=False, playbooks_reload_interval=0) as door:
        write(door.settings.playbooks_dir, "echo.yaml", echo("v2"))
        assert door.live.check() is True
        assert (await door.readyz(door.worker.url))["hash"] != door.live.hash, "the worker has not reloaded yet"
        run_id = await deliver(door, "late")
        status = await eventually(lambda: _finished(client, run_id), timeout=60, what="the run finished")
        assert status.state == "completed", (status.state, status.error)
        assert status.steps[0].output["message"] == "v2 late"
        assert (await door.readyz(door.worker.url))["hash"] == door.live.hash


async def _finished(client, run_id):
    status = await get_status(client, run_id)
    return status if status.state in ("completed", "failed", "compensated", "cancelled", "refused") else None


def test_an_edit_between_reading_and_watching_is_seen_by_the_first_check(tmp_path):
    """The signature is the directory's before the catalog was read: an edit that lands while a
    process starts is picked up, not mistaken for the state it already serves."""
    directory = tmp_path / "playbooks"
    directory.mkdir()
    write(directory, "echo.yaml", echo("v1"))
    before = directory_signature(directory)
    catalog = load_directory(directory)
    write(directory, "echo.yaml", echo("v2") + "\n")  # lands after the read, before the watcher starts
    live = LiveCatalog(directory, catalog, signature=before)
    assert live.check() is True and message(live()).startswith("v2")


def test_a_read_that_fails_is_tried_again_at_the_next_check(tmp_path, monkeypatch):
    """An I/O error mid-read (a checkout in progress) must not mark the edit as seen."""
    import bot.playbook.reload as reload

    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    write(live.directory, "echo.yaml", echo("v2"))
    real = reload.load_directory

    def failing(directory):
        monkeypatch.setattr(reload, "load_directory", real)
        raise OSError("read interrupted")

    monkeypatch.setattr(reload, "load_directory", failing)
    try:
        live.check()
    except OSError:
        pass
    assert message(live()).startswith("v1")
    assert live.check() is True and message(live()).startswith("v2")


async def test_a_reload_at_admission_does_not_wait_for_the_listeners(tmp_path):
    """A run's admission reloads a catalog it is behind; what listens to reloads (the worker's
    schedule sync, Temporal calls per schedule) runs behind it, so the run's check is not held up
    by it, and two syncs never interleave. A plain reload (the watcher's) still waits for them."""
    live = live_over(tmp_path, **{"echo.yaml": echo("v1")})
    release, seen, running = asyncio.Event(), [], [0]

    async def slow_sync(catalog: Catalog) -> None:
        running[0] += 1
        assert running[0] == 1, "two syncs at once"
        await release.wait()
        seen.append(message(catalog))
        running[0] -= 1

    live.on_change(slow_sync)
    write(live.directory, "echo.yaml", echo("v2"))
    assert await asyncio.wait_for(live.reload(listeners_behind=True), 2) is True
    assert message(live()).startswith("v2") and seen == [], "admission's reload returned before the sync"
    write(live.directory, "echo.yaml", echo("v3"))
    waiting = asyncio.ensure_future(live.reload())  # the watcher's: waits, behind the sync under way
    await asyncio.sleep(0.1)
    assert not waiting.done()
    release.set()
    assert await asyncio.wait_for(waiting, 2) is True
    assert [m.split()[0] for m in seen] == ["v2", "v3"], "each sync, one after the other, with the catalog served when it began"
