"""/api/v1: runs over HTTP, as the principal `api:<name>` a bearer token belongs to.

A request is authenticated before its body is read. The principal is verified by its token and
has no groups of its own (policy maps it through data.playbook.groups and people). It may do what
the same rules let anyone do: `start` decides starting a run and reading one (a run's status is
readable by whoever may start its playbook), the worker's `approver` and `cancel` decide votes and
cancels. Every refusal of an authenticated principal is audited as `access_refused`: one by one
up to 60 a minute per principal and rule, the rest of that minute as one count (bot/audit/refusals.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, TypeVar, get_args

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from bot.api.errors import ApiError, unauthenticated
from bot.audit.recorder import refusal
from bot.audit.refusals import RefusalLogs
from bot.audit.backend import AuditStore
from bot.engine.front_approver import FrontApprover, front_approver
from bot.engine.runs import (
    RunError,
    cancel_run,
    check_start,
    confirm,
    get_status,
    hidden_from,
    new_run_id,
    start_run,
    vote,
    why_not_readable,
)
from bot.engine.state import (
    ANSWER_MAX,
    FINAL_RUN_STATES,
    RunState,
    ConfirmRequest,
    RunStatus,
    TriggerContext,
    VoteRequest,
)
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, digest
from bot.identity.tokens import TokenError, TokenStore
from bot.playbook.loader import Catalog, UnknownPlaybook
from bot.playbook.params import ParamError, coerce_params
from bot.policy.engine import PolicyEngine
from bot.server import read_limited

log = structlog.get_logger(__name__)

PREFIX = "/api/v1"
MAX_BODY = 64 * 1024  # a start, a vote or a cancel is a few hundred bytes
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
SCAN = 500  # executions a listing examines at most, newest first
READ_BATCH = 8  # statuses read at once while listing
# Listings served at once by one front door: each reads up to SCAN runs from Temporal (a describe
# and a status read each, a query to the worker for a running one), so any token holder could
# otherwise multiply that load at will; and at once per principal, so one cannot hold them all.
# One more is answered 503 at once, with Retry-After.
LISTINGS, LISTINGS_EACH = 4, 2
LISTING_RETRY_AFTER = 2  # seconds
# A listing's whole time: a running run's status is a query to the worker (up to 5 s each when no
# worker answers), and a listing past this is a 503 that gives its slot back.
LISTING_DEADLINE = 30.0  # seconds
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}\Z")  # printable ASCII, no spaces
MAX_TEXT = 2000
AUDIT_TEXT = 1000  # a refusal's reason as audited (it may quote the caller's input)
RUN_STATES: frozenset[str] = frozenset(get_args(RunState))


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartBody(_Body):
    playbook: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)


class VoteBody(_Body):
    step: str = Field(min_length=1, max_length=200)
    vote: Literal["approve", "reject"]
    reason: str = Field("", max_length=MAX_TEXT)


class ConfirmBody(_Body):
    """An answer to a core.confirm step: `choice` (one of its choices) or `value` (its input:)."""

    step: str = Field(min_length=1, max_length=200)
    choice: str | None = Field(None, max_length=ANSWER_MAX)
    value: str | int | float | None = None
    reason: str = Field("", max_length=ANSWER_MAX)

    @model_validator(mode="after")
    def _one_answer(self) -> ConfirmBody:
        if (self.choice is None) == (self.value is None):
            raise ValueError("give exactly one of choice (for a step with choices) or value (for a step with input:)")
        if len(self.answer) > ANSWER_MAX:  # (a number's too: it travels as its JSON text)
            raise ValueError(f"value: at most {ANSWER_MAX} characters (as JSON text)")
        return self

    @property
    def answer(self) -> str:
        text = self.choice if self.choice is not None else self.value
        return text if isinstance(text, str) else json.dumps(text)


class CancelBody(_Body):
    reason: str = Field("", max_length=MAX_TEXT)


@dataclass
class ApiDeps:
    client: Client
    task_queue: str
    catalog: Callable[[], Catalog]
    policy: PolicyEngine
    audit: AuditStore | None
    tokens: TokenStore
    keyring: Keyring
    max_body: int = MAX_BODY
    approver: FrontApprover | None = field(init=False)  # asks the approver rule for the votes it signs

    def __post_init__(self) -> None:
        self.approver = front_approver(self.audit, self.policy, self.keyring)


Handler = Callable[[Request, Actor], Awaitable[JSONResponse]]
B = TypeVar("B", bound=_Body)


def _problems(exc: ValidationError) -> list[str]:
    """Each problem pydantic found, as `field.path: message`."""
    return [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]


def unreadable(actor: Actor, status: RunStatus, why_not: str) -> ApiError:
    """The 403 of a caller who may not read the run (GET's, and any refusal that would tell of it)."""
    return ApiError(
        403, f"{actor.principal} may not read run {status.run_id}: may not start {status.playbook}: {why_not}", "start"
    )


def idempotent_run_id(principal: str, playbook: str, key: str) -> str:
    """The run an Idempotency-Key names: per principal and playbook, so nobody attaches to another's run."""
    return f"{playbook}-api-" + hashlib.sha256(f"{principal}\n{playbook}\n{key}".encode()).hexdigest()[:24]


def run_summary(status: RunStatus) -> dict[str, Any]:
    """One line of a listing."""
    fields = ("run_id", "playbook", "state", "requested_by", "trigger", "started_at", "finished_at")
    return status.model_dump(mode="json", include=set(fields))


class RunsApi:
    def __init__(self, deps: ApiDeps) -> None:
        self.deps = deps
        self._listing: dict[str, int] = {}  # listings being served, per principal (LISTINGS at most in all)
        # Each principal's refusals, per rule: one by one up to a budget a minute, then that minute's
        # count (RefusalLogs). (Tokens and rules bound them.)
        self._refusals = RefusalLogs(deps.audit, "api")

    async def close(self) -> None:
        """The front door stops: each principal's count of the minute under way is told now."""
        await self._refusals.close()

    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX)
        routes: list[tuple[str, str, str, Handler]] = [
            ("/runs", "POST", "start", self.post_run),
            ("/runs", "GET", "list", self.list_runs),
            ("/runs/{run_id}", "GET", "status", self.get_run),
            ("/runs/{run_id}/approvals", "POST", "vote", self.post_vote),
            ("/runs/{run_id}/confirmations", "POST", "confirm", self.post_confirm),
            ("/runs/{run_id}/cancel", "POST", "cancel", self.post_cancel),
        ]
        for path, method, operation, handler in routes:
            router.add_api_route(path, self._endpoint(operation, handler), methods=[method], name=f"api_{operation}")
        return router

    # ---- the edge ----------------------------------------------------------------------------

    def _endpoint(self, operation: str, handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                actor = self._authenticate(request)
            except ApiError as exc:
                log.warning("api request unauthenticated", operation=operation, status=exc.status, reason=exc.message)
                return exc.response()
            try:
                return await handler(request, actor)
            except RunError as exc:
                error = ApiError.of(exc)
            except ApiError as exc:
                error = exc
            except RPCError as exc:  # Temporal unreachable or failing: ours, and a retry may succeed
                error = ApiError(503, f"Temporal did not answer: {exc.message}", "temporal")
            except ValidationError as exc:  # a request model built past the body's own checks: still the caller's
                problems = _problems(exc)
                error = ApiError(422, "invalid request: " + "; ".join(problems), "body", problems=problems)
            if error.status < 500:
                await self._refused(actor, operation, request.path_params.get("run_id"), error)
            elif error.rule == "busy":  # not a failure: a bound on what one front door serves at once (logged there)
                pass
            else:
                log.error("api request failed on our side", operation=operation, reason=error.message)
            return error.response()

        return endpoint

    def _authenticate(self, request: Request) -> Actor:
        """The token's principal, from the Authorization header only (never the URL, which is logged)."""
        headers = request.headers.getlist("authorization")
        if not headers:
            raise unauthenticated("missing bearer token: send `Authorization: Bearer <token>`", invalid=False)
        scheme, _, token = headers[0].partition(" ")
        if len(headers) != 1 or scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("malformed Authorization header: expected one `Bearer <token>`", invalid=True)
        try:
            principal = self.deps.tokens.principal_for(token.strip())
        except TokenError as exc:
            log.error("api tokens file unreadable: every API request is refused", error=str(exc))
            raise ApiError(
                503, "the API's tokens cannot be read; the operator has to fix the tokens file", "token"
            ) from None
        if principal is None:
            raise unauthenticated("unknown or revoked API token", invalid=True)
        return Actor(principal, principal.partition(":")[2], (), "api")

    async def _body(self, request: Request, model: type[B], empty_ok: bool = False) -> B:
        raw = await read_limited(request, self.deps.max_body)
        if raw is None:
            raise ApiError(413, f"body over {self.deps.max_body} bytes", "body_limit")
        if empty_ok and not raw.strip():
            return model()
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; deep nesting recurses
            raise ApiError(400, f"body is not JSON: {str(exc)[:200] or type(exc).__name__}", "body") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = _problems(exc)
            raise ApiError(422, "invalid body: " + "; ".join(problems), "body", problems=problems) from None

    async def _refused(self, actor: Actor, operation: str, run_id: str | None, error: ApiError) -> None:
        """The audit record of a refusal; the refusal stands even if it cannot be written."""
        log.warning("api request refused", principal=actor.principal, operation=operation, status=error.status,
                    rule=error.rule, reason=error.message, run_id=run_id)
        run_id = run_id if run_id and len(run_id) <= 1000 else None
        event = refusal(actor.principal, operation, error.message[:AUDIT_TEXT], run_id=run_id, key=uuid.uuid4().hex)
        event.details.update(rule=error.rule, status=error.status, run_id=run_id, via="api")
        await self._refusals.record(actor.principal, error.rule, event)  # (a flood cannot grow the trail without bound)

    # ---- reading -----------------------------------------------------------------------------

    async def _may_read(self, actor: Actor, status: RunStatus) -> str | None:
        return await why_not_readable(self.deps.policy, self.deps.catalog(), status, actor, "api")

    async def get_run(self, request: Request, actor: Actor) -> JSONResponse:
        run_id = request.path_params["run_id"]
        status = await get_status(self.deps.client, run_id)
        why_not = await self._may_read(actor, status)
        if why_not is not None:
            raise unreadable(actor, status, why_not)
        return JSONResponse(status.model_dump(mode="json"))

    async def list_runs(self, request: Request, actor: Actor) -> JSONResponse:
        """The newest runs on this front door's task queue the actor may read, filtered by state and
        playbook; at most `limit` (≤ 100) of the newest SCAN executions."""
        state, playbook, limit = self._list_query(request)
        mine, serving = self._listing.get(actor.principal, 0), sum(self._listing.values())
        if mine >= LISTINGS_EACH or serving >= LISTINGS:
            log.warning("api listing turned away", principal=actor.principal, listing=dict(self._listing))
            held = f"{LISTINGS_EACH} of yours" if mine >= LISTINGS_EACH else f"{LISTINGS} in all"
            raise ApiError(503, f"busy: this front door is serving {held} listings of runs at once; retry in "
                                f"{LISTING_RETRY_AFTER} s", "busy", headers={"Retry-After": str(LISTING_RETRY_AFTER)})
        self._listing[actor.principal] = mine + 1
        try:
            async with asyncio.timeout(LISTING_DEADLINE):
                return await self._list(actor, state, playbook, limit)
        except TimeoutError:
            raise ApiError(503, f"the listing took longer than {LISTING_DEADLINE:g} s: runs' statuses are read from "
                                "the worker; is one polling the task queue?", "temporal") from None
        finally:
            if (left := self._listing[actor.principal] - 1) > 0:
                self._listing[actor.principal] = left
            else:
                del self._listing[actor.principal]

    async def _list(self, actor: Actor, state: str | None, playbook: str | None, limit: int) -> JSONResponse:
        query = f'WorkflowType = "PlaybookRun" AND TaskQueue = "{self.deps.task_queue}"'
        if state is not None and state not in FINAL_RUN_STATES:
            query += ' AND ExecutionStatus = "Running"'
        ids = [w.id async for w in self.deps.client.list_workflows(query, limit=SCAN)]
        runs: list[dict[str, Any]] = []
        readable: dict[tuple[str, str], bool] = {}
        for first in range(0, len(ids), READ_BATCH):
            batch = await asyncio.gather(*(self._status_or_none(i) for i in ids[first:first + READ_BATCH]))
            for status in batch:
                if status is None or (state and status.state != state) or (playbook and status.playbook != playbook):
                    continue
                key = (status.playbook, digest(status.params))
                if key not in readable:
                    readable[key] = await self._may_read(actor, status) is None
                if readable[key]:
                    runs.append(run_summary(status))
            if len(runs) >= limit:
                break
        return JSONResponse({"runs": runs[:limit]})  # (nothing of the runs the actor may not read, not their count)

    def _list_query(self, request: Request) -> tuple[str | None, str | None, int]:
        query = request.query_params
        problems = [f"unknown query parameter {name!r} (known: state, playbook, limit)"
                    for name in query if name not in ("state", "playbook", "limit")]
        state, playbook, limit = query.get("state") or None, query.get("playbook") or None, DEFAULT_LIMIT
        if state is not None and state not in RUN_STATES:
            problems.append(f"state {state!r} is not one of: {', '.join(sorted(RUN_STATES))}")
        text = query.get("limit")
        if text is not None:
            if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:  # ("²" is a digit too)
                problems.append(f"limit must be a whole number from 1 to {MAX_LIMIT}")
            else:
                limit = int(text)
        if problems:
            raise ApiError(422, "; ".join(problems), "query", problems=problems)
        if playbook is not None and playbook not in self.deps.catalog():
            raise ApiError(404, f"unknown playbook {playbook!r}", "unknown_playbook")
        return state, playbook, limit

    async def _status_or_none(self, run_id: str) -> RunStatus | None:
        try:
            return await get_status(self.deps.client, run_id)
        except RunError:  # no worker answering yet, or ended outside playbook-bot: not listed
            return None

    # ---- acting ------------------------------------------------------------------------------

    async def post_run(self, request: Request, actor: Actor) -> JSONResponse:
        """201 with the new run's id; with an Idempotency-Key, a repeat of the same request answers
        200 with the run the first one started, and the same key for different params is a 409."""
        body = await self._body(request, StartBody)
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.match(key):
            raise ApiError(
                400, "Idempotency-Key must be 1 to 200 printable ASCII characters without spaces", "idempotency"
            )
        try:
            loaded = self.deps.catalog().get(body.playbook)
        except UnknownPlaybook:
            raise ApiError(404, f"unknown playbook {body.playbook!r}", "unknown_playbook") from None
        try:
            params = coerce_params(loaded.playbook, body.params)
        except ParamError as exc:
            problems = [message for _, message in exc.problems]
            raise ApiError(422, str(exc), "params", problems=problems) from None
        trigger = TriggerContext(kind="api", requested_by=actor.principal)
        run_id = new_run_id(loaded.playbook.name) if key is None else idempotent_run_id(actor.principal, loaded.playbook.name, key)
        asked = await check_start(self.deps.policy, loaded, params, trigger, actor, run_id)
        deps = self.deps
        if key is None:
            handle = await start_run(
                deps.client, deps.task_queue, loaded, params, trigger, actor=actor, keyring=deps.keyring, run_id=run_id,
                asked=asked,
            )
            if handle.id != run_id:  # on_busy: attach: the run holding the key, nothing started
                return JSONResponse({"run_id": handle.id, "attached": True}, status_code=200)
            log.info("api run started", run_id=handle.id, playbook=loaded.playbook.name, by=actor.principal)
            return JSONResponse({"run_id": handle.id}, status_code=201)
        request = digest({"playbook": loaded.playbook.name, "params": params})
        try:
            handle = await start_run(
                deps.client, deps.task_queue, loaded, params, trigger, actor=actor, keyring=deps.keyring,
                run_id=run_id, on_conflict=WorkflowIDConflictPolicy.FAIL, memo={"api_request": request}, asked=asked,
            )
        except WorkflowAlreadyStartedError:
            described = await deps.client.get_workflow_handle(run_id).describe()
            if await described.memo_value("api_request", None) != request:
                raise ApiError(
                    409, f"Idempotency-Key {key!r} already started run {run_id} with other params: use a new key",
                    "idempotency",
                ) from None
            return JSONResponse({"run_id": run_id, "attached": True}, status_code=200)
        if handle.id != run_id:  # on_busy: attach: the key's holder; nothing started under the key's id
            return JSONResponse({"run_id": handle.id, "attached": True}, status_code=200)
        log.info("api run started", run_id=run_id, playbook=loaded.playbook.name, by=actor.principal)
        return JSONResponse({"run_id": run_id}, status_code=201)

    async def post_vote(self, request: Request, actor: Actor) -> JSONResponse:
        body = await self._body(request, VoteBody)
        asked = VoteRequest(step_id=body.step, user=actor.principal, vote=body.vote, reason=body.reason)
        run_id = request.path_params["run_id"]
        async with self._told_to_readers(run_id, actor):
            result = await vote(self.deps.client, run_id, asked, actor, self.deps.keyring, approver=self.deps.approver)
        return JSONResponse(result.model_dump(mode="json"))

    async def post_confirm(self, request: Request, actor: Actor) -> JSONResponse:
        body = await self._body(request, ConfirmBody)
        asked = ConfirmRequest(step_id=body.step, user=actor.principal, answer=body.answer, reason=body.reason)
        run_id = request.path_params["run_id"]
        async with self._told_to_readers(run_id, actor):
            result = await confirm(self.deps.client, run_id, asked, actor, self.deps.keyring)
        return JSONResponse(result.model_dump(mode="json"))

    async def post_cancel(self, request: Request, actor: Actor) -> JSONResponse:
        body = await self._body(request, CancelBody, empty_ok=True)
        run_id = request.path_params["run_id"]
        async with self._told_to_readers(run_id, actor):
            before, result = await cancel_run(self.deps.client, run_id, actor, self.deps.keyring, body.reason)
        return JSONResponse({"run_id": run_id, "was": before.state, "state": result.state, "message": result.message})

    @contextlib.asynccontextmanager
    async def _told_to_readers(self, run_id: str, actor: Actor) -> AsyncIterator[None]:
        """A refusal that says something of the run is told only to a caller who may read it;
        anyone else hears what GET /runs/{id} tells them (bot/engine/runs.py `hidden_from`)."""
        try:
            yield
        except RunError as exc:
            hidden = await hidden_from(self.deps.client, self.deps.policy, self.deps.catalog(), run_id, actor, "api", exc)
            if hidden is None:
                raise
            raise unreadable(actor, *hidden) from None
