"""The catalog a running front door or worker serves, reloaded when PLAYBOOKS_DIR changes.

Edits (or a merge in the Git repository that holds the playbooks) are picked up without a restart:
the directory is polled (cheap: names, sizes and mtimes, no reads) and reloaded on SIGHUP. A file
whose new version loads replaces the old one; a file that no longer loads keeps the version it
had, with its `validate` error logged and shown by /readyz until it is fixed; a removed file's
playbooks go. Runs keep the snapshot they started with (their input carries it).

Front doors and workers reload on their own clocks, so for a short while one may start a version
the other has just replaced: a worker still admits a version it replaced less than RETIRED_GRACE
seconds ago (`Catalog.retired`), instead of refusing a run a front door has already answered for.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from bot.playbook.loader import (
    PLAYBOOK_SUFFIXES,
    Catalog,
    LoadedPlaybook,
    PlaybookLoadErrors,
    declared_name,
    load_directory,
)

log = structlog.get_logger(__name__)

RETIRED_GRACE = 60.0  # seconds a replaced version is still admitted (see the module docstring)

Signature = tuple[tuple[str, int, int, int, int], ...]
Listener = Callable[[Catalog], Awaitable[None]]


def catalog_hash(catalog: Catalog) -> str:
    """One hash for the set of (name, content hash) a process serves: equal on every replica that
    serves the same playbooks, whatever their file names or order."""
    digest = hashlib.sha256()
    for name, loaded in catalog.items():
        digest.update(f"{name}\0{loaded.hash}\n".encode())
    return "sha256:" + digest.hexdigest()


def directory_signature(directory: Path) -> Signature:
    """(name, mtime_ns, size, inode, ctime_ns) of every playbook-looking file: a change of any
    means look again (inode and ctime: a kept or reset mtime hides an edit of the same size)."""
    entries = []
    try:
        paths = sorted(directory.iterdir()) if directory.is_dir() else [directory]
    except OSError:
        return ()
    for path in paths:
        if path.suffix not in PLAYBOOK_SUFFIXES:
            continue
        try:
            stat = path.stat()  # follows symlinks: a Kubernetes ConfigMap swaps its link on update
        except OSError:
            continue
        entries.append((path.name, stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns))
    return tuple(entries)


class LiveCatalog:
    """Callable: `live()` is the current Catalog (what `deps.catalog` expects everywhere)."""

    SETTLE = 1.0  # seconds a changed file must have been left alone before it is read (_unsettled)

    def __init__(self, directory: Path, catalog: Catalog, *, errors: str | None = None,
                 grace: float = RETIRED_GRACE, signature: Signature | None = None) -> None:
        """`signature`: the directory's, taken before `catalog` was read (an edit in between is
        then seen by the first check); default: taken now."""
        self.directory = Path(directory)
        self.grace = grace
        self._catalog = catalog
        self._signature = signature if signature is not None else directory_signature(self.directory)
        self._retired: dict[tuple[str, str], float] = {}  # (name, hash) -> admitted until (monotonic)
        self._listeners: list[Listener] = []
        self._telling = asyncio.Lock()  # the listeners' turns, one reload at a time
        self._behind: set[asyncio.Future[None]] = set()  # listeners told behind an admission's reload
        self._checking = threading.Lock()
        self._pending: frozenset[tuple[str, int, int, int, int]] = frozenset()  # _unsettled's last change seen
        self._pending_since = time.monotonic()
        self.errors = errors  # the current `validate` errors, None when every file loads
        self.hash = catalog_hash(catalog)
        catalog.retired = self._admitted_retired

    def __call__(self) -> Catalog:
        return self._catalog

    def facts(self) -> dict[str, object]:
        """What /readyz reports: the catalog hash, how many playbooks, and the errors kept off."""
        return {"hash": self.hash, "playbooks": len(self._catalog), "errors": self.errors}

    def on_change(self, listener: Listener) -> None:
        """`listener(catalog)` runs after every reload that changed what is served (e.g. schedules)."""
        self._listeners.append(listener)

    def check(self, *, force: bool = False, wait: bool = False) -> bool:
        """Reload if the directory changed (or `force`); True when what is served changed. One at a
        time (the watcher's thread and an admission's refresh may both ask). A change younger than
        SETTLE is left to the next poll, or, forced or with `wait`, waited for."""
        with self._checking:
            return self._check(force, wait or force)

    def _check(self, force: bool, wait: bool) -> bool:
        signature = directory_signature(self.directory)
        if not force and signature == self._signature:
            return False
        waited = 0.0
        while (young := self._unsettled(signature)) > 0:
            if not wait or waited >= 3 * self.SETTLE:
                return False  # looked at again at the next poll (a writer still at it: not read now)
            time.sleep(young)  # (a SIGHUP, an admission's refresh: SETTLE a look, a few looks at most)
            waited += young
            signature = directory_signature(self.directory)  # looked at again: still being written?
        if not self.directory.exists():  # mid-swap (a checkout, a ConfigMap update): serve what we have
            errors: str | None = f"{self.directory}: no such file or directory"
            if errors != self.errors:
                log.error("playbooks directory is gone; still serving the previous catalog", directory=str(self.directory))
            self.errors = errors
            self._signature = signature
            return False
        try:
            fresh, errors = load_directory(self.directory), None
        except PlaybookLoadErrors as exc:
            fresh, errors = self._keep_previous(exc), str(exc)
        except Exception as exc:  # a bug, or the filesystem: say so where /readyz shows it, then retry
            self.errors = f"{self.directory}: cannot load: {type(exc).__name__}: {exc}"
            log.error("playbooks not reloaded; still serving the previous catalog", error=self.errors)
            return False
        # Only now: a read that raised anything else (an I/O error mid-checkout) is tried again next time.
        self._signature = signature
        if errors != self.errors:
            if errors:
                log.error("playbooks reloaded with errors: the files that do not load keep their previous version",
                          errors=errors, directory=str(self.directory))
            else:
                log.info("playbooks load cleanly again", directory=str(self.directory))
        self.errors = errors
        new_hash = catalog_hash(fresh)
        if new_hash == self.hash:
            return False
        self._retire(fresh)
        old = self._catalog
        self._catalog, self.hash = fresh, new_hash
        log.info("playbooks reloaded", catalog_hash=new_hash, playbooks=len(fresh),
                 added=sorted(set(fresh.names()) - set(old.names())),
                 removed=sorted(set(old.names()) - set(fresh.names())),
                 changed=sorted(n for n in fresh.names() if n in old and old.get(n).hash != fresh.get(n).hash))
        return True

    def _unsettled(self, signature: Signature) -> float:
        """Seconds (at most SETTLE) until the files changed since the last read were left alone for
        SETTLE (0: they were). A writer that is not atomic (scp, `rsync --inplace`, `cat >`) leaves a
        prefix of the file on disk for a moment, and a prefix that parses was served (red team: the
        restart step without its `impact: high`). Measured from each changed file's ctime, which no
        writer sets; a ctime ahead of this clock (skew, a shared volume) by how long this process has
        itself seen the change unchanged (review: counting it settled turned the wait off there)."""
        seen = set(self._signature or ())
        changed = frozenset(entry for entry in signature if entry not in seen)
        if changed != self._pending:  # a change not seen before (or more of it): watched from now
            self._pending, self._pending_since = changed, time.monotonic()
        watched = time.monotonic() - self._pending_since
        now = time.time_ns()
        # A ctime ahead of this clock (skew) says nothing: what this process saw itself decides.
        ages = [age if age >= 0 else watched for age in ((now - entry[4]) / 1e9 for entry in changed)]
        return max(0.0, self.SETTLE - min(ages)) if ages else 0.0

    def _keep_previous(self, exc: PlaybookLoadErrors) -> Catalog:
        """The playbooks that load now, plus the previous version of each file that no longer loads."""
        loaded: dict[str, LoadedPlaybook] = {name: lp for name, lp in exc.catalog.items()}
        broken = {Path(e.path).name for e in exc.errors if e.path is not None}
        paths = {lp.path.name for lp in loaded.values()}
        for name, previous in self._catalog.items():
            if previous.path.name in broken and previous.path.name not in paths and name not in loaded:
                loaded[name] = previous
            elif (name in loaded and loaded[name].path.name != previous.path.name
                  and declared_name(previous.path) == name):
                # A second file claiming a served name does not take it over while the file that
                # served it still names it (red team: a copy made to try an edit sorts first,
                # "echo-copy.yaml" before "echo.yaml", and its steps became what every new run of
                # that name ran): its holder keeps it.
                loaded[name] = previous  # (as served: it passed the directory's checks, calls included)
        return Catalog(loaded.values())

    def _retire(self, fresh: Catalog) -> None:
        """Remember the versions `fresh` replaces, for RETIRED_GRACE seconds."""
        now = time.monotonic()
        for name, previous in self._catalog.items():
            if name not in fresh or fresh.get(name).hash != previous.hash:
                self._retired[(name, previous.hash)] = now + self.grace
        self._retired = {key: until for key, until in self._retired.items() if until > now}
        fresh.retired = self._admitted_retired

    def _admitted_retired(self, name: str, content_hash: str) -> bool:
        until = self._retired.get((name, content_hash))
        return until is not None and until > time.monotonic()

    async def reload(self, *, force: bool = False, listeners_behind: bool = False, wait: bool = False) -> bool:
        """`check` in a thread (it reads files), then the listeners when something changed: awaited,
        or, with `listeners_behind` (a run's admission, which reloads a catalog it is behind), run
        behind it, so a schedule sync (Temporal calls per schedule) never holds a run's check."""
        changed = await asyncio.to_thread(self.check, force=force, wait=wait)
        if changed:
            if listeners_behind:
                behind = asyncio.ensure_future(self._tell_listeners())
                self._behind.add(behind)
                behind.add_done_callback(self._behind.discard)
            else:
                await self._tell_listeners()
        return changed

    async def _tell_listeners(self) -> None:
        """Every listener, with the catalog served when it begins; one reload's turn at a time, so
        two schedule syncs never interleave."""
        async with self._telling:
            catalog = self._catalog
            for listener in self._listeners:
                try:
                    await listener(catalog)
                except Exception:  # a listener's failure is its own; the catalog is already served
                    log.exception("catalog listener failed after a reload")

    async def watch(self, interval: float | None, stop: asyncio.Event, on_hangup: Callable[[], None] | None = None) -> None:
        """Poll every `interval` seconds and on SIGHUP (then also calling `on_hangup`: `dev` passes it
        on to its worker child), until `stop` is set."""
        hangup = asyncio.Event()
        loop = asyncio.get_running_loop()

        def hung_up() -> None:
            hangup.set()
            if on_hangup is not None:
                on_hangup()

        try:
            loop.add_signal_handler(signal.SIGHUP, hung_up)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            pass
        try:
            while not stop.is_set():
                waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hangup.wait())}
                _, pending = await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    waiter.cancel()
                if stop.is_set():
                    return
                forced = hangup.is_set()
                hangup.clear()
                if forced:
                    log.info("SIGHUP: reloading playbooks", directory=str(self.directory))
                try:
                    await self.reload(force=forced)
                except Exception:  # never let a reload bug stop the process serving the catalog it has
                    log.exception("playbook reload failed; still serving the previous catalog")
        finally:
            try:
                loop.remove_signal_handler(signal.SIGHUP)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
