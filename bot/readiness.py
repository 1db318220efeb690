"""What /readyz asks: named checks of the process's dependencies.

Apart from bot.server so that a worker without a metrics port builds its readiness without
loading FastAPI (the idle worker's memory is counted per host).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import structlog

if TYPE_CHECKING:
    from temporalio.client import Client

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[str | None]]  # None when fine, else the reason
# What a caller from elsewhere reads for a failing check. A reason names what the bot runs on (an
# audit database's host and user, a playbook file's path and its parse error) and /readyz is open
# to anyone who reaches the port, which Slack and Alertmanager must (red team, stop 49): the reason
# is for the host itself (a healthcheck's curl, an operator's shell) and the log, as Kubernetes'
# own /readyz withholds it.
WITHHELD = "failed (reason withheld: ask from the host, or read the log)"


def is_local(host: str | None) -> bool:
    """Whether a caller's address is the host's own (loopback). A name, or no address: no."""
    try:
        return host is not None and ip_address(host).is_loopback
    except ValueError:
        return False


def withheld(results: dict[str, str]) -> dict[str, str]:
    return {name: "ok" if reason == "ok" else WITHHELD for name, reason in results.items()}


def public_fact(fact: Any) -> Any:
    """A fact as a caller elsewhere reads it: the catalog's hash and size (replicas compare them),
    not its errors' text (file paths, parse errors; `validate` and the log say them)."""
    if isinstance(fact, dict) and fact.get("errors"):
        return {**fact, "errors": "some playbook files do not load (details withheld: ask from the host, or read the log)"}
    return fact


@dataclass
class Readiness:
    """Named checks /readyz runs; each returns None or why the bot is not ready."""

    checks: dict[str, Check] = field(default_factory=dict)
    # Facts /readyz reports beside the checks, never failing it (the catalog hash: replicas that
    # serve the same playbooks show the same one).
    facts: dict[str, Callable[[], Any]] = field(default_factory=dict)
    # Seconds an answer is given again. /readyz is open to anyone who reaches the port, and its
    # checks ask Temporal and open a write transaction on the audit store: a flood of them (50 at
    # once, red team) took alert deliveries from 3 ms to over a second. So callers within `fresh`
    # of an answer get it, and callers while one is being found wait for that one.
    fresh: float = 1.0
    _answer: tuple[float, dict[str, str]] | None = field(default=None, init=False, repr=False)
    _finding: asyncio.Future[dict[str, str]] | None = field(default=None, init=False, repr=False)

    async def run(self) -> dict[str, str]:
        if self._answer is not None and time.monotonic() - self._answer[0] < self.fresh:
            return self._answer[1]
        if self._finding is None or self._finding.done():
            self._finding = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._finding)  # (one caller leaving does not cancel it for the rest)

    async def _run(self) -> dict[str, str]:
        results = await self._checked()
        before = self._answer[1] if self._answer is not None else None
        self._answer = (time.monotonic(), results)
        failing = {name: reason for name, reason in results.items() if reason != "ok"}
        if results != before and (failing or before is not None):  # what a caller elsewhere is not told
            log.warning("not ready", checks=failing) if failing else log.info("ready again")
        return results

    async def _checked(self) -> dict[str, str]:
        async def one(check: Check) -> str:
            try:
                reason = await asyncio.wait_for(check(), timeout=3)
            except asyncio.TimeoutError:
                return "no answer within 3s"
            except Exception as exc:  # a failing check is a reason, never a 500
                return f"{type(exc).__name__}: {exc}"
            return reason or "ok"

        names = list(self.checks)
        results = await asyncio.gather(*(one(self.checks[n]) for n in names))
        return dict(zip(names, results))


def temporal_check(client: Client) -> Check:
    async def check() -> str | None:
        return None if await client.service_client.check_health() else "Temporal reports not serving"

    return check


def policy_check(engine: Any) -> Check:
    async def check() -> str | None:
        return None if await engine.ready() else "policies not loaded (see the worker log)"

    return check


def audit_check(store: Any) -> Check:
    async def check() -> str | None:
        return await asyncio.to_thread(store.check_writable)

    return check


def flag_check(flag: Callable[[], bool], reason: str) -> Check:
    async def check() -> str | None:
        return None if flag() else reason

    return check
