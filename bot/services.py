"""Long-running processes with a front door: `dev` (embedded stack) and `serve`. Each stops cleanly
on a signal. `worker` is bot.worker_service, which never loads the front door."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

import structlog
from fastapi import APIRouter
from pydantic import SecretStr
from temporalio.client import Client

from bot.actions.catalog import slack_client
from bot.actions.egress import announce_egress
from bot.alerts.grafana_signing import GrafanaSigning
from bot.alerts.receiver import GRAFANA_SENDER, OPSGENIE_SENDER, PAGERDUTY_SENDER, AlertDeps, AlertReceiver
from bot.api.routes import ApiDeps, RunsApi
from bot.audit.backend import AuditStore
from bot.devstack import DevServer, WorkerProcess
from bot.engine.worker import open_policy_and_audit
from bot.heap import frozen_start
from bot.identity.keys import front_door_keyring, require_front_door_key
from bot.identity.proofs import Keyring, ensure_dev_key
from bot.identity.tokens import TokenError, TokenStore
from bot.lifecycle import Http, load_catalog, stop_event, watch_catalog
from bot.playbook.loader import Catalog
from bot.policy.engine import PolicyEngine
from bot.readiness import Readiness, audit_check, flag_check, policy_check, temporal_check
from bot.server import create_app
from bot.settings import ConfigError, Settings
from bot.slack.app import SlackDeps, create_slack_app, drain, slack_router
from bot.temporal import connect, tls_config

log = structlog.get_logger(__name__)


async def run_dev(settings: Settings, announce: Any = print) -> None:
    """Embedded Temporal (unless TEMPORAL_ADDRESS is set) + HTTP front door here, and the worker as
    a supervised child process (`playbook-bot worker`), the shape production runs."""
    announce_egress(settings)
    tls_config(settings)  # TLS settings without an address: refuse before starting anything
    catalog = load_catalog(settings)
    # On the embedded stack the CLI beside it signs with a key left in the data dir, so `--by WHO`
    # is verified here (and only here); against another Temporal only the configured key counts.
    dev_key = None if settings.temporal_address else ensure_dev_key(settings.data_dir)
    keys = front_door_keyring(settings, dev_key)
    stop = stop_event()
    async with AsyncExitStack() as stack:
        policy, audit = await open_policy_and_audit(stack, settings)  # bad policies: refuse before starting
        dev: DevServer | None = None
        if settings.temporal_address:
            address = settings.temporal_address
        else:
            dev = DevServer(settings.data_dir, port=settings.dev_server_port, ui_port=settings.dev_server_ui_port)
            await dev.start()
            stack.push_async_callback(dev.stop)
            address = dev.address
        client = await connect(settings, address)
        # The child finds the embedded server and the dev key through the record dev.start wrote.
        worker = WorkerProcess(env=dict(os.environ))  # its lines go to stderr as they are (no markup)
        await worker.start()
        stack.push_async_callback(worker.stop)  # before the server stops: runs after it (LIFO)
        readiness = Readiness({
            "temporal": temporal_check(client),
            "worker": flag_check(lambda: worker.running, "worker process not running (dev restarts it)"),
            "policies": policy_check(policy),
            "audit": audit_check(audit),
        }, facts={"catalog": catalog.facts})

        def hangup_worker() -> None:  # the worker child reloads its own catalog too
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGHUP)

        watch_catalog(stack, settings, catalog, stop, hangup_worker, policy=policy)
        if settings.alertmanager_token is None:
            log.warning("PLAYBOOK_BOT_ALERTMANAGER_TOKEN is not set: POST /alertmanager answers 401 to everyone")
        slack = slack_app(settings, client, catalog, policy, audit, keys)
        routers = front_door(settings, client, catalog, policy, audit, slack, keys, closing=stack)
        http = Http(settings, create_app(readiness, routers))
        stack.push_async_callback(drain, slack)  # queued answers and audit, once HTTP takes no more
        await http.start()
        stack.push_async_callback(http.stop)
        await stack.enter_async_context(socket_mode(settings, slack))
        announce(f"playbook-bot dev: {len(catalog())} playbook(s) from {settings.playbooks_dir}")
        announce(f"  Temporal   {address}" + (" (embedded, data in " + str(settings.data_dir) + ")" if dev else ""))
        if dev:
            announce(f"  Web UI     {dev.ui_url}")
        announce(f"  Worker     pid {worker.pid} (`playbook-bot worker`, its lines start `worker|`; restarted if it dies)")
        announce(f"  HTTP       http://{settings.http_host}:{settings.http_port}  (/healthz, /readyz, /metrics)")
        announce(f"  Alerts     POST /alertmanager ({'bearer token set' if settings.alertmanager_token else 'no token: 401'}),"
                 f" POST /grafana ({_grafana_door(settings)})")
        announce(f"  Incidents  POST /pagerduty ({'signing secret set' if settings.pagerduty_webhook_secrets else 'no secret: 401'}),"
                 f" POST /opsgenie ({'bearer token set' if settings.opsgenie_token else 'no token: 401'})")
        announce(f"  API        /api/v1/runs (tokens in {settings.tokens_path}: `playbook-bot token issue NAME`)")
        announce(f"  Slack      {'POST /slack/events' if slack else 'off (no bot token or signing secret)'}"
                 + (" + Socket Mode" if slack and settings.slack_app_token else ""))
        announce(f"  Try        playbook-bot run {next(iter(catalog()), 'NAME')} --wait   (Ctrl-C stops everything)")
        stack.enter_context(frozen_start())  # started: what was built so far is never garbage
        await stop.wait()
        announce("playbook-bot dev: stopping")


async def run_serve(settings: Settings) -> None:
    """The front door alone (scaled apart from workers); it needs the webhook token to start."""
    announce_egress(settings)  # its playbooks' HTTP runs on the workers, but operators read this log too
    if settings.alertmanager_token is None:
        raise ConfigError("serve needs PLAYBOOK_BOT_ALERTMANAGER_TOKEN: the Alertmanager webhook must be authenticated")
    require_front_door_key(settings)
    keys = front_door_keyring(settings)
    stop = stop_event()
    catalog = load_catalog(settings)
    async with AsyncExitStack() as stack:
        policy, audit = await open_policy_and_audit(stack, settings)
        client = await connect(settings)
        readiness = Readiness(
            {"temporal": temporal_check(client), "policies": policy_check(policy), "audit": audit_check(audit)},
            facts={"catalog": catalog.facts},
        )
        watch_catalog(stack, settings, catalog, stop, policy=policy)
        slack = slack_app(settings, client, catalog, policy, audit, keys)
        routers = front_door(settings, client, catalog, policy, audit, slack, keys, closing=stack)
        http = Http(settings, create_app(readiness, routers))
        stack.push_async_callback(drain, slack)  # queued Slack answers and audit, once HTTP takes no more
        await http.start()
        stack.push_async_callback(http.stop)
        await stack.enter_async_context(socket_mode(settings, slack))
        log.info("front door listening", host=settings.http_host, port=settings.http_port)
        stack.enter_context(frozen_start())  # started: what was built so far is never garbage
        await stop.wait()


def front_door(
    settings: Settings,
    client: Client,
    catalog: Catalog | Callable[[], Catalog],
    policy: PolicyEngine,
    audit: AuditStore,
    slack: Any = None,
    keyring: Keyring | None = None,
    closing: AsyncExitStack | None = None,
) -> list[APIRouter]:
    """The routes that take triggers: Alertmanager, Slack and the HTTP API. `catalog` is a Catalog or
    a callable giving the current one (a LiveCatalog that reloads). `closing`: where each webhook
    door's close is pushed (a flood's count is recorded when the door stops, see RefusalBudget)."""
    current = _current(catalog)
    token = settings.alertmanager_token.get_secret_value() if settings.alertmanager_token else None
    keyring = keyring or front_door_keyring(settings)  # one key vouches for every door's actors
    alerts = AlertReceiver(
        AlertDeps(
            client=client,
            task_queue=settings.task_queue,
            catalog=current,
            policy=policy,
            audit=audit,
            token=token,
            max_body=settings.alertmanager_max_body,
            keyring=keyring,
        )
    )
    grafana_secrets = _secret_list(settings.grafana_hmac_secrets)
    grafana = AlertReceiver(replace(
        alerts.deps,
        token=settings.grafana_token.get_secret_value() if settings.grafana_token else None,
        sender=GRAFANA_SENDER,
        signing=GrafanaSigning(grafana_secrets, settings.grafana_hmac_header, settings.grafana_hmac_timestamp_header)
        if grafana_secrets else None,
    ), beside=alerts)
    pagerduty = AlertReceiver(replace(
        alerts.deps, token=None, sender=PAGERDUTY_SENDER, secrets=_secret_list(settings.pagerduty_webhook_secrets),
    ), beside=alerts)
    opsgenie = AlertReceiver(replace(
        alerts.deps, token=settings.opsgenie_token.get_secret_value() if settings.opsgenie_token else None,
        sender=OPSGENIE_SENDER,
    ), beside=alerts)
    api = RunsApi(
        ApiDeps(
            client=client,
            task_queue=settings.task_queue,
            catalog=current,
            policy=policy,
            audit=audit,
            tokens=api_tokens(settings),
            keyring=keyring,
        )
    )
    if closing is not None:  # together: each may wait (bounded) for a store that is slow
        doors = (alerts, grafana, pagerduty, opsgenie, api)
        closing.push_async_callback(lambda: asyncio.gather(*(door.close() for door in doors)))
    routers = [alerts.router(), grafana.router(), pagerduty.router(), opsgenie.router(), api.router()]
    if slack is not None:
        routers.append(slack_router(slack, settings))
    return routers


def api_tokens(settings: Settings) -> TokenStore:
    """The API's tokens, read once at start so a file that is not a tokens file stops the front
    door with its name; later changes are picked up per request (a revoke needs no restart)."""
    store = TokenStore(settings.tokens_path)
    try:
        count = len(store.entries())
    except TokenError as exc:
        raise ConfigError(str(exc)) from None
    log.info("api tokens", path=str(store.path), count=count)
    return store


def _secret_list(value: SecretStr | None) -> tuple[str, ...]:
    """A comma-separated secrets setting (old and new while one is rotated) as its secrets."""
    text = value.get_secret_value() if value else ""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _grafana_door(settings: Settings) -> str:
    """How POST /grafana proves its caller, as `dev` announces it."""
    proofs = (["bearer token"] if settings.grafana_token else []) + (
        ["HMAC signature"] if _secret_list(settings.grafana_hmac_secrets) else [])
    return " + ".join(proofs) + " required" if proofs else "no token: 401"


def _current(catalog: Catalog | Callable[[], Catalog]) -> Callable[[], Catalog]:
    if isinstance(catalog, Catalog):
        return lambda: catalog
    return catalog


def slack_app(
    settings: Settings,
    client: Client,
    catalog: Catalog | Callable[[], Catalog],
    policy: PolicyEngine,
    audit: AuditStore,
    keyring: Keyring | None = None,
) -> Any:
    """The Bolt app when Slack is configured; otherwise None, and the log says Slack is off."""
    web = slack_client(settings)  # retries only 429s, so nothing is posted twice
    if web is None or settings.slack_signing_secret is None:
        log.warning("Slack is off: set PLAYBOOK_BOT_SLACK_BOT_TOKEN and PLAYBOOK_BOT_SLACK_SIGNING_SECRET to turn it on")
        return None
    deps = SlackDeps(client, settings.task_queue, _current(catalog), policy, web, audit, keyring or front_door_keyring(settings))
    return create_slack_app(settings, deps)


@contextlib.asynccontextmanager
async def socket_mode(settings: Settings, app: Any) -> AsyncIterator[None]:
    """Socket Mode when PLAYBOOK_BOT_SLACK_APP_TOKEN is set: Slack connects out, no public URL."""
    if app is None or settings.slack_app_token is None:
        yield
        return
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(app, settings.slack_app_token.get_secret_value())
    await handler.connect_async()
    log.info("slack socket mode connected")
    try:
        yield
    finally:
        await handler.close_async()
