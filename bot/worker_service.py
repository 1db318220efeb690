"""`playbook-bot worker`: the Temporal worker process, with its own /metrics when asked.

Apart from bot.services so that the worker never imports the front door (FastAPI, Bolt and the
webhook doors): about 10 MB less per worker, which holds every waiting run in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from bot.actions.egress import announce_egress
from bot.engine.schedules import sync_schedules
from bot.engine.worker import WorkerDeps, make_worker, worker_deps
from bot.heap import frozen_start
from bot.identity.keys import worker_keyring
from bot.lifecycle import Http, stop_event, watch_catalog
from bot.playbook.loader import Catalog, unloaded_names
from bot.readiness import Readiness, audit_check, flag_check, policy_check, temporal_check
from bot.settings import Settings
from bot.temporal import connect

log = structlog.get_logger(__name__)


async def _run_worker(worker: Worker, stop: asyncio.Event) -> None:
    run = asyncio.create_task(worker.run())
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if run in done:
        waiter.cancel()
        run.result()  # a worker that died on its own is an error, not a clean exit
        return
    await worker.shutdown()
    with contextlib.suppress(Exception):
        await run


async def _sync_schedules_with(settings: Settings, client: Client, deps: WorkerDeps) -> None:
    """Sync now, and again after every reload that changed the catalog. A file broken since start
    has no previous version to keep: its playbook's schedules stay as they are until it loads."""
    keys = deps.keyring or worker_keyring(settings)

    async def sync(catalog: Catalog) -> None:
        broken = unloaded_names(settings.playbooks_dir, catalog)
        await sync_schedules(client, catalog, keys, settings.task_queue, keep=broken)

    await sync(deps.catalog())
    if deps.live is not None:
        deps.live.on_change(sync)


async def serve_worker(
    settings: Settings, client: Client, deps: WorkerDeps, stop: asyncio.Event, readiness: Readiness | None = None
) -> None:
    worker = make_worker(client, settings.task_queue, deps.activities, keyring=deps.keyring)
    if readiness is not None:  # first: /readyz says "not ready" until the worker polls
        readiness.checks["worker"] = flag_check(lambda: worker.is_running, "worker not running")
        readiness.checks["policies"] = policy_check(deps.policy)
        readiness.checks["audit"] = audit_check(deps.audit)
        if deps.live is not None:
            readiness.facts["catalog"] = deps.live.facts
    if settings.schedules_sync:  # before polling: the first firing finds the schedules as the files say
        await _sync_schedules_with(settings, client, deps)
    log.info("worker started", task_queue=settings.task_queue, policy=deps.policy.name, hash=deps.policy.policy_hash)
    async with AsyncExitStack() as stack:
        if deps.live is not None:
            watch_catalog(stack, settings, deps.live, asyncio.Event(), policy=deps.policy)
        stack.enter_context(frozen_start())  # started: what was built so far is never garbage
        await _run_worker(worker, stop)
    log.info("worker stopped")


async def run_worker_only(settings: Settings) -> None:
    announce_egress(settings)
    stop = stop_event()
    async with worker_deps(settings) as deps:
        client = await connect(settings)
        # "worker" until serve_worker replaces it: never ready before the worker polls.
        readiness = Readiness({"temporal": temporal_check(client), "worker": flag_check(lambda: False, "worker starting")})
        http: Http | None = None
        if settings.worker_metrics_port is not None:  # /healthz, /readyz, /metrics for this worker
            from bot.server import create_app  # FastAPI: only a worker with a metrics port loads it

            http = Http(settings.model_copy(update={"http_port": settings.worker_metrics_port}), create_app(readiness))
            await http.start()
        try:
            await serve_worker(settings, client, deps, stop, readiness)
        finally:
            if http is not None:
                await http.stop()
