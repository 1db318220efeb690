"""The Bolt app: `/playbook`, its forms, the approval buttons and the App Home tab, served at
POST /slack/events.

Built from settings and a Web API client handed in (tests point it at a fake Slack); nothing
here reads the environment. Handlers ack first and answer errors ephemerally through the one
`@app.error` below, so a refused command or vote never reaches Slack as a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.kwargs_injection.async_args import AsyncArgs
from slack_bolt.middleware.authorization.async_single_team_authorization import AsyncSingleTeamAuthorization
from slack_bolt.request.internals import build_normalized_headers, extract_content_type, parse_body
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from temporalio.client import Client

from bot.audit.backend import AuditStore
from bot.audit.refusals import RefusalLogs
from bot.engine.front_approver import FrontApprover, front_approver
from bot.engine.runs import RunError
from bot.identity import principals
from bot.identity.principals import PrincipalError
from bot.identity.proofs import Keyring
from bot.playbook.loader import Catalog, UnknownPlaybook
from bot.playbook.params import ParamError
from bot.policy.engine import PolicyEngine
from bot.server import direct_route, read_limited
from bot.settings import ConfigError, Settings
from bot.slack.background import AckWindow, Background
from bot.slack.blocks import escape, truncate
from bot.slack.groups import GroupResolver
from bot.slack.listeners import Listener, at_ack, settle
from bot.slack.web import PooledWebClient, pooled, respond_kept

log = structlog.get_logger(__name__)

MAX_BODY = 256 * 1024  # Slack's payloads are a few KB; anything this large is not from Slack
MAX_SKEW = 5 * 60  # seconds: Slack's own replay window for signed requests
SIGNED_HEADERS = ("x-slack-request-timestamp", "x-slack-signature")
RECEIVED_AT = "received_at"  # Bolt context key: time.monotonic() when the request reached the router
KNOWN_ERRORS = (RunError, ParamError, UnknownPlaybook, PrincipalError)
REPLY_LIMIT = 3000  # characters of a refusal; it may quote what it was sent (a forged button value)


@dataclass
class SlackDeps:
    """What the handlers use; the front door builds it once from settings."""

    client: Client
    task_queue: str
    catalog: Callable[[], Catalog]
    policy: PolicyEngine
    web: AsyncWebClient
    audit: AuditStore | None = None  # `slack_command` events; None: not recorded
    keyring: Keyring = field(default_factory=Keyring)  # signs proofs of who clicked or typed
    background: Background = field(default_factory=Background)  # answers and audit after the ack
    answer_web: PooledWebClient = field(init=False)  # the answers' client: `web`, keeping its connections (bot/slack/web.py)
    # Each user's refusals, per rule: one by one up to a budget a minute, then that minute's count, so
    # a workspace member scripting refused commands or clicks cannot grow the audit trail without bound.
    refusals: RefusalLogs = field(init=False)
    refusals_queued: Counter[str] = field(default_factory=Counter)  # each user's refusal records waiting (queue_refusal)
    approver: FrontApprover | None = field(init=False)  # asks the approver rule for the clicks it signs

    def __post_init__(self) -> None:
        self.answer_web = pooled(self.web)
        self.refusals = RefusalLogs(self.audit, "slack")
        self.approver = front_approver(self.audit, self.policy, self.keyring)


def create_slack_app(settings: Settings, deps: SlackDeps) -> AsyncApp:
    """The Bolt app with every handler registered; no Slack call is made until a request comes."""
    if settings.slack_signing_secret is None:
        raise ConfigError("the Slack app needs PLAYBOOK_BOT_SLACK_SIGNING_SECRET to verify requests")
    # AsyncApp has no `token_verification_enabled` (that is the sync App's): it never calls
    # auth.test at construction, only once on the first request, and caches the answer.
    app = AsyncApp(
        signing_secret=settings.slack_signing_secret.get_secret_value(),
        client=deps.web,
        request_verification_enabled=True,
        process_before_response=True,  # each listener returns at its ack (bot.slack.listeners.at_ack)
        name="playbook-bot",
    )
    groups = GroupResolver(deps.web)
    groups.warm()  # the first command should not wait for usergroups.list before its ack
    warm_authorization(app, deps.web)

    from bot.slack import (  # the handlers import this module's SlackDeps
        approvals,
        commands,
        home,
        modals,
    )

    command = commands.register(app, deps, groups)
    modals.register(app, deps, command, settings.slack_signing_secret.get_secret_value())
    tab = home.register(app, deps, groups)
    approvals.register(app, deps, groups, tab)  # a click on the Home tab is answered there

    @app.error
    async def on_error(error: Exception, body: dict[str, Any], respond: Any) -> None:
        queue_error(deps, error, body, respond)

    app.playbook_background = deps.background  # type: ignore[attr-defined]  (services drain it on stop)
    app.playbook_answer_web = deps.answer_web  # type: ignore[attr-defined]  (its kept connections closed after)
    app.playbook_refusals = deps.refusals  # type: ignore[attr-defined]  (the minute's counts told on stop)
    return app


async def drain(app: AsyncApp | None, timeout: float = 5.0) -> None:
    """On shutdown: give what listeners do after their ack, then the answers and audit records
    they queued, a bounded time to finish."""
    background = getattr(app, "playbook_background", None)
    if background is not None:
        await settle(timeout)
        await background.drain(timeout)
    refusals: RefusalLogs | None = getattr(app, "playbook_refusals", None)
    if refusals is not None:
        await refusals.close()
    answer_web: PooledWebClient | None = getattr(app, "playbook_answer_web", None)
    if answer_web is not None:
        await answer_web.aclose()


def listener(deps: SlackDeps, handler: Listener, *, acked_by_bolt: bool = False) -> Callable[[AsyncArgs], Awaitable[None]]:
    """`handler` as this app registers it: answered at its ack; a failure after it told to the user."""
    return at_ack(handler, lambda error, body, respond: queue_error(deps, error, body, respond),
                  acked_by_bolt=acked_by_bolt)


REFUSALS_QUEUED_EACH = 100  # refusal records one user may have waiting on the refusals lane


def slack_user(body: Mapping[str, Any]) -> tuple[str, str]:
    """The user id and display name an interaction payload (a click, a form) names, each "" when
    it is not text: the payload's `user` is data, and one that is not the object Slack sends must
    be refused on record like any malformed click, not fail as an unexpected error."""
    user = body.get("user")
    user = user if isinstance(user, Mapping) else {}
    user_id, name = user.get("id"), user.get("username") or user.get("name")
    return (user_id if isinstance(user_id, str) else "", name if isinstance(name, str) else "")


def slack_actor(user: str | None) -> str:
    """Who a Slack request is recorded under (a command's record, a click's or form's refusal,
    and the refusal budget): the principal of the user the signed payload names, or `slack` when
    it names none or no well-formed one (a user id is only data: no second line, no 5 KB actor)."""
    try:
        return principals.slack(user) if user else "slack"
    except PrincipalError:
        return "slack"


def queue_refusal(deps: SlackDeps, actor: str, record: Callable[[], Awaitable[Any]], said: dict[str, Any]) -> None:
    """A user's refusal record onto the refusals lane (after the ack). At most REFUSALS_QUEUED_EACH
    of one user's wait there at once: while a store is down each is retried for seconds, and one
    user's flood must not crowd the lane's queue so that other users' refusals are dropped. One
    not queued is logged with what it said (`said`): here, or by the lane that refused it."""
    if deps.refusals_queued[actor] >= REFUSALS_QUEUED_EACH:
        log.error("refusal not recorded; this user has too many waiting", waiting=REFUSALS_QUEUED_EACH, **said)
        return

    def release() -> None:  # its place among the user's waiting records
        deps.refusals_queued[actor] -= 1
        if deps.refusals_queued[actor] <= 0:
            del deps.refusals_queued[actor]

    async def job() -> None:
        try:
            await record()
        finally:
            release()

    deps.refusals_queued[actor] += 1
    if not deps.background.refusals.submit("refusal audit", job, said):  # (logged there, with `said`)
        release()


def queue_error(deps: SlackDeps, error: Exception, body: Mapping[str, Any], respond: Any) -> None:
    """report_error, queued: logged now, the user told from the answers lane (never on the ack path)."""
    text = describe_error(error, body)
    deps.background.answers.submit("error reply", lambda: reply_ephemeral(deps.answer_web, body, respond, text))


async def report_error(web: AsyncWebClient, error: Exception, body: Mapping[str, Any], respond: Any) -> None:
    """The one answer to a failed command or click: known errors say why, others say see the logs.

    `@app.error` calls it for what fails before an ack, and so do the handlers for what fails after
    theirs (what they leave uncaught there reaches `queue_error` through `listener`).
    """
    await reply_ephemeral(web, body, respond, describe_error(error, body))


def describe_error(error: Exception, body: Mapping[str, Any]) -> str:
    """Logs the failure; the text the user is told."""
    if isinstance(error, KNOWN_ERRORS):
        log.info("slack request refused", error=str(error), kind=body.get("type") or body.get("command"))
        text = error_text(error)
    else:
        log.error("slack handler failed", error=f"{type(error).__name__}: {error}", exc_info=error)
        text = f":warning: playbook-bot could not do that ({type(error).__name__}); the logs have the details."
    return truncate(text, REPLY_LIMIT)


def error_text(error: Exception) -> str:
    """The refusal as Slack shows it; it may quote what the user sent, so all of it is escaped."""
    if isinstance(error, UnknownPlaybook):
        known = ", ".join(f"`{escape(name)}`" for name in error.known) or "none are loaded"
        return f":x: Unknown playbook `{escape(error.name)}`. Playbooks: {known}. `/playbook list` describes them."
    if isinstance(error, ParamError):
        return ":x: " + "\n:x: ".join(escape(message) for _, message in error.problems)
    return f":x: {escape(str(error))}"


async def reply_ephemeral(web: AsyncWebClient, body: Mapping[str, Any], respond: Any, text: str,
                          blocks: list[dict[str, Any]] | None = None) -> None:
    """Only the user who acted sees it. A click gets chat.postEphemeral (its response_url would
    replace the approval message); a command its response_url, which works in any channel. Each
    way falls back to the other."""
    channel = (body.get("channel") or {}).get("id") or body.get("channel_id")
    user = slack_user(body)[0] or body.get("user_id")
    ways: list[Callable[[], Awaitable[bool]]] = [
        lambda: _post_ephemeral(web, channel, user, text, blocks),
        lambda: _respond(respond, text, web, blocks),
    ]
    if body.get("type") != "block_actions":
        ways.reverse()
    for way in ways:
        try:
            if await way():
                return
        except Exception as exc:  # noqa: BLE001  Slack is best effort: log and try the other way
            log.warning("ephemeral reply failed", error=f"{type(exc).__name__}: {exc}")
    log.warning("could not tell the user", user=user, channel=channel, text=text)


async def _post_ephemeral(web: AsyncWebClient, channel: str | None, user: str | None, text: str,
                          blocks: list[dict[str, Any]] | None = None) -> bool:
    if not channel or not user:
        return False
    await web.chat_postEphemeral(channel=channel, user=user, text=text, blocks=blocks)
    return True


async def _respond(respond: Any, text: str, web: AsyncWebClient | None = None,
                   blocks: list[dict[str, Any]] | None = None) -> bool:
    if respond is None or not getattr(respond, "response_url", None):  # (older bodies carry none: respond would raise)
        return False
    response = await respond_kept(respond, web, text, response_type="ephemeral", replace_original=False, blocks=blocks)
    status = getattr(response, "status_code", 200)  # Bolt's respond does not raise on an HTTP error
    if not isinstance(status, int) or status >= 300:
        log.warning("response_url refused the answer", status=status)
        return False
    return True


_warming: set[asyncio.Task[None]] = set()  # held until done


def warm_authorization(app: AsyncApp, web: AsyncWebClient) -> None:
    """Ask auth.test once now, for Bolt's single-workspace authorization, which asks it on the
    first request and keeps the answer, but asks it for every request of a cold burst (no lock):
    a front door restarted into a burst made one auth.test per command, each ack waiting for it.
    A failure here changes nothing: the first request asks, as before."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    single = [m for m in getattr(app, "_async_middleware_list", ()) if isinstance(m, AsyncSingleTeamAuthorization)]
    if not single:  # another Bolt, or another authorization: nothing to warm
        return

    async def ask() -> None:
        try:
            answer = await web.auth_test()
        except Exception as exc:  # noqa: BLE001  the first request asks again
            log.warning("slack auth.test failed at start; the first request asks it again", error=str(exc))
            return
        for middleware in single:
            if middleware.auth_test_result is None:
                middleware.auth_test_result = answer

    task = asyncio.create_task(ask(), name="slack-auth-test")
    _warming.add(task)
    task.add_done_callback(_warming.discard)


