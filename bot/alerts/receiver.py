"""POST /alertmanager, /grafana, /pagerduty, /opsgenie: authenticate, parse, route, and give every
alert a recorded outcome.

Each route is one sender (`AlertSender`), the principal its runs are requested by. Grafana-managed
alerting posts Alertmanager's shape (version "1", bot/alerts/payload.py) with its own bearer token;
PagerDuty incidents (signed bodies) and Opsgenie alerts (a custom bearer header) are read as alerts
keyed by their id and created time (bot/alerts/incidents.py) and routed by their own triggers.
Past the door every alert takes exactly the paths below.

Alertmanager delivers at least once (retries, repeat_interval, HA peers), so duplicates are
normal: an alert episode (playbook, fingerprint, startsAt) maps to one workflow id, and Temporal's
id rules make a repeat attach to the running run or start nothing after it ended. Invalid input
is a 4xx (Alertmanager does not retry it); a failure of ours is a 503 for the whole request, and
the natural ids make Alertmanager's retry safe.

With an audit store, the episode's state there (bot/audit/episodes.py) decides across replicas
and beyond Temporal's retention: a resolve is recorded before anything else looks at the run, and
a firing delivery must win the episode's claim (one serialized transaction) before it starts one.
So a run is never started for an episode resolved before its claim, and a run claimed before the
resolve is cancelled by whichever of the two deliveries sees the other's write.

Cost per delivery (issue 15): a repeat of an episode this process saw started costs no Temporal
call: whether its run is still going is read from the audit store (the worker records every run's
end there) while the hint is fresh, and from one describe after that or without a store (an
in-process hint, never used to start anything); a copy arriving while this process still decides
the same delivery (a retry overtaking a slow answer, HA peers at once) shares that decision and
costs no call; a new episode's store read with its claim (one trip) and its start rule are
asked at once (a claim that then starts nothing is given back; one won before the rule answered
looks for a resolve once more before the start), and its store writes (claim, started, the audit
events) are group-committed with every concurrent request's (bot/audit/batching.py), each
returned only once durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Iterable, Literal, Sequence

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from bot.alerts.episodes import RouteMatch, episode_id, route
from bot.alerts.grafana_signing import GrafanaSigning
from bot.alerts.incidents import pagerduty_signed, parse_opsgenie, parse_pagerduty, route_incident
from bot.alerts.payload import Alert, PayloadError, Sender, parse_payload, too_big_to_run
from bot.audit.recorder import refusal
from bot.audit.refusals import RefusalLog
from bot.audit.episodes import CLOCK_SKEW, Episode, episode_starts, series_range
from bot.audit.events import AuditEvent, EventKind
from bot.audit.batching import GroupCommitter
from bot.audit.backend import AuditStore
from bot.engine.runs import (
    RunBusy, RunError, StartAsked, ask_start, cancel_run, get_status, is_open, is_running, lock_conflict,
    run_description, run_input,
)
from bot.engine.state import TriggerContext
from bot.engine.workflow import PlaybookRun
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, ProofError
from bot.playbook.loader import Catalog, LoadedPlaybook
from bot.playbook.model import AlertTrigger, OpsgenieTrigger, PagerDutyTrigger, Playbook
from bot.policy.engine import PolicyEngine
from bot.policy.models import Verdict
from bot.server import direct_route, read_limited

log = structlog.get_logger(__name__)

ALERTMANAGER_USER = "alertmanager"
# A resolve's outcome for a playbook whose triggers no longer take the alert (edited since it fired).
EDITED_AWAY = ("this playbook's triggers no longer match the alert (edited since it fired); the run its firing "
               "started is still this resolve's to settle")
# The memo key of an alert-started run: its trigger's on_resolved, for a resolve that no longer matches it.
ON_RESOLVED_MEMO = "on_resolved"
# An outcome's reason when its delivery's startsAt was earlier than the episode under way.
MERGED = ("Alertmanager moved this alert's startsAt earlier than its episode's (it keeps the earliest when it "
          "merges copies of one alert, e.g. from an HA Prometheus pair): answered as that episode")
# The webhook's bearer token is checked before any alert is read: its alerts are vouched for.
ALERTMANAGER = Actor(ALERTMANAGER_USER, "Alertmanager", (), "alertmanager")


SenderName = Literal["alertmanager", "grafana", "pagerduty", "opsgenie"]
AnyTrigger = AlertTrigger | PagerDutyTrigger | OpsgenieTrigger


def _webhook_alerts(sender: Sender) -> Callable[[bytes], list[Alert]]:
    return lambda body: list(parse_payload(body, sender).alerts)


@dataclass(frozen=True)
class AlertSender:
    """Who posts on a route: the principal its runs are requested by (and the trigger kind), the
    payload it sends and how its alerts route, how it proves itself (`signed`: an HMAC of the body,
    PagerDuty's; else the bearer token), and the audit id prefix that
    keeps its receipts apart from another sender's."""

    name: SenderName
    title: str
    path: str
    event_prefix: str
    parse: Callable[[bytes], list[Alert]]
    route: Callable[[Iterable[LoadedPlaybook], Alert], list[RouteMatch]] = route
    signed: bool = False
    triggers: Callable[[Playbook], Sequence[AnyTrigger]] = lambda playbook: playbook.triggers.alertmanager

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.title, (), self.name)  # vouched for by the route's token or signature


# Every sender's refusals are audited (a wrong token, a forged signature): who tried to start
# incidents is on record, one event per distinct attempt, budgeted (RefusalBudget) against floods.
ALERTMANAGER_SENDER = AlertSender("alertmanager", "Alertmanager", "/alertmanager", "alert", _webhook_alerts("alertmanager"))
# Its own episodes (grafana-...): the same labels on both routes are two episodes, so neither sender's
# resolve can end or suppress the other's run (a Grafana caller picks its fingerprints freely).
GRAFANA_SENDER = AlertSender("grafana", "Grafana", "/grafana", "grafana", _webhook_alerts("grafana"),
                             partial(route, prefix="grafana"))
