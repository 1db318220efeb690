"""`/playbook help|list|run|status|cancel|dry-run`.

Every handler acks first (an empty ack: Slack shows nothing, no spinner) and answers through
the command's response_url, ephemerally, except `run`, which starts the workflow inside the ack
window, before acking, with an id derived from Slack's `trigger_id`: a Slack retry or a replayed signed
request carries the same trigger_id, so it attaches to the run instead of starting another.

A `run` that lacks a required param, and `/playbook` alone, are acked at once and open a form
right after (bot/slack/modals.py: a trigger_id opens a view only within 3 s).

Before a `run`'s ack only what starting it needs: parse, the requester's groups (cached), the
`start` policy question, the start. Answers (through response_url, or chat.postEphemeral when a
command carries none) and `slack_command` audit events go to the background lanes
(bot/slack/background.py): a failing answer or audit store never costs another command its ack.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from slack_bolt.async_app import AsyncApp
from temporalio.exceptions import WorkflowAlreadyStartedError

from bot.audit.events import AuditEvent, EventKind, storable_id
from bot.audit.recorder import append_counted
from bot.engine.runs import (
    RunError,
    cancel_run,
    check_read,
    hidden_from,
    unreadable,
    check_start,
    get_status,
    new_run_id,
    start_policy_input,
    start_run,
)
from bot.engine.state import TriggerContext
from bot.identity import principals
from bot.identity.principals import Actor
from bot.playbook.loader import LoadedPlaybook, UnknownPlaybook
from bot.playbook.model import ForeachGroup, ParallelGroup, Step
from bot.playbook.params import ParamError, coerce_params, parse_assignments
from bot.playbook.templating import TemplateError, display, inert, render, render_args
from bot.policy.inputs import policy_input, rfc3339
from bot.slack.app import RECEIVED_AT, SlackDeps, listener, queue_error, queue_refusal, reply_ephemeral, slack_actor
from bot.slack.listeners import ack_within
from bot.slack.blocks import channel_mention, code_block, escape, status_blocks, status_text, truncate
from bot.slack import forms
from bot.slack.groups import GroupResolver

if TYPE_CHECKING:
    from bot.slack.modals import RunForms

REQUESTER_MEMO = "requested_by"  # on Slack-started runs: who asked, readable from a listing (the App Home)
ACK_BUDGET = 2.0  # seconds of Slack's 3 s spent starting the run before the ack
REASON_MAX = 2000  # characters of a refusal's reason kept in its slack_command record
# The `slack_command` outcomes that are refusals (recorded within the user's budget)
REFUSED_OUTCOMES = frozenset({"refused", "status_refused", "cancel_refused"})
RECORD_RETRIES = (1.0, 3.0, None)  # pauses between attempts at a slack_command append; None: give up
log = structlog.get_logger(__name__)

COMMAND = "/playbook"
MESSAGE_LIMIT = 3000
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_SMART_QUOTES = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'"})
_JSON_ASSIGNMENT = re.compile(r"(?:(?<=\s)|^)[A-Za-z_][A-Za-z0-9_]*=(?=[\[{])")  # `hosts=[` at a word's start
_JSON = json.JSONDecoder()

HELP = f"""*{COMMAND}* runs incident playbooks.
• `{COMMAND} list`: the playbooks and their params
• `{COMMAND}` alone: pick a playbook and fill in its form
• `{COMMAND} run NAME key=value ...`: start a run (its status is posted in this channel); params left out open a form
• `{COMMAND} dry-run NAME key=value ...`: show the steps, their arguments and the policy decisions, run nothing
• `{COMMAND} status RUN_ID`: where a run is
• `{COMMAND} cancel RUN_ID`: stop a run and roll back what it did
• `{COMMAND} help`: this text"""

Respond = Callable[..., Awaitable[Any]]


def register(app: AsyncApp, deps: SlackDeps, groups: GroupResolver) -> PlaybookCommand:
    command = PlaybookCommand(deps, groups)
    app.command(COMMAND)(listener(deps, command.handle))
    return command


def slack_run_id(playbook: str, trigger_id: str) -> str:
    """The run id of a slash command: the same trigger_id (a retry, a replay) names the same run."""
    return f"slack-{playbook}-{_UNSAFE_ID.sub('-', trigger_id)[:200]}"


def split_args(text: str) -> list[str]:
    """Shell-like words (quotes group `reason="two words"`); Slack's curly quotes count as quotes.
    A `key=` followed by a JSON array or object (`hosts=["a","b"]`) is one word kept as written:
    shell quoting would strip the JSON's own double quotes.

    Linear in the text: each character's quoting is read once, carried from one `key=[`
    candidate to the next. (Splitting the text before every candidate again took seconds of the
    event loop for a 10 KB command of `a=[` words behind an open quote: every request waited.)"""
    text = text.translate(_SMART_QUOTES)
    words: list[str] = []
    pos = 0  # the text before pos is in `words`
    quoting = _Quoting()
    try:
        for match in _JSON_ASSIGNMENT.finditer(text):
            start = match.start()
            if start < pos:
                continue
            if not quoting.outside_after(text, pos, start):
                continue  # inside a quoted word: part of it, not a word of its own
            try:
                _, end = _JSON.raw_decode(text, match.end())
            except (ValueError, RecursionError):
                continue  # not JSON: shell rules read it (and params says what is wrong)
            if end < len(text) and not text[end].isspace():
                continue
            words += [*shlex.split(text[pos:start]), text[start:end]]
            pos = end
        return words + shlex.split(text[pos:])
    except ValueError:  # an unbalanced quote: plain words are still useful
        return text.split()


def _rule(exc: BaseException) -> str:
    """Which check refused a command, for its user's refusal budget: junk (an unknown playbook,
    unreadable params) is counted apart from what a rule refused."""
    if isinstance(exc, RunError) and exc.rule:
        return exc.rule
    return "playbook" if isinstance(exc, UnknownPlaybook) else "params" if isinstance(exc, ParamError) else "command"


def _said(exc: BaseException) -> str:
    """A refusal's reason as the record keeps it (bounded: a param error can quote what was typed).
    UnknownPlaybook says its own message (a bare KeyError's args[0] would be just the name)."""
    return str(exc)[:REASON_MAX]


class _Quoting:
    """shlex's (POSIX) quoting state along the text, read forward only: whether a point is
    outside any quote or escape, as `shlex.split` of the text up to it would find."""

    def __init__(self) -> None:
        self.since = self.upto = 0
        self.quote: str | None = None
        self.escaped = False

    def outside_after(self, text: str, since: int, upto: int) -> bool:
        """Whether `text[since:upto]` leaves no quote or escape open (`since` only moves forward)."""
        if since != self.since:  # a JSON word was taken: a fresh split starts at `since`
            self.since = self.upto = since
            self.quote, self.escaped = None, False
        for ch in text[self.upto:upto]:
            if self.escaped:
                self.escaped = False
            elif self.quote == "'":  # nothing escapes inside single quotes
                if ch == "'":
                    self.quote = None
            elif ch == "\\":
                self.escaped = True
            elif self.quote == '"':
                if ch == '"':
                    self.quote = None
            elif ch in "'\"":
                self.quote = ch
        self.upto = upto
        return self.quote is None and not self.escaped


class PlaybookCommand:
    def __init__(self, deps: SlackDeps, groups: GroupResolver) -> None:
        self.deps = deps
        self.groups = groups
        self.forms: RunForms | None = None  # set by bot.slack.modals.register: the modals, when registered
        self.subcommands: dict[str, Callable[[dict[str, Any], list[str], Respond], Awaitable[None]]] = {
            "help": self.help,
            "list": self.list,
            "run": self.run,
            "dry-run": self.dry_run,
            "status": self.status,
            "cancel": self.cancel,
        }

    async def handle(
        self, ack: Callable[..., Awaitable[None]], body: dict[str, Any], respond: Respond, context: dict[str, Any]
    ) -> None:
        if (user_id := body.get("user_id")) and slack_actor(user_id) == "slack":  # no Slack user id: no principal
            await ack()
            said = "this command's Slack user id is malformed; nothing was done"
            self._record(body, None, "refused", reason=said)
            self._say(body, respond, f":x: {said}")
            return
        words = split_args(body.get("text") or "")
        if not words and self.forms is not None:  # `/playbook` alone: the playbook list, as a select
            await ack()
            await self.forms.open_picker(body, respond, context.get(RECEIVED_AT))
            return
        sub, args = (words[0].lower(), words[1:]) if words else ("help", [])
        if sub == "run" and self.forms is not None and (wanted := self._form_wanted(args)) is not None:
            await ack()  # nothing to start yet: the form opens right after the ack, within the trigger's 3 s
            await self.forms.open_form(body, respond, context.get(RECEIVED_AT), *wanted)
            return
        if sub == "run":
            await self._run_in_ack_window(ack, body, args, respond, context.get(RECEIVED_AT))
            return
        await ack()
        handler = self.subcommands.get(sub)
        if handler is None:
            self._say(body, respond, f":grey_question: Unknown subcommand `{escape(sub)}`.\n\n{HELP}")
            return
        with structlog.contextvars.bound_contextvars(
            slack_trigger=body.get("trigger_id"), slack_user=body.get("user_id"), subcommand=sub
        ):
            try:
                await handler(body, args, respond)
            except Exception as exc:  # noqa: BLE001  every failure is answered (queue_error says why)
                queue_error(self.deps, exc, body, respond)

    def _say(self, body: dict[str, Any], respond: Respond | None, text: str,
             blocks: list[dict[str, Any]] | None = None) -> None:
        """The ephemeral answer, queued: response_url, or chat.postEphemeral without one (or when
        it fails)."""
        text = truncate(text, MESSAGE_LIMIT * 4)

        async def send() -> None:
            await reply_ephemeral(self.deps.answer_web, body, respond, text, blocks)
        self.deps.background.answers.submit("command answer", send)

    async def help(self, body: dict[str, Any], args: list[str], respond: Respond) -> None:
        self._say(body, respond, HELP)

    async def list(self, body: dict[str, Any], args: list[str], respond: Respond) -> None:
        catalog = self.deps.catalog()
        if not len(catalog):
            self._say(body, respond, "No playbooks are loaded.")
            return
        lines = []
        for name, loaded in catalog.items():
            pb = loaded.playbook
            params = ", ".join(
                f"{p}" + ("" if spec.is_required else f"={_as_typed(spec.default)}" if spec.default is not None else "?")
                for p, spec in pb.params.items()
            )
            line = f"• *{escape(name)}*" + (f": {escape(pb.summary)}" if pb.summary else "")
            lines.append(line + (f" (params: `{escape(params)}`)" if params else ""))
        self._say(body, respond, "*Playbooks*\n" + "\n".join(lines))

    # ---- run -------------------------------------------------------------------------------

    async def _run_in_ack_window(
        self,
        ack: Callable[..., Awaitable[None]],
        body: dict[str, Any],
        args: list[str],
        respond: Respond,
        received_at: float | None = None,
    ) -> None:
        """Start the run before acking, so nothing is lost: if we die first, Slack retries the
        command (same trigger_id, same run id). A start slower than the budget is acked anyway
        and finishes in the background, never cancelled halfway. The budget counts from when the
        request arrived: under a burst, time queued before this handler is Slack's time too.
        The answer is queued once the start is done (the listener runs on past its ack: at_ack)."""
        with structlog.contextvars.bound_contextvars(
            slack_trigger=body.get("trigger_id"), slack_user=body.get("user_id"), subcommand="run"
        ):
            await self.start_in_ack_window(ack, body, self._start(body, args), respond, received_at, "run start")

    async def start_in_ack_window(self, ack: Callable[..., Awaitable[None]], body: dict[str, Any],
                                  start: Awaitable[str], respond: Respond | None, received_at: float | None,
                                  what: str) -> None:
        """`start` (a typed command's or a form's), given what is left of ACK_BUDGET before the
        ack (ack_within); its answer, or what refused it, is queued for `body`'s user after."""
        budget = ACK_BUDGET - (time.monotonic() - received_at) if received_at is not None else ACK_BUDGET
        try:
            answer = await ack_within(ack, start, budget, what)
        except Exception as exc:  # noqa: BLE001  (acked: the user is told through the answer)
            queue_error(self.deps, exc, body, respond)
            return
        self._say(body, respond, answer)

    async def run(self, body: dict[str, Any], args: list[str], respond: Respond) -> None:
        self._say(body, respond, await self._start(body, args))

    async def _start(self, body: dict[str, Any], args: list[str]) -> str:
        """Start the run (or find it); the answer for the user. Refusals raise, naming why."""
        if not body.get("user_id"):  # Slack always names one; a run without a requester cannot record its start
            raise RunError("this command names no Slack user; nothing was started")
        try:
            loaded, params = self._prepare(args)
        except (RunError, ParamError, UnknownPlaybook) as exc:  # every refusal is on the record
            self._record(body, None, "refused", reason=_said(exc), rule=_rule(exc))
            raise
        return await self.start_prepared(body, loaded, params)

    async def start_prepared(self, body: dict[str, Any], loaded: LoadedPlaybook, params: dict[str, Any]) -> str:
        """Start a run of checked params for the command-shaped `body` (user_id, user_name,
        channel_id, trigger_id, response_url): the typed command and a submitted form both come
        here, so both ask `start`, record and answer the same way."""
        if not body.get("user_id"):
            raise RunError("this command names no Slack user; nothing was started")
        trigger = _trigger(body)
        actor = await self._actor(body)
        trigger_id = body.get("trigger_id")
        run_id = slack_run_id(loaded.playbook.name, trigger_id) if trigger_id else new_run_id(loaded.playbook.name)
        try:
            asked = await check_start(self.deps.policy, loaded, params, trigger, actor, run_id)
            handle = await start_run(
                self.deps.client, self.deps.task_queue, loaded, params, trigger, actor=actor, keyring=self.deps.keyring,
                run_id=run_id, memo={REQUESTER_MEMO: trigger.requested_by}, asked=asked,
            )
        except WorkflowAlreadyStartedError:  # this very command ran and has ended: a late replay
            status = await get_status(self.deps.client, run_id)
            return f"This command already ran as `{escape(run_id)}`; it ended {status.state.replace('_', ' ')}."
        except RunError as exc:  # the `start` rule, or the concurrency key: busy (on_busy: refuse) or unrenderable
            self._record(body, None, "refused", reason=_said(exc), rule=_rule(exc))
            raise
        where = channel_mention(body.get("channel_id"), "the playbook's channel")
        if handle.id != run_id:  # on_busy: attach: the run holding the key
            log.info("slack command attached to the key's holder", run_id=handle.id, playbook=loaded.playbook.name)
            self._record(body, handle.id, "attached")
            return (
                f":link: *{escape(loaded.playbook.name)}* is already running as `{escape(handle.id)}`, which holds "
                f"its concurrency key: your command attached to it (nothing new started); its status is in {where}."
            )
        log.info("slack run started", run_id=handle.id, playbook=loaded.playbook.name)
        self._record(body, handle.id, "started")
        return (
            f":rocket: Started *{escape(loaded.playbook.name)}* as run `{escape(handle.id)}`; "
            f"its status is posted in {where}."
        )

    def _form_wanted(self, args: list[str]) -> tuple[LoadedPlaybook, dict[str, str], ParamError] | None:
        """`run NAME k=v ...` that lacks a required param, and is otherwise readable: the playbook,
        what was typed (to pre-fill the form) and the error a failed form falls back to. None
        when the command should go on as typed (complete, or wrong in a way a form cannot fix)."""
        catalog = self.deps.catalog()  # one version: a reload in between must not make the name unknown
        if not args or args[0] not in catalog:
            return None
        loaded = catalog.get(args[0])
        try:
            typed = parse_assignments(w for w in args[1:])
        except ParamError:
            return None
        declared = loaded.playbook.params
        if any("=" not in w or w.startswith("=") for w in args[1:]) or any(k not in declared for k in typed):
            return None
        missing = [n for n, spec in declared.items() if spec.is_required and n not in typed]  # as coerce_params reads it
        if not missing or not forms.fits_a_form(loaded):
            return None
        described = [(n, f"missing required param {n!r}" + (f" ({declared[n].description})" if declared[n].description
                                                               else "")) for n in missing]
        return loaded, typed, ParamError(described)

    def _prepare(self, args: list[str]) -> tuple[LoadedPlaybook, dict[str, Any]]:
        """The playbook and typed params, or UnknownPlaybook / ParamError naming what is wrong."""
        if not args:
            raise RunError(f"which playbook? `{COMMAND} list` shows them; usage: `{COMMAND} run NAME key=value ...`")
        loaded = self.deps.catalog().get(args[0])
        words = [w for w in args[1:] if "=" not in w or w.startswith("=")]
        if words:
            raise ParamError([(None, f"params are key=value; cannot read {', '.join(repr(w) for w in words)}")])
        return loaded, coerce_params(loaded.playbook, parse_assignments(args[1:]))

    async def _actor(self, body: dict[str, Any]) -> Actor:
        """The signed request's user: verified by Slack's signature, with their user groups (a map
        past its TTL will do: it is refreshed behind the answer, and max_stale still holds)."""
        user_id = body.get("user_id") or ""
        groups = await self.groups.handles(user_id, stale_ok=True)
        return Actor(principals.slack(user_id), body.get("user_name") or "", tuple(groups), "slack")

    def _record(self, body: dict[str, Any], run_id: str | None, outcome: str, reason: str | None = None,
                rule: str | None = None) -> None:
        """The `slack_command` audit event, queued on the records lane (after the ack); keyed by
        trigger_id, so a replay, or a retry of an append that did land, records nothing new. A
        refusal says why (`reason`), and is recorded within the user's budget for its `rule`
        (default: the outcome), past which that minute's refusals are a count (RefusalLogs), on
        the refusals' lane."""
        audit = self.deps.audit
        if audit is None:
            return
        event = AuditEvent(
            # as a store can hold them: a signed command's trigger_id, or a run id typed after `cancel`
            event_id=storable_id(f"slack:{body.get('trigger_id') or body.get('user_id')}:{outcome}"),
            ts=datetime.now(UTC),
            run_id=storable_id(run_id) if run_id is not None else None,
            step_id=None,
            kind=EventKind.slack_command,
            actor=slack_actor(body.get("user_id")),
            details={
                "command": body.get("command") or COMMAND,
                "text": body.get("text") or "",
                "channel": body.get("channel_id"),
                "trigger_id": body.get("trigger_id"),
                "user_name": body.get("user_name"),
                "outcome": outcome,
                **({"reason": reason} if reason is not None else {}),
            },
        )

        said = {"event_id": event.event_id, "actor": event.actor, "outcome": outcome, "reason": reason,
                "text": event.details["text"][:200]}  # (what a record not written said, in the log)

        async def write(event: AuditEvent) -> None:  # retried: a store busy for a moment loses nothing
            for attempt, pause in enumerate(RECORD_RETRIES, 1):
                try:
                    await append_counted(audit, [event])
                    return
                except Exception as exc:  # noqa: BLE001  the run's own audit trail is the record
                    error = f"{type(exc).__name__}: {exc}"
                    if pause is None:
                        log.error("slack_command not recorded; given up", error=error, attempts=attempt, **said)
                        return
                    log.warning("slack_command not recorded yet; retrying", event_id=event.event_id, error=error,
                                attempt=attempt, retry_in_s=pause)
                    await asyncio.sleep(pause)

        async def append() -> None:
            try:
                if outcome in REFUSED_OUTCOMES:  # within the user's budget for its rule, else counted
                    await self.deps.refusals.record(event.actor, rule or outcome, event, write=write)
                else:
                    await write(event)
            except asyncio.CancelledError:  # the lane's time limit, or the door stopping
                log.error("slack_command not recorded; cut off", **said)
                raise

        # Refusals take a lane of their own (queue_refusal): one user's flood of them, retried while a
        # store is down, cannot crowd anyone's other records out. (The budget is taken when the job
        # runs, so a job not queued loses no count: only itself, logged with what it said.)
        if outcome in REFUSED_OUTCOMES:
            queue_refusal(self.deps, event.actor, append, said)
        else:  # (a job the lane refuses is logged there, with `said`)
            self.deps.background.records.submit("slack_command audit", append, said)

    # ---- dry-run ---------------------------------------------------------------------------

    async def dry_run(self, body: dict[str, Any], args: list[str], respond: Respond) -> None:
        loaded, params = self._prepare(args)
        trigger = _trigger(body)
        actor = await self._actor(body)
        pb = loaded.playbook
        now = datetime.now(UTC)
        run = {"id": "dry-run", "playbook": pb.name, "requested_by": trigger.requested_by, "trigger": "slack",
               "started_at": rfc3339(now)}
        context = inert({"params": params, "vars": pb.vars, "alert": None, "run": run, "steps": {}})
        start = await self.deps.policy.start(start_policy_input(loaded, params, trigger, actor))
        lines = [f":mag: *Dry run of {escape(pb.name)}*: nothing is executed."]
        lines.append(
            ":white_check_mark: You may start it." if start.allow
            else f":no_entry: You may not start it: {escape('; '.join(start.reasons) or 'no reason given')}"
        )
        for item in pb.steps:
            if isinstance(item, ParallelGroup):
                lines.append(f"*{escape(item.id)}* (parallel){_when(item.when, context)}")
                for step in item.parallel:
                    lines.append(await self._dry_step(loaded, step, context, params, trigger, now, indent="    "))
            elif isinstance(item, ForeachGroup):
                values, said = _foreach_items(item, context)
                lines.append(f"*{escape(item.id)}* (foreach, {said}, concurrency {item.concurrency}, "
                             f"max_failures {item.max_failures}){_when(item.when, context)}")
                first = inert({**context, item.as_: values[0], "index": 0}) if values else context
                for step in item.steps:  # as the first item would run them
                    lines.append(await self._dry_step(loaded, step, first, params, trigger, now, indent="    "))
            else:
                lines.append(await self._dry_step(loaded, item, context, params, trigger, now))
        self._say(body, respond, "\n".join(lines))

    async def _dry_step(self, loaded: LoadedPlaybook, step: Step, context: dict[str, Any], params: dict[str, Any],
                        trigger: TriggerContext, now: datetime, indent: str = "") -> str:
        head = f"{indent}• *{escape(step.id)}* `{escape(step.action)}` impact {step.impact}{_when(step.when, context)}"
        try:
            args = display(render_args(step.action, step.with_, context, secrets=loaded.playbook.secrets))
        except TemplateError as exc:
            return f"{head}\n{indent}  _arguments are rendered at run time_ ({escape(truncate(str(exc), 200))})"
        line = f"{head}\n{code_block(_json(args), 600)}"
        if step.impact != "high":
            return line
        run = {"id": "dry-run", "trigger": "slack", "requested_by": trigger.requested_by, "started_at": rfc3339(now)}
        decision = await self.deps.policy.decide(
            policy_input(loaded.playbook, loaded.hash, run, params, None, now, step=step, args=args)
        )
        reasons = escape("; ".join(decision.reasons) or "no reason given")
        if not decision.allow:
            verdict = f":no_entry: policy would deny it: {reasons}"
        elif decision.require_approval:
            groups = ", ".join(f"@{escape(g)}" for g in decision.approver_groups) or "any allowed approver"
            verdict = f":raised_hand: needs {max(decision.min_approvals, 1)} approval(s) from {groups}: {reasons}"
        else:
            verdict = f":white_check_mark: policy allows it: {reasons}"
        return f"{line}\n{indent}  {verdict}"

    # ---- status / cancel -------------------------------------------------------------------

    async def status(self, body: dict[str, Any], args: list[str], respond: Respond) -> None:
        if len(args) != 1:
            raise RunError(f"usage: `{COMMAND} status RUN_ID`")
        status = await get_status(self.deps.client, args[0])
        try:
            await check_read(self.deps.policy, self.deps.catalog(), status, await self._actor(body), "slack")
        except RunError:
            self._record({**body, "trigger_id": f"status:{body.get('trigger_id')}"}, status.run_id, "status_refused")
            raise
        self._say(body, respond, status_text(status), blocks=status_blocks(status))

    async def cancel(self, body: dict[str, Any], args: list[str], respond: Respond) -> None:
        if len(args) != 1:
            raise RunError(f"usage: `{COMMAND} cancel RUN_ID`")
        actor = await self._actor(body)
        try:
            status, _ = await cancel_run(self.deps.client, args[0], actor, self.deps.keyring)
        except RunError as exc:
            self._record({**body, "trigger_id": f"cancel:{body.get('trigger_id')}"}, args[0], "cancel_refused",
                         reason=_said(exc))
            # (whether it ended is told only to whoever may read the run, as `status` tells it)
            hidden = await hidden_from(self.deps.client, self.deps.policy, self.deps.catalog(), args[0], actor,
                                       "slack", exc)
            if hidden is not None:  # refused as `status` refuses a non-reader
                raise unreadable(actor, *hidden) from None
            raise
        self._record({**body, "trigger_id": f"cancel:{body.get('trigger_id')}"}, status.run_id, "cancel_requested")
        log.info("slack run cancel requested", run_id=status.run_id, by=actor.principal)
        self._say(
            body,
            respond,
            f":octagonal_sign: Cancelling run `{escape(status.run_id)}` ({escape(status.playbook)}, was "
            f"{status.state.replace('_', ' ')}); what it did is rolled back, the run's thread shows it.",
        )


def _trigger(body: dict[str, Any]) -> TriggerContext:
    user_id = body.get("user_id") or ""
    return TriggerContext(
        kind="slack",
        requested_by=principals.slack(user_id),
        slack={
            "channel": body.get("channel_id"),
            "user": user_id,
            "trigger_id": body.get("trigger_id"),
            "response_url": body.get("response_url"),
        },
    )


def _when(when: str | None, context: dict[str, Any]) -> str:
    if not when:
        return ""
    try:
        value = render(when, context)
    except TemplateError:
        return f" (when `{escape(when)}`: decided at run time)"
    return f" (when → `{escape(str(value))}`)"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _as_typed(value: Any) -> str:
    """A default as the user would type it: JSON for an array or object (copyable into the command)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def _foreach_items(group: ForeachGroup, context: dict[str, Any]) -> tuple[list[Any], str]:
    """A foreach group's items as a dry run can know them, and how to say so."""
    try:
        values = group.foreach if isinstance(group.foreach, list) else render(group.foreach, context)
    except TemplateError as exc:
        return [], f"items known at run time ({escape(truncate(str(exc), 200))})"
    if not isinstance(values, list):
        return [], "items: not a list, the group would fail"
    shown = ", ".join(f"`{escape(truncate(str(v), 40))}`" for v in values[:10])
    return values, f"{len(values)} items: {shown}" + (", …" if len(values) > 10 else "")
