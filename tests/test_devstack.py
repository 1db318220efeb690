"""The embedded Temporal dev server: starts on the ports it is given with its SQLite file (WAL)
under DATA_DIR, records itself for other commands, refuses what would clash, and stops cleanly."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest
from temporalio.client import Client

from bot.devstack import RECORD_FILE, DevServer, DevServerError, DevServerRecord, read_record, start_time
from tests.e2e.support import free_port, pid_alive


async def test_start_record_wal_and_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port, ui_port = free_port(), free_port()
    data.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    # What a SIGKILLed `dev` leaves behind: a record whose pid is gone. It must not block a start.
    (data / RECORD_FILE).write_text(f'{{"address": "127.0.0.1:1", "ui_url": "http://x", "pid": {dead.pid}}}')
    dev = DevServer(data, port=port, ui_port=ui_port)
    try:
        await dev.start()
        assert dev.process is not None
        pid = dev.process.pid

        record = read_record(data)
        assert record == DevServerRecord(
            address=f"127.0.0.1:{port}", ui_url=f"http://127.0.0.1:{ui_port}", pid=pid,
            started=start_time(pid), owner=os.getpid(), owner_started=start_time(os.getpid()),
        )
        assert record.started is not None and record.owner_alive()
        client = await Client.connect(record.address)
        assert await client.service_client.check_health()

        # Unthrottled transfer reads: a new run's first task reaches its worker in about 5 ms, not up
        # to 50 (the history service's default of 20 reads a second; measured in stop 44).
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"history.transferProcessorMaxPollRPS=1000" in argv

        assert dev.db_path == data / "temporal.db" and dev.db_path.exists()
        with sqlite3.connect(f"file:{dev.db_path}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

        # A second server on the same data dir would fight over the SQLite file: refused, by pid.
        second = DevServer(data, port=free_port(), ui_port=free_port())
        with pytest.raises(DevServerError, match=rf"already running \(pid {pid}"):
            await second.start()
        assert second.process is None
        assert read_record(data) == record, "the refused start must leave the running server's record alone"
        assert await client.service_client.check_health()
    finally:
        await dev.stop()

    assert not (data / RECORD_FILE).exists()
    assert read_record(data) is None
    assert not pid_alive(pid)
    with pytest.raises(RuntimeError):
        await Client.connect(f"127.0.0.1:{port}")


@pytest.mark.parametrize("which", ["grpc", "ui"])
async def test_taken_port_names_port_and_setting(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        if which == "grpc":
            dev = DevServer(tmp_path, port=busy, ui_port=free_port())
            setting = "PLAYBOOK_BOT_DEV_SERVER_PORT"
        else:
            dev = DevServer(tmp_path, port=free_port(), ui_port=busy)
            setting = "PLAYBOOK_BOT_DEV_SERVER_UI_PORT"
        try:
            with pytest.raises(DevServerError) as info:
                await dev.start()
        finally:
            await dev.stop()
    message = str(info.value)
    assert f"port {busy}" in message and setting in message, message
    assert dev.process is None
    assert not (tmp_path / RECORD_FILE).exists()
    assert not (tmp_path / "temporal.log").exists(), "nothing should have been started"


def test_read_record_ignores_dead_and_garbled_records(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    (tmp_path / RECORD_FILE).write_text("{not json")
    assert read_record(tmp_path) is None

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / RECORD_FILE).write_text(f'{{"address": "127.0.0.1:1", "ui_url": "http://x", "pid": {dead.pid}}}')
    assert read_record(tmp_path) is None

    (tmp_path / RECORD_FILE).write_text('{"address": "127.0.0.1:1", "ui_url": "http://x", "pid": %d}' % 1)
    assert read_record(tmp_path) == DevServerRecord("127.0.0.1:1", "http://x", 1)  # pid 1 always lives


@pytest.mark.parametrize("pid", [0, -1])
def test_read_record_refuses_pids_that_name_groups(tmp_path: Path, pid: int) -> None:
    (tmp_path / RECORD_FILE).write_text(json.dumps({"address": "127.0.0.1:1", "ui_url": "http://x", "pid": pid}))
    assert read_record(tmp_path) is None
    (tmp_path / RECORD_FILE).write_text(json.dumps({"address": "a", "ui_url": "u", "pid": 1, "owner": pid}))
    assert read_record(tmp_path) is None
    (tmp_path / RECORD_FILE).write_text(json.dumps({"address": "a", "ui_url": "u", "pid": 1, "started": "soon"}))
    assert read_record(tmp_path) is None


def dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def write_record(data: Path, record: DevServerRecord) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / RECORD_FILE).write_text(json.dumps(record.__dict__))


async def test_orphan_whose_owner_is_gone_is_stopped_and_the_start_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    orphan = DevServer(data, port=free_port(), ui_port=free_port())
    await orphan.start()
    successor = DevServer(data, port=orphan.port, ui_port=orphan.ui_port)  # the orphan holds these ports
    try:
        record = read_record(data)
        assert record is not None and orphan.process is not None
        write_record(data, DevServerRecord(**{**record.__dict__, "owner": dead_pid()}))  # as a SIGKILLed dev leaves it
        assert not read_record(data).owner_alive()

        await successor.start()
        assert orphan.process.returncode is not None or not pid_alive(record.pid), "the orphan was stopped"
        now = read_record(data)
        assert now is not None and now.pid == successor.process.pid != record.pid and now.owner == os.getpid()
        assert await (await Client.connect(successor.address)).service_client.check_health()
    finally:
        await successor.stop()
        await orphan.stop()


async def test_a_recorded_pid_that_is_not_our_server_is_never_signalled(tmp_path: Path) -> None:
    """The pid was reused by an unrelated process, or names a dev server of another data dir:
    with its owner gone the record is stale, so the start goes on and that process lives."""
    unrelated = subprocess.Popen(["sleep", "300"])
    other = DevServer(tmp_path / "other", port=free_port(), ui_port=free_port())
    data = tmp_path / "data"
    mine = DevServer(data, port=free_port(), ui_port=free_port())
    try:
        await other.start()
        other_record = read_record(tmp_path / "other")
        assert other_record is not None
        owner_gone = {"owner": dead_pid(), "owner_started": 1}
        sleeper = DevServerRecord("127.0.0.1:1", "http://x", unrelated.pid, started=start_time(unrelated.pid))
        stale = [
            DevServerRecord(**{**sleeper.__dict__, **owner_gone, "started": sleeper.started + 1}),  # pid reused
            DevServerRecord(**{**sleeper.__dict__, **owner_gone}),  # the very process, but not a dev server
            DevServerRecord(**{**other_record.__dict__, **owner_gone}),  # a dev server, of another data dir
        ]
        for record in stale:
            write_record(data, record)
            await mine.start()
            assert read_record(data).pid == mine.process.pid
            await mine.stop()
            assert unrelated.poll() is None and pid_alive(unrelated.pid), record
            assert other.process.returncode is None and pid_alive(other_record.pid), record
    finally:
        unrelated.kill()
        unrelated.wait()
        await mine.stop()
        await other.stop()


def test_a_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    """A port from the ephemeral range can be taken by any bind to 0 or outgoing connection before
    the server binds it (a test's dev server failed so in CI: address already in use)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