PAGERDUTY_SENDER = AlertSender("pagerduty", "PagerDuty", "/pagerduty", "pagerduty", parse_pagerduty,
                               partial(route_incident, "pagerduty"), signed=True,
                               triggers=lambda playbook: playbook.triggers.pagerduty)
OPSGENIE_SENDER = AlertSender("opsgenie", "Opsgenie", "/opsgenie", "opsgenie", parse_opsgenie,
                              partial(route_incident, "opsgenie"), triggers=lambda playbook: playbook.triggers.opsgenie)


def _keep(recent: OrderedDict[str, Any], key: str, limit: int, value: Any = None) -> None:
    """`key` (with `value`) as the most recent of at most `limit` keys (the oldest are forgotten)."""
    recent[key] = value
    recent.move_to_end(key)
    while len(recent) > limit:
        recent.popitem(last=False)


@dataclass(slots=True)
class Known:
    """An episode this process saw started: its run (`episode`, when a merged startsAt's delivery
    is answered as another), since when an end recorded for it is this run's own (`since`, wall
    clock: an earlier execution of the id ended long before), when Temporal or this process last
    saw it (`seen`, monotonic: the hint is trusted for KNOWN_FRESH after), and whether it ended."""

    episode: str | None
    since: float
    seen: float
    ended: bool = False


async def _settled(future: asyncio.Future[Any]) -> Any:
    """What a store call under way came to (None: it failed, or was cancelled)."""
    try:
        return await asyncio.shield(future)
    except (Exception, asyncio.CancelledError):  # noqa: BLE001  (nothing was claimed then)
        return None


def _starts(alert: Alert) -> str:
    """startsAt in UTC, as the episode id has it: a peer writing the same instant in another
    offset is the same episode, for the audit keys and the resolved-before check too."""
    return alert.starts_at.astimezone(timezone.utc).isoformat()


class Unavailable(RuntimeError):
    """Our side failed (Temporal, audit store): the whole request is a 503 and will be retried."""


@dataclass
class AlertDeps:
    client: Client
    task_queue: str
    catalog: Callable[[], Catalog]
    policy: PolicyEngine
    audit: AuditStore | None
    token: str | None
    max_body: int = 1 << 20
    keyring: Keyring = field(default_factory=Keyring)
    sender: AlertSender = ALERTMANAGER_SENDER
    secrets: tuple[str, ...] = ()  # a signed sender's signing secrets (several while one is rotated)
    # Grafana's optional HMAC signature: required when set, besides the bearer token if one is set too.
    signing: GrafanaSigning | None = None


