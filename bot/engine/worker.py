"""Worker assembly: the PlaybookRun workflow plus every action and policy activity."""

from __future__ import annotations

import asyncio
import functools
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, AsyncIterator, Callable, Sequence

import structlog
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bot.actions.activities import build_activities
from bot.actions.outputs import OutputLimits
from bot.actions.catalog import make_providers, slack_client
from bot.actions.egress import EgressClient, Resolver, egress_rules
from bot.actions.secrets import SecretStore
from bot.audit.backend import AuditStore, open_store
from bot.audit.checkpoint import start_checkpoints
from bot.audit.recorder import AuditActivities, AuditWriter
from bot.engine.admission import Admitter
from bot.engine.approvals import register_keyring, register_policy
from bot.engine.answers import SealAnswers
from bot.engine.callers import OwnWorkflowsOnly
from bot.engine.children import CatalogActivities, PeekActivities
from bot.engine.lock_workflow import KeyLock
from bot.engine.locks import LockActivities
from bot.engine.sandbox import shared_converter, workflow_runner
from bot.engine.workflow import PlaybookRun
from bot.identity.keys import worker_keyring
from bot.identity.proofs import Keyring
from bot.logging import mask_secrets_with
from bot.playbook.loader import Catalog, PlaybookLoadErrors, load_directory
from bot.playbook.reload import LiveCatalog, directory_signature
from bot.policy.activities import PolicyActivities
from bot.policy.engine import PolicyEngine, make_engine
from bot.slack.notifier import SlackNotifier
from bot.slack.web import PooledWebClient
from bot.settings import Settings

log = structlog.get_logger(__name__)
HEARTBEAT_THROTTLE = timedelta(seconds=1)
def make_worker(
    client: Client,
    task_queue: str,
    activities: Sequence[Callable[..., Any]],
    *,
    keyring: Keyring | None = None,
    sandboxed: bool = True,
    **options: Any,
) -> Worker:
    """`keyring` seals lock messages (bot/engine/locks.py): the worker's envelope keys, shared by
    every worker; without one, a key of this process's own.

    `sandboxed=False` runs the workflows without the SDK's sandbox, whose per-payload and
    per-activation costs are most of the engine's overhead over a hand-written workflow (issue 15);
    the sandbox then no longer catches non-deterministic workflow code at run time, so tests and the
    replay of checked-in histories keep it (a history made without it must replay within it)."""
    client = shared_converter(client)
    names = {getattr(getattr(a, "__temporal_activity_definition", None), "name", None) for a in activities}
    lock = LockActivities(client, keyring)
    # The policy answers a run obeys leave this worker sealed with the lock's keys (the envelope
    # keys, else this process's own); the run checks the seal (bot/engine/answers.py).
    seals = SealAnswers(lock.keys)
    own = [*lock.all(), *PeekActivities(client).all(), seals.holds]
    locks = [a for a in own if a.__temporal_activity_definition.name not in names]
    workflows = [PlaybookRun, KeyLock]
    # Activities act only for these workflows, on this queue (bot/engine/callers.py); the question
    # about an execution starts when its first workflow task reaches the runner.
    callers = OwnWorkflowsOnly((w.__temporal_workflow_definition.name for w in workflows), client)  # type: ignore[attr-defined]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        activities=[*activities, *locks],  # the lock's, run.peek and the seal check, unless a test brings its own
        interceptors=[callers, seals, *options.pop("interceptors", [])],
        workflow_runner=(workflow_runner(client.data_converter, on_instance=callers.expect) if sandboxed
                         else UnsandboxedWorkflowRunner()),
        # Send heartbeats at least every second so a cancel reaches a long step in about a second.
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        **options,
    )


async def open_policy_and_audit(stack: AsyncExitStack, settings: Settings) -> tuple[PolicyEngine, AuditStore]:
    """The policy engine (loaded: a broken policy raises PolicyLoadError here) and the audit store,
    closed with `stack`; what both the worker and the front door need."""
    policy = make_engine(settings)
    stack.push_async_callback(policy.close)
    await policy.load()
    store = open_store(settings)  # PLAYBOOK_BOT_AUDIT_URL (PostgreSQL) or the SQLite file
    stack.callback(store.close)
    if problem := await asyncio.to_thread(store.check_writable):  # creates the store; says early why not
        log.error("audit store not writable: runs will wait for it", reason=problem)
    return policy, store


