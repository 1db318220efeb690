"""Floors: hand-written workflows with five no-op activities (bench/overhead.py and others), with
one no-op activity then a wait for a signal (bench/approval_rss.py), and one HTTP request, at once
or behind an update (bench/latency.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import httpx


@activity.defn(name="baseline.noop")
async def noop(step: str) -> str:
    return step


_http: httpx.AsyncClient | None = None


@activity.defn(name="baseline.http_get")
async def http_get(url: str) -> int:
    """The request a playbook's http.request step makes, on one shared client as the bot's worker
    keeps one (connections reused)."""
    global _http
    if _http is None:
        _http = httpx.AsyncClient(timeout=30)
    return (await _http.get(url)).status_code


@workflow.defn(name="BaselineFiveSteps")
class BaselineFiveSteps:
    @workflow.run
    async def run(self, steps: int) -> list[str]:
        done = []
        for i in range(steps):
            done.append(
                await workflow.execute_activity(noop, f"s{i}", start_to_close_timeout=timedelta(minutes=5))
            )
        return done


@workflow.defn(name="BaselineAwaitSignal")
class BaselineAwaitSignal:
    """A run waiting on approval at its least: one activity done, then a signal or a deadline (the
    bot's approval wait has a timer too)."""

    def __init__(self) -> None:
        self._waiting = False
        self._approved = False

    @workflow.run
    async def run(self, deadline_s: int) -> bool:
        await workflow.execute_activity(noop, "s0", start_to_close_timeout=timedelta(minutes=5))
        self._waiting = True
        try:
            await workflow.wait_condition(lambda: self._approved, timeout=timedelta(seconds=deadline_s))
        except TimeoutError:
            return False
        return True

    @workflow.signal
    def approve(self) -> None:
        self._approved = True

    @workflow.query
    def waiting(self) -> bool:
        return self._waiting and not self._approved


@workflow.defn(name="BaselineHttp")
class BaselineHttp:
    """A run whose first (and only) activity is the request: what an alert's first step is at least."""

    @workflow.run
    async def run(self, url: str) -> int:
        return await workflow.execute_activity(http_get, url, start_to_close_timeout=timedelta(minutes=1))


@workflow.defn(name="BaselineAwaitUpdate")
class BaselineAwaitUpdate:
    """A run waiting for an approval at its least: an update lets it go, then its one activity makes
    the request (what an Approve click does at least)."""

    def __init__(self) -> None:
        self._approved_by: str | None = None

    @workflow.run
    async def run(self, url: str) -> int:
        await workflow.wait_condition(lambda: self._approved_by is not None)
        return await workflow.execute_activity(http_get, url, start_to_close_timeout=timedelta(minutes=1))

    @workflow.update
    def approve(self, user: str) -> None:
        self._approved_by = user

    @workflow.query
    def waiting(self) -> bool:
        return self._approved_by is None