class AlertReceiver:
    KNOWN_EPISODES = 50_000
    # How long after Temporal (or this door's own start) last showed an episode's run that a repeat
    # reads the run's end from the audit store instead of asking Temporal again. The store knows
    # every end the bot's own code wrote; only an end outside it (a run terminated through
    # Temporal itself) is missed, and only as a repeat's wording (attached) for at most this long.
    KNOWN_FRESH = 60.0
    # A store read for that hint that takes longer than HINT_READ_WAIT is not waited for: Temporal
    # answers, and the store is left alone for HINT_READ_PAUSE (a store that hangs, a PostgreSQL
    # server gone silent, would otherwise hold every repeat for its own timeouts, up to half a
    # minute, and each held read keeps a thread).
    HINT_READ_WAIT = 1.0
    HINT_READ_PAUSE = 30.0
    RECORDED_ATTEMPTS = 4096  # refused attempts remembered as on record (a sender retrying a stale token)
    RECORDED_EVENTS = 20_000  # event ids this process has appended (a repeat's receipt and outcome are on record)
    # How long a delivery waits for another delivery's claimed start to show up before it answers
    # 503 (Alertmanager retries; a claimer that died is taken over after CLAIM_STALE_AFTER).
    PENDING_WAIT = 10.0
    CLAIM_STALE_AFTER = 120.0

    def __init__(self, deps: AlertDeps, beside: AlertReceiver | None = None) -> None:
        """`beside`: the receiver of another sender in this process, whose episode hints and
        group commits this one shares (one GroupCommitter per store and loop)."""
        self.deps = deps
        self.sender = deps.sender
        # refusals of anonymous callers, recorded one by one up to a budget a minute
        self._refusals = RefusalLog(deps.audit, self.sender.name, f"webhook:{self.sender.name}")
        self._recorded: OrderedDict[str, None] = OrderedDict()  # attempts this process has on record
        self._own_key = os.urandom(32)  # keys refused attempts when the keyring holds no key (_attempt)
        self.actor = deps.sender.actor
        # Episodes this process has seen started: a repeat delivery (the usual case in a storm)
        # goes straight to "is it still running?": no store, no policy question, no start.
        # (each with the episode it is answered as when that is another: a merged startsAt's)
        self._known: OrderedDict[str, Known] = beside._known if beside is not None else OrderedDict()
        # Event ids this door appended (durably), each with when: a repeat delivery's receipt and
        # outcome, whose ids are the first delivery's, cost no store write for KNOWN_FRESH.
        self._appended: OrderedDict[str, float] = (beside._appended if beside is not None and beside.deps.audit is deps.audit
                                                   else OrderedDict())
        # Firing deliveries being decided now, by episode: a concurrent copy waits for the outcome.
        self._in_flight: dict[tuple[str, int], asyncio.Future[dict[str, Any] | None]] = {}  # (episode, trigger)
        # Concurrent requests' audit appends share one transaction (bot/audit/batching.py).
        self._commit = (beside._commit if beside is not None and beside.deps.audit is deps.audit
                        else GroupCommitter(deps.audit) if deps.audit is not None else None)
        self._hints_paused_until = -math.inf  # monotonic: a hint read outlasted HINT_READ_WAIT

    def router(self) -> APIRouter:
        router = APIRouter()
        summary = {"alertmanager": "Alertmanager webhook (v4)", "grafana": "Grafana Alerting webhook contact point (v1)",
                   "pagerduty": "PagerDuty V3 webhook (signed)", "opsgenie": "Opsgenie webhook integration"}
        direct_route(router, self.sender.path, self.receive, summary=summary[self.sender.name])
        return router

    def _event_id(self, alert: Alert, kind: EventKind, key: str) -> str:
        """Natural keys: a re-delivered alert records nothing twice."""
        return f"{self.sender.event_prefix}:{alert.fingerprint}:{kind.value}:{key}"

    async def receive(self, request: Request) -> JSONResponse:
        """Each alert × matching playbook gets an outcome: started, attached, already_handled,
        unmatched, rejected, busy (its concurrency key is held: on_busy refuse), resolved_cancelled, resolved_no_run or resolved_ignored."""
        authorization = request.headers.get("authorization", "")
        signing = self.deps.signing
        token_needed = not self.sender.signed and (self.deps.token is not None or signing is None)
        if token_needed and not self._authorised(authorization):  # before reading any body
            return await self._refuse(b"", authorization, "missing or wrong bearer token")
        body = await read_limited(request, self.deps.max_body)
        if body is None:
            return JSONResponse({"error": f"body over {self.deps.max_body} bytes"}, status_code=413)
        if self.sender.signed:
            signature = request.headers.get("x-pagerduty-signature", "")
            if not pagerduty_signed(body, signature, self.deps.secrets):
                why = "missing X-PagerDuty-Signature" if not signature else "X-PagerDuty-Signature does not match"
                return await self._refuse(body, signature, f"{why} (v1=<HMAC-SHA256 of the body>)")
        if signing is not None and (why := signing.refusal(body, request.headers)):
            return await self._refuse(body, signing.signature(request.headers), why)
        try:
            alerts = self.sender.parse(body)
        except PayloadError as exc:
            # On the record too: the sender drops a body answered 4xx, and any valid alert in it
            # with it (once per distinct body; the door's budget bounds a flood of them).
            credential = (request.headers.get("x-pagerduty-signature", "") if self.sender.signed
                          else signing.signature(request.headers) if signing is not None else authorization)
            return await self._refuse(body, credential, str(exc), status=exc.status,
                                      record_as=f"payload refused ({exc.status}): {exc}")
        try:
            outcomes = [o for alert in alerts for o in await self._handle(alert)]
        except Unavailable as exc:
            log.error("alert webhook failed on our side; the sender will retry", sender=self.sender.name, error=str(exc))
            return JSONResponse({"error": f"temporarily unavailable: {exc}"}, status_code=503)
        return JSONResponse(outcomes)

    async def _refuse(self, body: bytes, credential: str, reason: str, status: int = 401,
                      record_as: str | None = None) -> JSONResponse:
        """401 (or the payload's 4xx), and the refusal on record (as `record_as`, default `reason`):
        nothing started. One event per distinct attempt (body and credential), so a replayed
        forgery, or a sender retrying with a stale token, is recorded once; a repeat this process
        already recorded costs no budget."""
        attempt = self._attempt(body, credential)
        log.warning("webhook refused", sender=self.sender.name, reason=reason, attempt=attempt[:32])
        if attempt in self._recorded:
            return JSONResponse({"error": reason}, status_code=status)
        # (within the door's budget: a flood of forgeries cannot grow the trail unbounded)
        if await self._refusals.record(refusal(self.sender.name, self._refusals.operation, record_as or reason,
                                               key=attempt[:32])):
            _keep(self._recorded, attempt, self.RECORDED_ATTEMPTS)
        return JSONResponse({"error": reason}, status_code=status)

    async def close(self) -> None:
        """The door stops: the count of the minute under way is told now (RefusalLog.close)."""
        await self._refusals.close()

    def _attempt(self, body: bytes, credential: str) -> str:
        """The attempt's key: an HMAC under this deployment's envelope key (the same on every
        replica), never a plain digest. A refused credential can be a real secret (another route's
        token, a typo of this one's, a rotated one), and a plain hash in the trail or the logs would
        let whoever reads them test guesses offline. A process without the key uses one of its own."""
        material = hashlib.sha256(body + b"\0" + credential.encode("utf-8", "surrogateescape")).hexdigest()
        try:
            return self.deps.keyring.seal("webhook refusal", material).partition(":")[2]
        except ProofError:
            return hmac.new(self._own_key, material.encode(), hashlib.sha256).hexdigest()

    def _authorised(self, header: str) -> bool:
        token = self.deps.token
        scheme, _, given = header.partition(" ")
        if not token or scheme.lower() != "bearer":
            return False
        # bytes: compare_digest refuses non-ASCII str, and a header is whatever a client sends
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())

    async def _handle(self, alert: Alert) -> list[dict[str, Any]]:
        name = alert.labels.get("alertname", "")
        received = self._event(alert, None, EventKind.alert_received, {
            "alertname": name, "status": alert.status, "fingerprint": alert.fingerprint, "labels": alert.labels,
        }, key=f"{alert.status}:{_starts(alert)}")
        matches = self.sender.route(self.deps.catalog().values(), alert)
        edited = await self._edited_away(alert, matches) if alert.status == "resolved" else []
        results = []
        if not matches and not edited:
            results.append(self._outcome(alert, None, "unmatched"))
        for match in matches:
            if alert.status == "resolved":
                results.append(await self._resolved(alert, match))
            else:
                results.append(await self._firing(alert, match))
        for match, fallback in edited:
            results.append(await self._resolved(alert, match, fallback))
            results[-1].setdefault("reason", EDITED_AWAY)
        await self._record([received, *[self._outcome_event(alert, r) for r in results]])
        for result in results:
            log.info("alert outcome", **{k: v for k, v in result.items() if k != "labels"})
        return results

    async def _firing(self, alert: Alert, match: RouteMatch) -> dict[str, Any]:
        playbook, run_id = match.name, match.workflow_id
        if match.error or match.params is None:
            return self._outcome(alert, playbook, "rejected", reason=match.error or "no params")
        if (known := self._known.get(run_id)) is not None:
            # A repeat of an episode this process saw started (the usual delivery in a storm):
            # the store (or one Temporal call) answers it. The hint is safe because this path never starts
            # anything; a resolve is the resolved delivery's to act on (it is recorded, and the
            # run cancelled, by whichever front door gets it), and one this process handled
            # drops the hint. Only the answer's wording can lag a resolve on another replica:
            # attached while its cancel is still on the way, already_handled once the run ended.
            # A delivered id answered as another episode (a merged startsAt) only while that run
            # runs: once it ended, its episode may have resolved, and the store decides again.
            episode = known.episode or run_id
            running = await self._still_going(known, episode)
            if running or (running is False and episode == run_id):
                return self._outcome(alert, playbook, "attached" if running else "already_handled", run_id=episode,
                                     reason=MERGED if episode != run_id else None)
            self._known.pop(run_id, None)  # Temporal forgot the run (retention), or see above: the store decides
        decided_by = (run_id, match.trigger_index)  # (which trigger took it decides on_rerun: a copy's own)
        while (first := self._in_flight.get(decided_by)) is not None:
            # A copy of a delivery this door is deciding right now (an HA Alertmanager pair sends each
            # notification from both peers at once, Alertmanager retries a slow answer): answered from
            # that delivery's outcome, with no store, policy or Temporal call of its own, when that
            # outcome is the episode's own (its run started, attached or over). One that depends on
            # the delivery's content (the start rule's verdict, the concurrency key its labels render:
            # anyone holding the token can post a "copy" with the same fingerprint and other labels)
            # is not shared: the copy decides for itself. So is a first delivery that failed (503).
            # Only a delivery taken by the same trigger is waited for: its on_rerun is the episode's.
            # In this process only; other replicas decide through the store, as before.
            decided = await asyncio.shield(first)
            if decided is not None and (copied := self._as_copy(alert, match, decided)) is not None:
                return copied
            if decided is not None:
                break  # (its own decision, alongside any other copy's)
        decision: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        if decided_by not in self._in_flight:
            self._in_flight[decided_by] = decision
        result = None
        try:
            result = await self._decide_firing(alert, match)
            return result
        finally:
            if self._in_flight.get(decided_by) is decision:
                del self._in_flight[decided_by]
            decision.set_result(result)

    def _as_copy(self, alert: Alert, match: RouteMatch, first: dict[str, Any]) -> dict[str, Any] | None:
        """A concurrent copy's outcome, from the first delivery's when that is the episode's own:
        the run it started or found (this episode's, or the later one a merged startsAt names), or
        that the episode is over. None for an outcome the first delivery's content decided."""
        outcome, run_id, reason = first["outcome"], first.get("run_id"), first.get("reason")
        own = run_id == match.workflow_id or (run_id is not None and reason == MERGED)
        if outcome == "started" and own:
            if first.get("resolved"):  # the alert resolved while its run started: settled already
                return self._outcome(alert, match.name, "already_handled", run_id=run_id, reason=reason)
            return self._outcome(alert, match.name, "attached", run_id=run_id, reason=reason if reason == MERGED else None)
        if outcome in ("attached", "already_handled") and (own or run_id is None):
            return self._outcome(alert, match.name, outcome, run_id=run_id, reason=reason)
        return None

    async def _decide_firing(self, alert: Alert, match: RouteMatch) -> dict[str, Any]:
        """A firing delivery of an episode this process knows no run of: the full decision."""
        trigger = TriggerContext(kind=self.sender.name, requested_by=self.sender.name, alert=alert.as_context())
        # Independent, so at once (issue 17): the start rule, and the episode's state with its
        # claim (one trip to the store). A claim won for a run that then does not start (refused,
        # busy) is given back, so the next delivery claims it at once. The claim goes first: its
        # write reaches its thread on the loop's next pass, and sending the question to a sleeping
        # policy child can hold this loop while the child wakes (measured: the claim's thread began
        # 1.8 ms in and was the last to finish; claim first, it begins at 0.8 ms).
        claiming = asyncio.ensure_future(self._episode(alert, match))
        asking = asyncio.ensure_future(self._ask_start(match, trigger))
        try:
            asked = await asking
            claimed_first = claiming.done()
            # (shielded: a delivery cancelled meanwhile still learns what it claimed, to give it back)
            episode, claimed = await asyncio.shield(claiming)
            if claimed is not None and claimed.claimed and claimed_first:
                # Claimed before the rule answered: a resolve recorded in between is looked for
                # now, so the window in which a resolve cannot stop the start stays the claim's own.
                episode, claimed = await self._unless_resolved(match, episode, claimed)
            refused = await self._refused(alert, match, trigger, episode, asked)
        except BaseException:
            asking.cancel()
            if (settled := await _settled(claiming)) is not None:
                await self._give_back(settled[1])
            raise
        if refused is not None:
            if claimed is not None and claimed.claimed and refused.get("run_id") == match.workflow_id:
                # Refused, but the episode's own run exists (a stale claim taken over, whose slow
                # claimer started it after all): the claim is that run's, as `_start` records it.
                await self._write("record an episode start",
                                  lambda s: s.episode_started(claimed.episode_id, claimed.runs))
            else:
                await self._give_back(claimed)
            return refused
        if episode is None:
            return await self._start(alert, match, trigger, None, asked)
        return await self._claim_and_start(alert, match, trigger, claimed or episode, asked, fresh=claimed is not None)

    async def _ask_start(self, match: RouteMatch, trigger: TriggerContext) -> StartAsked:
        """The `start` rule, asked once the claim beside it has handed its write to its thread. An
        alert too big to start a run is refused here, unasked (a policy evaluation of megabytes timed
        out and restarted the engine under load), so it is answered as any refused start is: by the
        episode's run if it has one, after copies in flight and resolves had their say (review, stop 54)."""
        await asyncio.sleep(0)  # one pass of the loop: the group commit's writer starts in it
        if trigger.alert is not None and (too_big := too_big_to_run(trigger.alert)):
            return StartAsked(match.workflow_id, datetime.now(timezone.utc), None, Verdict(reasons=[too_big]), None)
        return await ask_start(self.deps.policy, match.playbook, match.params, trigger, self.actor, match.workflow_id)

    async def _refused(self, alert: Alert, match: RouteMatch, trigger: TriggerContext, episode: Episode | None,
                       asked: StartAsked) -> dict[str, Any] | None:
        """The outcome when this delivery starts nothing (resolved, refused, busy); None: start."""
        playbook, run_id = match.name, match.workflow_id
        verdict = asked.verdict
        if episode is not None and episode.resolved_at is not None:
            # A firing delivery that arrives after its resolved one (a retry, a slow peer, another
            # front door): the alert is over, and a resolved alert never remediates.
            return await self._after_resolve(alert, match, episode)
        if not verdict.allow:
            # Refused to start now, but the episode may already have its run (started through
            # another front door, or before the policy changed): then this delivery attaches.
            running = await self._running(run_id)
            if running is not None:
                self._remember(run_id, ended=not running)
                return self._outcome(alert, playbook, "attached" if running else "already_handled", run_id=run_id)
            return self._outcome(alert, playbook, "rejected", reason="start refused: " + "; ".join(verdict.reasons))
        try:
            holder = await lock_conflict(self.deps.client, match.playbook, match.params, trigger, run_id)
        except RunBusy as exc:  # on_busy: refuse, and another run holds the key
            if await self._merged_into(run_id, exc.holder, episode):  # ... unless it is this very alert's episode
                self._remember(exc.holder)
                self._remember(run_id, answered_as=exc.holder)
                return self._outcome(alert, playbook, "attached", run_id=exc.holder, reason=MERGED)
            return self._outcome(alert, playbook, "busy", reason=str(exc), holder=exc.holder)
        except RunError as exc:
            return self._outcome(alert, playbook, "rejected", reason=str(exc))
        if holder is not None:  # on_busy: attach, like a duplicate of the holder's alert
            return self._outcome(alert, playbook, "attached", run_id=holder)
        return None

    async def _unless_resolved(self, match: RouteMatch, episode: Episode, claimed: Episode
                               ) -> tuple[Episode, Episode | None]:
        """(`episode`, `claimed`) as they were, or, once the episode has resolved since the claim,
        the claim given back and the episode's state after (a rare race: two reads are fine)."""
        def read(store: AuditStore) -> Episode:
            return store.episode(match.workflow_id)

        if (await self._store("read an episode", read)).resolved_at is None:
            return episode, claimed
        await self._give_back(claimed)
        return await self._store("read an episode", read), None

    async def _give_back(self, claimed: Episode | None) -> None:
        """Release a claim won by a delivery that starts no run (best effort: a claim not given
        back goes stale and is taken over)."""
        if claimed is None or not claimed.claimed:
            return
        with contextlib.suppress(Unavailable):
            await self._write("release an episode", lambda s: s.release_episode(claimed.episode_id, claimed.runs))

    async def _claim_and_start(self, alert: Alert, match: RouteMatch, trigger: TriggerContext,
                               episode: Episode, asked: StartAsked, *, fresh: bool = False) -> dict[str, Any]:
        """`_claim_loop`'s outcome; one answered as a later episode of the alert says why."""
        result = await self._claim_loop(alert, match, trigger, episode, asked, fresh=fresh)
        if result.get("run_id") not in (None, match.workflow_id):  # the claim found a later episode of the alert
            result.setdefault("reason", MERGED)
        return result

    async def _claim_loop(self, alert: Alert, match: RouteMatch, trigger: TriggerContext,
                          episode: Episode, asked: StartAsked, *, fresh: bool = False) -> dict[str, Any]:
        """Start the episode's run only with its claim; otherwise answer from the episode's state.
        An episode read as started skips the claim (a write) and goes to Temporal: a repeat in a
        storm costs a read, and started never goes back to false but for a failed start's release."""
        playbook, run_id = match.name, match.workflow_id
        delivered = run_id
        deadline = time.monotonic() + self.PENDING_WAIT
        rerun, claim = False, episode
        while True:
            if fresh:  # `episode` is the answer of a claim just made (_decide_firing)
                fresh = False
            elif rerun or not claim.started:
                claim = await self._write("claim an episode", lambda s: s.claim_episode(
                    run_id, rerun=rerun, stale_after=self.CLAIM_STALE_AFTER))
            if claim.episode_id != run_id:  # an open episode of this alert began later: the delivery is that one's
                log.info("alert startsAt earlier than its episode's: answered as that episode", delivered=run_id,
                         episode=claim.episode_id)
                match = replace(match, workflow_id=claim.episode_id)
                run_id = match.workflow_id
            if claim.claimed:  # (`asked` was for the delivered run id: run_input seals it for that one only)
                return await self._start(alert, match, trigger, claim, asked)
            if claim.resolved_at is not None:  # resolved between our read and our claim
                return await self._after_resolve(alert, match, claim)
            if claim.started:
                known = self._claimed(claim)
                running = await self._still_going(known, run_id)
                if running is not None:  # (`known` says so now: _still_going noted it)
                    _keep(self._known, run_id, self.KNOWN_EPISODES, known)
                    if delivered != run_id:  # its repeats go straight to the episode's run too
                        _keep(self._known, delivered, self.KNOWN_EPISODES, replace(known, episode=run_id))
                    return self._outcome(alert, playbook, "attached" if running else "already_handled", run_id=run_id)
                # The episode ran, and Temporal no longer has its run (its retention ended).
                if match.trigger.on_rerun != "start":
                    return self._outcome(alert, playbook, "already_handled", run_id=run_id, reason=(
                        f"the episode ran before (run {claim.runs}) and Temporal no longer has it; "
                        "on_rerun: already_handled starts nothing"))
                rerun = True
                continue
            # Another delivery holds a fresh claim and is starting the run now: wait for it.
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"episode {run_id}: another delivery claimed its start at {claim.claimed_at} and has not "
                    "started it yet (retry; a claim not started within "
                    f"{self.CLAIM_STALE_AFTER:g} s is taken over)"
                )
            rerun = False
            await asyncio.sleep(0.1)

    async def _start(self, alert: Alert, match: RouteMatch, trigger: TriggerContext,
                     claim: Episode | None, asked: StartAsked) -> dict[str, Any]:
        playbook, run_id = match.name, match.workflow_id
        try:
            await self.deps.client.start_workflow(
                PlaybookRun.run,
                run_input(match.playbook, match.params or {}, trigger, self.actor, self.deps.keyring, run_id, asked),
                id=run_id,
                task_queue=self.deps.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                memo={ON_RESOLVED_MEMO: match.trigger.on_resolved},  # (read by a resolve that no longer matches)
                static_summary=f"{playbook} for {alert.labels.get('alertname', 'alert')} {alert.fingerprint}",
            )
        except WorkflowAlreadyStartedError:
            if claim is not None and claim.runs == 1:
                # A claim taken over from a claimer that had started the run after all (or a run
                # from before episodes were stored): the episode's run exists.
                await self._write("record an episode start", lambda s: s.episode_started(run_id, 1))
            elif claim is not None:  # a rerun, but Temporal still has the earlier run
                await self._write("release an episode", lambda s: s.release_episode(run_id, claim.runs))
            running = await self._running(run_id)
            self._remember(run_id, ended=running is False)
            return self._outcome(alert, playbook, "attached" if running else "already_handled", run_id=run_id)
        except RPCError as exc:
            await self._give_back(claim)  # (the claim `_claim_loop` won for this start, if any)
            if exc.status == RPCStatusCode.INVALID_ARGUMENT:
                # Temporal refuses this start as it is (its input past the blob size limit, from an
                # alert's fields or a param templated from a long annotation): every retry would be
                # refused alike, so it is this alert's outcome, not a 503 that holds the whole body.
                return self._outcome(alert, playbook, "rejected", reason=f"Temporal refused the start: {exc.message}")
            raise Unavailable(f"Temporal: {exc.message}") from None
        self._remember(run_id)
        extra: dict[str, Any] = {"rerun": claim.runs} if claim is not None and claim.runs > 1 else {}
        if claim is None:
            return self._outcome(alert, playbook, "started", run_id=run_id)
        after = await self._write("record an episode start", lambda s: s.episode_started(run_id, claim.runs))
        if after.resolved_at is None:
            return self._outcome(alert, playbook, "started", run_id=run_id, **extra)
        # The alert resolved while this run started, and the resolved delivery may have looked
        # before the run existed: settle it here, as the resolved delivery would have.
        settled, _, reason = await self._settle_resolved(match)
        reason = {"cancelled": "the alert resolved while its run started: the run was cancelled",
                  "ignored": reason or "the alert resolved while its run started (on_resolved: continue)",
                  "no_run": "the alert resolved while its run started, and the run has ended"}[settled]
        return self._outcome(alert, playbook, "started", run_id=run_id, reason=reason, resolved=settled, **extra)

    async def _after_resolve(self, alert: Alert, match: RouteMatch, episode: Episode) -> dict[str, Any]:
        """A firing delivery for a resolved episode: nothing starts, and a run that was claimed
        before the resolve (a race the resolved delivery may have missed) is settled too."""
        reason = "the alert was already resolved"
        if episode.runs == 0:
            return self._outcome(alert, match.name, "already_handled", reason=reason)
        settled, run_id, why = await self._settle_resolved(match)
        if settled == "cancelled":
            reason += "; its run was cancelled"
        elif why:
            reason += f"; {why}"
        return self._outcome(alert, match.name, "already_handled", run_id=run_id or match.workflow_id,
                             reason=reason)

    async def _resolved(self, alert: Alert, match: RouteMatch, fallback: str | None = None) -> dict[str, Any]:
        """A resolved alert never remediates: it cancels (or is noted by) the episode's run."""
        playbook, merged, delivered = match.name, False, match.workflow_id
        if self.deps.audit is not None:
            later = await self._resolved_episode(alert, match)
            if later is not None:
                match, merged = replace(match, workflow_id=later), True
            # Recorded first: a firing delivery claiming after this starts nothing, and one that
            # claimed before sees it once its run is started and cancels it if we could not.
            # runs == 0 still asks Temporal below: a run this store never claimed (started before
            # the store kept episodes, or by a front door with a store of its own) is still ended.
            # (Under a merged startsAt both: a late retry of its firing then reads its own id resolved.)
            await self._write("resolve an episode",
                              lambda s: [s.resolve_episode(i) for i in {delivered, match.workflow_id}])
        for known in {delivered, match.workflow_id}:
            self._known.pop(known, None)  # a later firing delivery reads the resolve
        settled, run_id, reason = await self._settle_resolved(match, fallback)
        outcome = {"cancelled": "resolved_cancelled", "ignored": "resolved_ignored", "no_run": "resolved_no_run"}[settled]
        return self._outcome(alert, playbook, outcome, run_id=run_id, reason=reason or (MERGED if merged else None))

    async def _edited_away(self, alert: Alert, matches: list[RouteMatch]) -> list[tuple[RouteMatch, str]]:
        """A resolve's episodes under playbooks whose triggers no longer match the alert (their
        matchers were edited, or removed, or the alert's labels moved, since it fired), each with
        the on_resolved to use for a run that carries none in its memo (one from before it):
        `continue` if any of the playbook's triggers says so (never abort a run whose author may
        have declared it uninterruptible on a guess), else `cancel`. A resolved alert never
        remediates, so their runs are this resolve's to settle too. One store read for the whole
        catalog; without a store, only matching playbooks are settled."""
        if self.deps.audit is None:
            return []
        matched = {m.name for m in matches}
        candidates = {episode_id(loaded.playbook.name, alert.fingerprint, alert.starts_at,
                                 prefix=self.sender.event_prefix): loaded
                      for loaded in self.deps.catalog().values() if loaded.playbook.name not in matched}
        if not candidates:
            return []
        seen = await self._store("read episodes", lambda s: s.episodes_of(list(candidates)))
        edited = []
        for episode in seen:
            loaded = candidates[episode.episode_id]
            triggers = self.sender.triggers(loaded.playbook)
            fallback = "continue" if any(t.on_resolved == "continue" for t in triggers) else "cancel"
            # (its trigger is not read: the run's memo, else `fallback`, says what the resolve does)
            trigger = triggers[0] if triggers else None
            edited.append((RouteMatch(loaded, trigger, 0, episode.episode_id), fallback))  # type: ignore[arg-type]
        return edited

    async def _merged_into(self, run_id: str, holder: str | None, episode: Episode | None) -> bool:
        """Whether the run holding the key is the open later episode of this alert that the
        delivery is a merged copy of, as its claim would find it (its own episode never seen, an
        open later one): then the key is its own."""
        span = series_range(run_id)
        if self.deps.audit is None or holder is None or span is None or episode is None or episode.seen:
            return False
        low, high, length = span
        if not (low < holder <= high and len(holder) == length):
            return False
        later = await self._store("read an episode", lambda s: s.later_episode(run_id))
        return later is not None and later.episode_id == holder and later.resolved_at is None

    async def _resolved_episode(self, alert: Alert, match: RouteMatch) -> str | None:
        """The episode a resolve ends when Alertmanager moved its startsAt earlier (none was seen
        under the resolve's own id): the latest of the alert's that began before the alert ended."""
        run_id = match.workflow_id

        def read(store: AuditStore) -> Episode | None:
            return None if store.episode(run_id).seen else store.later_episode(run_id)

        later = await self._store("read an episode", read)
        if later is None:
            return None
        began = episode_starts(later.episode_id)
        if began is None or (alert.ends_at is not None and began > alert.ends_at):
            return None  # a later firing of the same alert, after this one ended: another episode
        if alert.ends_at is not None and alert.ends_at > datetime.now(timezone.utc) + CLOCK_SKEW:
            return None  # a resolve that says it ends in the future is nobody's merged copy
        return later.episode_id

    async def _settle_resolved(self, match: RouteMatch, fallback: str | None = None
                               ) -> tuple[str, str | None, str | None]:
        """What a resolve does to the episode's run: cancelled, ignored (on_resolved: continue, or
        the cancel rule refused, with the reason) or no_run; and the run id to report. The
        on_resolved is the run's own, from its memo (the trigger that started it: the playbook's
        triggers may have been edited since); for a run without one, `fallback`, else the trigger
        the resolve matched."""
        run_id = match.workflow_id
        running, said = await self._run_state(run_id)
        if not running:
            return "no_run", None, None
        if (said or fallback or match.trigger.on_resolved) == "continue":
            return "ignored", run_id, None
        try:
            await cancel_run(self.deps.client, run_id, self.actor, self.deps.keyring, reason="the alert resolved")
        except RunError as exc:
            if await self._running(run_id) is False:  # it ended on its own meanwhile
                return "no_run", run_id, None
            if exc.rule == "run_state" and await self._cancel_under_way(run_id):
                # A concurrent delivery of the same resolve (a retry, an HA peer) cancelled it first.
                return "cancelled", run_id, None
            # The cancel rule refused: the run goes on, and the refusal is on the record.
            return "ignored", run_id, f"cancel refused: {exc}"
        except RPCError as exc:
            raise Unavailable(f"Temporal: {exc.message}") from None
        return "cancelled", run_id, None

    async def _cancel_under_way(self, run_id: str) -> bool:
        try:
            return (await get_status(self.deps.client, run_id)).cancelled_by is not None
        except (RPCError, RunError):
            return False

    def _remember(self, run_id: str, answered_as: str | None = None, ended: bool = False) -> None:
        """`run_id`'s episode has a run (`answered_as`'s, if given), which Temporal (or this door's
        start) shows now: running, or `ended`."""
        since = time.time() - CLOCK_SKEW.total_seconds()  # another host's clock may run behind ours
        _keep(self._known, run_id, self.KNOWN_EPISODES, Known(answered_as, since, time.monotonic(), ended))

    def _claimed(self, episode: Episode) -> Known:
        """A started episode read from the store, as a hint: fresh from its claim, so a repeat that
        another door started moments ago reads the run's end from the store too. A claim stamped
        in our future (a clock ahead of ours) is not fresh: it would be again on every rebuild
        until our clock passed it, each time after Temporal said it has no such run (an
        `on_rerun: start` then would wait for that clock); Temporal is asked instead."""
        claimed = episode.claimed_at.timestamp() if episode.claimed_at is not None else None
        age = time.time() - claimed if claimed is not None else -1.0
        if claimed is None or age < 0:
            return Known(None, 0.0, -math.inf)
        return Known(None, claimed - CLOCK_SKEW.total_seconds(), time.monotonic() - age)

    async def _still_going(self, known: Known, episode: str) -> bool | None:
        """Whether the known episode's run is running (None: Temporal no longer has it). While the
        hint is fresh, an end is read from the audit store, where the worker records every run's
        (one read on this process's store thread, against a describe's work in Temporal and
        here: under a storm of repeats, the difference is most of Temporal's load); later, when
        the store cannot answer (or not within HINT_READ_WAIT), or without one, Temporal says, and
        the hint is fresh again."""
        if time.monotonic() - known.seen < self.KNOWN_FRESH:
            if known.ended:
                return False
            if (store := self.deps.audit) is not None and time.monotonic() >= self._hints_paused_until:
                since = datetime.fromtimestamp(known.since, timezone.utc)
                try:
                    known.ended = await asyncio.wait_for(asyncio.to_thread(store.run_ended, episode, since),
                                                         self.HINT_READ_WAIT)
                    return not known.ended
                except TimeoutError:  # the read goes on in its thread; nobody waits for it
                    self._hints_paused_until = time.monotonic() + self.HINT_READ_PAUSE
                    log.warning("audit store slow to say whether a run ended; asking Temporal instead for a while",
                                run_id=episode, waited_seconds=self.HINT_READ_WAIT, pause_seconds=self.HINT_READ_PAUSE)
                except Exception as exc:  # Temporal still knows: answered from there
                    log.warning("audit store cannot say whether a run ended; asking Temporal", run_id=episode,
                                error=str(exc))
        running = await self._running(episode)
        if running is not None:
            known.seen, known.ended = time.monotonic(), not running
            if running:  # its end is still to come: no earlier execution's end is read as its own
                known.since = max(known.since, time.time() - CLOCK_SKEW.total_seconds())
        return running

    async def _run_state(self, run_id: str) -> tuple[bool | None, str | None]:
        """Whether the run is running (as `_running`) and the on_resolved its start recorded in its
        memo (None: a run from before the memo), from one describe."""
        try:
            description = await run_description(self.deps.client, run_id)
        except RPCError as exc:
            raise Unavailable(f"Temporal: {exc.message}") from None
        if description is None:
            return None, None
        if not is_open(description):
            return False, None
        said = (await description.memo()).get(ON_RESOLVED_MEMO)
        return True, said if said in ("cancel", "continue") else None

    async def _running(self, run_id: str) -> bool | None:
        """True running, False ended, None never started."""
        try:
            return await is_running(self.deps.client, run_id)
        except RPCError as exc:
            raise Unavailable(f"Temporal: {exc.message}") from None

    @staticmethod
    def _outcome(alert: Alert, playbook: str | None, outcome: str, *, run_id: str | None = None,
                 reason: str | None = None, holder: str | None = None, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = {
            "fingerprint": alert.fingerprint,
            "alertname": alert.labels.get("alertname"),
            "status": alert.status,
            "playbook": playbook,
            "outcome": outcome,
            "run_id": run_id,
        }
        if reason:
            result["reason"] = reason
        if holder:
            result["holder"] = holder  # busy: the run holding the playbook's concurrency key
        result.update(extra)  # rerun: N (the run's number); resolved: what a resolve meanwhile did
        return result

    def _event(self, alert: Alert, run_id: str | None, kind: EventKind, details: dict[str, Any],
               key: str) -> AuditEvent:
        return AuditEvent(
            event_id=self._event_id(alert, kind, key),
            ts=datetime.now(timezone.utc),
            run_id=run_id,
            step_id=None,
            kind=kind,
            actor=self.sender.name,
            details=details,
        )

    @staticmethod
    def _outcome_key(alert: Alert, playbook: str | None, status: str, outcome: str) -> str:
        return f"{playbook}:{status}:{_starts(alert)}:{outcome}"

    def _outcome_event(self, alert: Alert, result: dict[str, Any]) -> AuditEvent:
        key = self._outcome_key(alert, result["playbook"], alert.status, result["outcome"])
        if result.get("rerun"):  # a rerun's start is its own event, not a duplicate of the first run's
            key += f":{result['rerun']}"
        return self._event(alert, result.get("run_id"), EventKind.alert_outcome, dict(result), key=key)

    async def _episode(self, alert: Alert, match: RouteMatch) -> tuple[Episode | None, Episode | None]:
        """The episode's shared state (None without a store), and this delivery's claim on it when
        nothing has it yet (neither started nor resolved): one group-committed trip to the store.
        A file written before episodes were stored knows a resolve only as its recorded outcome:
        that is carried over on first sight."""
        if self.deps.audit is None:
            return None, None
        run_id = match.workflow_id
        event_id = self._event_id(alert, EventKind.alert_outcome,
                             self._outcome_key(alert, match.name, "resolved", "resolved_no_run"))

        def read_and_claim(store: AuditStore) -> tuple[Episode, Episode | None]:
            episode = store.episode(run_id)
            if episode.runs == 0 and episode.resolved_at is None and store.has_event(event_id):
                return store.resolve_episode(run_id), None
            if episode.resolved_at is not None or episode.started:
                return episode, None  # (a repeat: Temporal answers it, _claim_loop)
            return episode, store.claim_episode(run_id, rerun=False, stale_after=self.CLAIM_STALE_AFTER)

        return await self._write("read and claim an episode", read_and_claim)

    async def _store(self, doing: str, call: Callable[[AuditStore], Any]) -> Any:
        store = self.deps.audit
        assert store is not None
        try:
            return await asyncio.to_thread(call, store)
        except Exception as exc:
            raise Unavailable(f"audit store: cannot {doing}: {exc}") from None

    async def _write(self, doing: str, call: Callable[[AuditStore], Any]) -> Any:
        """An episode write, group-committed with concurrent requests' writes (one transaction
        and one fsync for all of them on SQLite); returned only once committed."""
        assert self._commit is not None
        try:
            return await self._commit.call(call)
        except Exception as exc:
            raise Unavailable(f"audit store: cannot {doing}: {exc}") from None

    async def _record(self, events: list[AuditEvent]) -> None:
        """Every received alert ends in a recorded outcome; a store we cannot write is our fault (503).
        Events this door appended in the last KNOWN_FRESH (ids are natural keys: a repeat's are the
        first's) are on record: the store would keep the first of them anyway. Only that long: a
        store that lost rows it had committed (a failover to a standby behind it, a restore) gets
        them again from the next repeat after it."""
        if self._commit is None:
            return
        now = time.monotonic()
        events = [e for e in events if now - self._appended.get(e.event_id, -math.inf) >= self.KNOWN_FRESH]
        if not events:
            return
        try:
            await self._commit.append(events)
        except Exception as exc:
            raise Unavailable(f"audit store: {exc}") from None
        for event in events:
            _keep(self._appended, event.event_id, self.RECORDED_EVENTS, now)