def slack_router(app: AsyncApp, settings: Settings) -> APIRouter:
    """POST /slack/events: slash commands, interactivity and events, signature checked first.

    Bolt verifies signatures too, but it parses the body before it does, so a forged or garbled
    request could make it fail with a 500; this check answers 401 before anything is parsed.
    """
    if settings.slack_signing_secret is None:
        raise ConfigError("the Slack endpoint needs PLAYBOOK_BOT_SLACK_SIGNING_SECRET")
    verifier = SignatureVerifier(settings.slack_signing_secret.get_secret_value())
    handler = AsyncSlackRequestHandler(app)
    router = APIRouter()
    background: Background | None = getattr(app, "playbook_background", None)
    window = background.window if background is not None else AckWindow()

    async def slack_events(request: Request) -> Response:
        received_at = time.monotonic()
        body = await read_limited(request, MAX_BODY)
        if body is None:
            return JSONResponse({"error": "body too large"}, status_code=413)
        # One copy of each signed header: this check reads the first, Bolt's the last.
        if not verified(verifier, body, request.headers) or any(
            len(request.headers.getlist(name)) > 1 for name in SIGNED_HEADERS
        ):
            return JSONResponse({"error": "invalid request signature"}, status_code=401)
        if not readable(body, request.headers):
            return JSONResponse({"error": "not a Slack payload"}, status_code=400)
        try:
            with window.acking():  # signed by Slack: what was queued after other acks waits for this one
                return await handler.handle(request, {RECEIVED_AT: received_at})
        except Exception as exc:  # noqa: BLE001  Bolt failed before any handler: a payload Slack never sends
            log.warning("slack request unreadable", error=f"{type(exc).__name__}: {exc}")
            return JSONResponse({"error": "not a Slack payload"}, status_code=400)

    direct_route(router, "/slack/events", slack_events, summary="Slack slash commands, interactivity and events (signed)")
    return router


def readable(body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether Bolt can read a verified body. Bolt picks its parser by the Content-Type, which
    the signature does not cover, and indexes `actions[0]` of a payload with actions; either
    going wrong fails inside Bolt with a 500, so it is a 400 here."""
    try:
        payload = parse_body(body.decode("utf-8"), extract_content_type(build_normalized_headers(headers)))
    except (ValueError, RecursionError):  # (JSON nested past the parser's depth)
        return False
    if not isinstance(payload, dict):
        return False
    actions = payload.get("actions", [{}])
    return isinstance(actions, list) and bool(actions) and all(isinstance(a, dict) for a in actions)


def verified(verifier: SignatureVerifier, body: bytes, headers: Mapping[str, str], now: float | None = None) -> bool:
    """Slack's v0 signature over `v0:{timestamp}:{body}`, with a timestamp within five minutes."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12 or not signature.startswith("v0="):
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > MAX_SKEW:
        return False
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    expected = verifier.generate_signature(timestamp=timestamp, body=text)
    return expected is not None and _equal(expected, signature)


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))
