"""Embedded backend: the policies/ directory evaluated with rego-cpp in a child process.

Used when no OPA server is configured (dev stack, tests). The child is started once and kept;
each decision is one request over a pipe. Policy files are re-read when they change: a broken
edit turns every answer into a deny naming the file and line until it is fixed, and a crash of
the child is answered with denies while it restarts.

Answers are remembered per (policy hash, rule, input digest) while the policy stays loaded
(bot.policy.decision_cache): a repeated question never crosses the pipe. Only values the policy
computed are kept; undefined, errors and every fail-closed deny are asked again next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from bot.policy import wire
from bot.policy.decision_cache import DecisionCache, unstable_builtin
from bot.policy.engine import FailClosed, RULES, entrypoint, rule_path
from bot.policy.errors import PolicyLoadError
from bot.policy.models import Failure, Provenance, canonical_json
from bot.policy.rego_process import ChildCrashed, ChildTimeout, RegoProcess, run_once
from bot.policy.sources import PolicySources, read_sources, tree_signature

log = structlog.get_logger(__name__)

LOAD_TIMEOUT = 30.0  # compiling is slower than deciding; a stuck compile is still an error
# `verdict_hash` vouches for the files as last checked: a check at least this often (seconds) is
# kept up by a watch while the engine is loaded, so it holds even when nobody asks a question.
CHECK_EVERY_MIN = 0.25
CHECK_SLACK = 1.0  # a watch pass late by this much (a busy loop) still counts as current
Key = tuple[str, str, str]  # (policy hash, rule, input digest): a cached or pending question


class _AskerGone(Exception):
    """The question's first asker was cancelled before its answer: the next asks it again."""


def _load_request(sources: PolicySources) -> dict[str, Any]:
    return {
        "op": "load",
        "modules": sources.modules,
        "data": sources.data,
        "entrypoints": [entrypoint(rule) for rule in RULES],
    }


def _require_modules(sources: PolicySources) -> None:
    if not sources.modules:
        raise PolicyLoadError(f"no .rego policies in {sources.root}")


def _crash_culprit(sources: PolicySources) -> str | None:
    """Compile each module in its own child to name the file that takes rego-cpp down."""
    for name, source in sources.modules.items():
        single = PolicySources(sources.root, {name: source}, sources.data, sources.hash)
        try:
            run_once([_load_request(single)], timeout=LOAD_TIMEOUT)
        except (ChildCrashed, ChildTimeout):
            return name
    return None


def _crash_error(exc: Exception, culprit: str | None) -> PolicyLoadError:
    return PolicyLoadError(f"policy engine crashed while compiling the policies ({exc})", file=culprit)


def load_policies(policies_dir: Path | str) -> PolicySources:
    """Read and compile policies_dir once, for start-up checks (`dev`, `worker`, `validate`).

    Raises PolicyLoadError naming the file and line of the first error.
    """
    sources = read_sources(Path(policies_dir))
    _require_modules(sources)
    try:
        [answer] = run_once([_load_request(sources)], timeout=LOAD_TIMEOUT)
    except (ChildCrashed, ChildTimeout) as exc:
        raise _crash_error(exc, _crash_culprit(sources)) from exc
    if not answer.get("ok"):
        raise PolicyLoadError.from_wire(answer.get("error") or {})
    return sources


