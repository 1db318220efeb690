"""A real PostgreSQL for the tests: Debian's initdb and pg_ctl in a temporary directory.

Each pytest(-xdist) worker process starts its own cluster (a unix socket in its directory and a
free TCP port on 127.0.0.1), and each test gets its own database, so tests never share state.
Run as root (CI, containers), the server runs as the `postgres` user through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """Debian's versioned directory (newest first), else initdb on PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    return None


def _version(path: str) -> int:
    name = Path(path).parent.name
    return int(name) if name.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgCluster:
    """One initdb'd cluster: `start()`, `stop()` (the outage tests), `create_database()`."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="pbpg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale")
        with open(self.data / "postgresql.conf", "a") as conf:  # the owner (postgres) can still read it
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
            if not durable:  # a test cluster: nothing here must survive a power cut, and the machine is shared
                conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        """Start; when another process took the free port meanwhile (xdist workers pick theirs at
        the same time), pick another and try again."""
        for attempt in range(5):
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "120", "start")
                return
            except RuntimeError:
                log = (self.root / "server.log").read_text(errors="replace")
                if "could not bind" not in log and "already in use" not in log or attempt == 4:
                    raise
                self.port = _free_port()
                with open(self.data / "postgresql.conf", "a") as conf:
                    conf.write(f"port = {self.port}\n")
                (self.root / "server.log").unlink()

    def running(self) -> bool:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0

    def start_if_stopped(self) -> None:
        """A test that stopped the server and failed before restarting it must not take the others down."""
        if not self.running():
            self.start()

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop")

    def url(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def create_role(self, name: str, dbname: str) -> None:
        """A login role that owns nothing (what the bot should run as)."""
        with self.admin(dbname) as conn:
            conn.execute(f'CREATE ROLE "{name}" LOGIN')

    def destroy(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def cluster(bindir: Path, *, durable: bool = False) -> Iterator[PgCluster]:
    pg = PgCluster(bindir, durable=durable)
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()