@dataclass
class WorkerDeps:
    """What a worker's activities hold: closed together when the worker stops."""

    activities: list[Any]
    policy: PolicyEngine
    audit: AuditStore
    catalog: Callable[[], Catalog]  # the current catalog (a LiveCatalog reloads it)
    keyring: Keyring | None = None  # for make_worker(keyring=...): the lock messages' seals
    live: LiveCatalog | None = None  # set when the catalog comes from PLAYBOOKS_DIR: watch it


def worker_catalog(settings: Settings) -> LiveCatalog:
    """The playbooks this worker will run: a run whose snapshot is not among them is refused.
    A broken file is logged and left out (the front door refuses it too); later edits are reloaded
    (bot/playbook/reload.py)."""
    signature = directory_signature(settings.playbooks_dir)  # before reading: an edit meanwhile is seen
    try:
        catalog, errors = load_directory(settings.playbooks_dir), None
    except PlaybookLoadErrors as exc:
        log.error("some playbooks do not load; the worker refuses runs of them", errors=str(exc))
        catalog, errors = exc.catalog, str(exc)
    for warning in catalog.warnings():
        log.warning("playbook warning", warning=warning)
    return LiveCatalog(settings.playbooks_dir, catalog, errors=errors, signature=signature)


@asynccontextmanager
async def worker_deps(
    settings: Settings,
    extra_providers: Sequence[object] = (),
    *,
    catalog: Catalog | None = None,
    keyring: Keyring | None = None,
    resolver: Resolver | None = None,
) -> AsyncIterator[WorkerDeps]:
    """The shipped action, policy and audit activities with their clients (plus extra action providers),
    and `run.admit`, the worker's own check of every run against its catalog, keys and policy.

    Playbook HTTP goes through one EgressClient (PLAYBOOK_BOT_HTTP_ALLOW; `resolver` replaces DNS in tests).

    Loads the policies first: a policy that does not compile stops the worker from starting
    (PolicyLoadError names the file and line) instead of denying every step later.
    """
    async with AsyncExitStack() as stack:
        policy, store = await open_policy_and_audit(stack, settings)
        writer = AuditWriter(store)
        keys = keyring or worker_keyring(settings)
        if not keys.can_verify:
            log.warning(
                "no PLAYBOOK_BOT_ENVELOPE_KEY: this worker can verify no one, so every requester, voter and "
                "canceller counts as unverified (the shipped policy refuses unverified approvers in production)"
            )
        stack.callback(register_keyring(keys))  # vote validators refuse a forged proof before it is history
        stack.callback(register_policy(policy))  # ... and a front door's verdict asked of another policy
        live = worker_catalog(settings) if catalog is None else None
        known: Callable[[], Catalog] = live if live is not None else (lambda: catalog)
        http = await stack.enter_async_context(EgressClient(egress_rules(settings), resolver=resolver))
        providers = [*make_providers(settings, http), *extra_providers]
        secrets = SecretStore(settings.secrets_file)
        stack.callback(mask_secrets_with(secrets.mask))  # the worker's log lines never show a secret value
        limits = OutputLimits(settings.output_inline_max, settings.output_preview_bytes)
        actions = build_activities(providers, secrets, writer, limits)
        slack = slack_client(settings, pooled=True)  # the notifier keeps its connections (bot/slack/web.py)
        if isinstance(slack, PooledWebClient):
            stack.push_async_callback(slack.aclose)
        notifier = SlackNotifier(slack)
        admitter = Admitter(known, keys, policy, writer, foreach_max=settings.foreach_max,
                            refresh=functools.partial(live.reload, listeners_behind=True, wait=True) if live is not None else None)
        activities = actions + PolicyActivities(policy, writer, keys).all() + [
            AuditActivities(writer).record,
            notifier.sync,
            admitter.admit,
            *CatalogActivities(known).all(),
        ]
        if settings.audit_checkpoint_file is not None:  # signed chain heads the database cannot rewrite
            path, every = settings.audit_checkpoint_file, settings.audit_checkpoint_interval
            stack.push_async_callback(start_checkpoints(store, path, keys, every))
        yield WorkerDeps(activities, policy, store, known, keys, live)