class EmbeddedEngine(FailClosed):
    """PolicyEngine over a local policies directory; see the module docstring."""

    name = "embedded"

    def __init__(
        self,
        policies_dir: Path | str,
        *,
        timeout: float = 2.0,
        reload_interval: float = 1.0,
        restart_delay: float = 0.05,
        max_restart_delay: float = 5.0,
        cache_size: int = 4096,
    ) -> None:
        self.policies_dir = Path(policies_dir)
        self.timeout = timeout
        # Files are stat'ed at most this often (seconds); 0 checks before every decision.
        self.reload_interval = reload_interval
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self._lock = asyncio.Lock()
        self._proc: RegoProcess | None = None
        self._loaded: PolicySources | None = None
        self._load_error: PolicyLoadError | None = None
        self._signature: tuple[Any, ...] | None = None
        self._next_check = 0.0
        self._restart_task: asyncio.Task[None] | None = None
        self._crash_note: str | None = None
        self._consecutive_crashes = 0
        self._closing = False  # close() began: a question failing on the stopped child restarts nothing
        self.cache = DecisionCache(cache_size)
        # Questions being answered, each with the child asked: identical ones wait for its answer.
        self._asking: dict[Key, tuple[RegoProcess, asyncio.Future[dict[str, Any]]]] = {}
        self._cacheable = False  # the loaded policy answers from its input alone (and the cache is on)
        self._pure = False  # the loaded policy answers from its input alone
        self._installing = False  # a changed policy is being compiled: the loaded one is on its way out
        self._checked_at = -float("inf")  # time.monotonic() of the last look at the files
        self._watch_task: asyncio.Task[None] | None = None

    # --- PolicyEngine -------------------------------------------------------------------

    @property
    def policy_hash(self) -> str | None:
        return self._loaded.hash if self._loaded is not None else None

    @property
    def verdict_hash(self) -> str | None:
        """The loaded policy's hash while it is the one this engine would answer a question with:
        its files checked within the watch's period (a question checks them too), no changed policy
        being compiled, no failed reload (then this engine fails closed, and so must a verdict asked
        elsewhere). None too for a policy that reads more than its input (the clock, http.send...):
        its answer asked elsewhere is not the answer asked here."""
        if self._loaded is None or self._load_error is not None or self._installing or not self._pure:
            return None
        if time.monotonic() - self._checked_at > self._check_every() + CHECK_SLACK:
            return None
        return self._loaded.hash

    async def current_verdict_hash(self) -> str | None:
        """`verdict_hash` after the files' check a question makes (at most every reload_interval):
        a caller that uses an answer asked elsewhere instead of asking sees a change as soon as a
        question would have (the admission, bot/engine/admission.py)."""
        if self._restarting():
            return None
        async with self._lock:
            await self._reload()
        return self.verdict_hash

    @property
    def pid(self) -> int | None:
        """The child's process id (tests and operators kill it to check recovery)."""
        return self._proc.pid if self._proc is not None and self._proc.alive else None

    async def load(self) -> None:
        """Compile the policies now; raises PolicyLoadError when they cannot be loaded."""
        async with self._lock:
            await self._reload(force=True)
            if self._load_error is not None:
                raise self._load_error

    async def ready(self) -> bool:
        if self._restarting():
            return False
        async with self._lock:
            await self._reload()
            return self._load_error is None and self._proc is not None and self._proc.alive

    async def close(self) -> None:
        self._closing = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._restart_task is not None:
            self._restart_task.cancel()
            try:
                await self._restart_task
            except asyncio.CancelledError:
                pass
            self._restart_task = None
        async with self._lock:
            if self._proc is not None:
                await self._proc.stop()
                self._proc = None

    # --- evaluation ---------------------------------------------------------------------

    async def _query(
        self, rule: str, input: dict[str, Any]
    ) -> tuple[Any, Provenance, tuple[Failure, str] | None]:
        provenance = Provenance(decision_id=uuid.uuid4().hex, engine=self.name)
        try:
            # One serialisation: its digest is recorded and keys the cache, its bytes are sent.
            encoded = canonical_json(input).encode()
        except (TypeError, ValueError) as exc:
            return None, provenance, self._fail_closed(rule, Failure.INVALID_INPUT, f"policy input is not JSON: {exc}")
        provenance.input_digest = digest = hashlib.sha256(encoded).hexdigest()
        if len(encoded) > wire.MAX_INPUT:
            reason = f"policy input is too large for the embedded engine: {len(encoded)} bytes, the limit is {wire.MAX_INPUT} bytes"
            return None, provenance, self._fail_closed(rule, Failure.INVALID_INPUT, reason)
        if self._restarting():
            return None, provenance, self._restarting_failure(rule)
        if self._answers_from_cache():  # no await from here to the return: nothing changes meanwhile
            assert self._loaded is not None
            hit, value = self.cache.get((self._loaded.hash, rule, digest), count_miss=False)
            if hit:
                provenance.policy_hash = self._loaded.hash
                return value, provenance, None
        async with self._lock:  # held to check the files and find the child, not across its answer
            if self._restarting():
                return None, provenance, self._restarting_failure(rule)
            await self._reload()
            provenance.policy_hash = self.policy_hash
            if self._load_error is not None:
                reason = f"policy failed to load: {self._load_error}"
                return None, provenance, self._fail_closed(rule, Failure.LOAD_ERROR, reason)
            assert self._proc is not None and self._loaded is not None
            proc, loaded, cacheable = self._proc, self._loaded, self._cacheable
            key = (loaded.hash, rule, digest)
            if cacheable:  # again: an identical question may have been answered while we waited
                hit, value = self.cache.get(key)
                if hit:
                    return value, provenance, None
        # Pipelined (RegoProcess): concurrent questions queue in the child's pipe, not on the lock.
        # A policy installed meanwhile is queued behind this question, so this answer is still
        # the policy named in its provenance.
        try:
            answer = await self._ask(proc, rule, encoded, key if cacheable else None)
        except ChildTimeout:
            self._crashed(proc, f"evaluation of {rule_path(rule)} took longer than {self.timeout:g}s")
            reason = f"policy evaluation timed out after {self.timeout:g}s; restarting the policy engine"
            return None, provenance, self._fail_closed(rule, Failure.TIMEOUT, reason)
        except ChildCrashed as exc:
            self._crashed(proc, str(exc))
            said = f"{exc}; the engine is closing" if self._closing else f"{exc}; restarting it"
            return None, provenance, self._fail_closed(rule, Failure.ENGINE_CRASHED, said)
        self._consecutive_crashes = 0
        if not answer.get("ok"):
            error = answer.get("error") or {}
            message = error.get("message", "unknown error")
            if error.get("kind") == "input":
                reason = f"policy input is not valid for the embedded engine: {message}"
                return None, provenance, self._fail_closed(rule, Failure.INVALID_INPUT, reason)
            reason = f"policy evaluation failed: {rule_path(rule)}: {message}"
            return None, provenance, self._fail_closed(rule, Failure.EVAL_ERROR, reason)
        if not answer.get("defined"):
            reason = f"policy undefined: {rule_path(rule)} has no value for this input"
            return None, provenance, self._fail_closed(rule, Failure.UNDEFINED, reason)
        value = answer.get("value")
        if cacheable and self._loaded is loaded and self._cacheable:
            # The policy's own value, malformed or not: parsing it again gives the same answer.
            self.cache.put(key, value)
        return value, provenance, None

    async def _ask(self, proc: RegoProcess, rule: str, encoded: bytes, key: Key | None) -> dict[str, Any]:
        """The child's answer to one question; with a cache `key`, identical questions asked
        while it is being answered wait for that answer instead of asking again."""
        # Only a question to this same child is joined: one asked of a child that has since died
        # fails with that child, and its crash must not be read as this child's.
        while key is not None and (asking := self._asking.get(key)) is not None and asking[0] is proc:
            try:
                return await asyncio.shield(asking[1])
            except _AskerGone:  # its asker was cancelled before the answer: ask again
                continue
        mine = asyncio.get_running_loop().create_future() if key is not None else None
        if key is not None and mine is not None:
            self._asking[key] = (proc, mine)
        try:
            answer = await proc.request({"op": "eval", "entrypoint": entrypoint(rule)}, self.timeout, input=encoded)
        except BaseException as exc:
            if mine is not None:
                mine.set_exception(exc if isinstance(exc, Exception) else _AskerGone())
                mine.exception()  # nobody else may be waiting: not an unretrieved error
            raise
        else:
            if mine is not None:
                mine.set_result(answer)
        finally:
            if key is not None and (asking := self._asking.get(key)) is not None and asking[1] is mine:
                del self._asking[key]
        return answer

    def _answers_from_cache(self) -> bool:
        """Whether a hit may be served without the lock: the policy is loaded, healthy, not being
        replaced (_install turns _cacheable off), and not due for its change check."""
        return (
            self._cacheable
            and self._load_error is None
            and self._loaded is not None
            and time.monotonic() < self._next_check
        )

    def recheck(self) -> None:
        """Read the files again at the next question, changed-looking or not (SIGHUP)."""
        self._signature, self._next_check = None, 0.0

    # --- loading ------------------------------------------------------------------------

    async def _reload(self, force: bool = False) -> None:
        """Recompile when the files changed (checked at most every reload_interval)."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + self.reload_interval
        self._checked_at = now
        try:
            signature = tree_signature(self.policies_dir)  # (a symlink loop, an unreadable directory: raises)
            if not force and signature == self._signature and self._proc is not None:
                return
            sources = read_sources(self.policies_dir)
            _require_modules(sources)
        except Exception as exc:  # noqa: BLE001  whatever reading raised: closed, never the old policy
            # (Red team: a data file nested past the parser raised RecursionError, which passed by:
            # one question was denied, and the old policy answered the rest with /readyz green.)
            error = exc if isinstance(exc, PolicyLoadError) else PolicyLoadError(
                f"cannot read policies: {type(exc).__name__}: {exc}")
            self._signature = None  # read again at the next check, changed-looking or not
            self._set_load_error(error)
            return
        self._signature = signature
        unchanged = self._loaded is not None and sources.hash == self._loaded.hash
        if not force and unchanged and self._load_error is None and self._proc is not None and self._proc.alive:
            return  # touched, not changed
        await self._install(sources)

    async def _install(self, sources: PolicySources) -> None:
        self._installing = True
        try:
            await self._compile(sources)
        finally:
            self._installing = False
        if self._watch_task is None and not self._closing:
            self._watch_task = asyncio.create_task(self._watch())

    def _check_every(self) -> float:
        return max(self.reload_interval, CHECK_EVERY_MIN)

    async def _watch(self) -> None:
        """Look at the files every `_check_every()` even when no question does (a stat of the tree;
        a compile only when they changed), so `verdict_hash` stays current on an idle worker."""
        while not self._closing:
            await asyncio.sleep(self._check_every())
            if self._lock.locked() or self._restarting():
                continue  # a question or a restart is looking already
            try:
                async with self._lock:
                    await self._reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the watch die of one bad pass
                log.warning("policy.watch_failed", engine=self.name, error=str(exc))

    async def _compile(self, sources: PolicySources) -> None:
        self.cache.clear()
        self._cacheable = False  # until this policy has loaded: no hit while it is replaced
        if self._proc is None or not self._proc.alive:
            if self._proc is not None:
                await self._proc.stop()
            self._proc = RegoProcess()
            try:
                await self._proc.start()
            except OSError as exc:
                self._proc = None
                self._set_load_error(PolicyLoadError(f"cannot start the policy engine process: {exc}"))
                return
        try:
            answer = await self._proc.request(_load_request(sources), max(self.timeout, LOAD_TIMEOUT))
        except asyncio.CancelledError:
            # Cut off mid-load (a readiness probe's timeout, a caller given up): the child was
            # killed (RegoProcess), and the files are read again at the next question.
            self._signature, self._next_check = None, 0.0
            raise
        except (ChildCrashed, ChildTimeout) as exc:
            self._loaded = None
            culprit = await asyncio.to_thread(_crash_culprit, sources)
            self._set_load_error(_crash_error(exc, culprit))
            return
        if not answer.get("ok"):
            self._loaded = None
            self._set_load_error(PolicyLoadError.from_wire(answer.get("error") or {}))
            return
        recovered = self._load_error is not None
        self._loaded, self._load_error = sources, None
        unstable = unstable_builtin(sources.modules)
        self._pure = unstable is None
        self._cacheable = unstable is None and self.cache.max_entries > 0
        log.info("policy.loaded", engine=self.name, policy_hash=sources.hash, recovered=recovered)
        if unstable is not None:
            log.info("policy.cache_off", engine=self.name, reason=f"the policy reads more than its input ({unstable})")

    def _set_load_error(self, error: PolicyLoadError) -> None:
        self._load_error = error
        self.cache.clear()
        self._cacheable = False
        log.error("policy.load_failed", engine=self.name, error=str(error), policies_dir=str(self.policies_dir))

    # --- crash recovery -----------------------------------------------------------------

    def _restarting(self) -> bool:
        return self._restart_task is not None and not self._restart_task.done()

    def _restarting_failure(self, rule: str) -> tuple[Failure, str]:
        reason = f"policy engine restarting after a crash ({self._crash_note})"
        return self._fail_closed(rule, Failure.ENGINE_CRASHED, reason)

    def _crashed(self, proc: RegoProcess, note: str) -> None:
        """Drop the dead child and restart it in the background: once per child, however many
        questions were pending on it when it died."""
        if proc is not self._proc or proc.crash_reported or self._closing:
            return
        proc.crash_reported = True
        self._crash_note = note
        self._consecutive_crashes += 1
        delay = min(self.max_restart_delay, self.restart_delay * 2 ** (self._consecutive_crashes - 1))
        log.error("policy.engine_crashed", engine=self.name, note=note, restart_in=delay)
        if self._proc is not None:
            self._proc.kill()
        self._restart_task = asyncio.create_task(self._restart(delay))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            await self._reload(force=True)
        if self._load_error is None:
            log.warning("policy.engine_restarted", engine=self.name, pid=self.pid, after=self._crash_note)
            self._crash_note = None
