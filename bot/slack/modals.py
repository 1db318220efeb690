"""The Slack forms: `/playbook run NAME` lacking params opens a modal, `/playbook` alone a
playbook picker that turns into the form; a submitted form starts the run as the typed command
would (bot/slack/commands.py `start_prepared`: the `start` question, `slack:<user>`, the audit
record, the answer in the channel).

Timing: a trigger_id is good for 3 s, so the modal opens right after the command's ack, on the
request's own task (never queued behind the background lanes), cut at what is left of the 3 s.
A view_submission must be answered within 3 s too: field errors go back in the ack (Slack's
`response_action: errors`); a valid one starts the run in the same budgeted window as a typed
`run`, and the answer follows in the channel.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import structlog
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.respond.async_respond import AsyncRespond

from bot.audit.recorder import refusal
from bot.playbook.loader import LoadedPlaybook, UnknownPlaybook
from bot.playbook.params import ParamError
from bot.slack import forms
from bot.slack.app import RECEIVED_AT, SlackDeps, listener, queue_error, queue_refusal, slack_actor, slack_user
from bot.slack.commands import HELP, PlaybookCommand
from bot.slack.forms import FieldErrors, FormMeta, FormRefused, Sealer

log = structlog.get_logger(__name__)

TRIGGER_TTL = 3.0  # seconds Slack lets a trigger_id open a view
OPEN_TIMEOUT_MIN = 0.5  # a views.open started late still gets this long (Slack answers expired_trigger_id)

Ack = Callable[..., Awaitable[None]]


def register(app: AsyncApp, deps: SlackDeps, command: PlaybookCommand, signing_secret: str) -> RunForms:
    handler = RunForms(deps, command, Sealer(signing_secret))
    command.forms = handler
    app.view(forms.FORM_CALLBACK)(listener(deps, handler.on_submit))
    app.action(forms.PICK_ACTION)(listener(deps, handler.on_pick))
    return handler


class RunForms:
    def __init__(self, deps: SlackDeps, command: PlaybookCommand, sealer: Sealer) -> None:
        self.deps = deps
        self.command = command
        self.sealer = sealer

    # ---- opening ---------------------------------------------------------------------------

    def _meta(self, body: dict[str, Any], loaded: LoadedPlaybook | None) -> str:
        return self.sealer.seal(FormMeta(
            playbook=loaded.playbook.name if loaded else "",
            user=str(body.get("user_id") or ""),
            channel=str(body.get("channel_id") or ""),
            trigger_id=str(body.get("trigger_id") or ""),
            response_url=str(body.get("response_url") or ""),
            playbook_hash=loaded.hash if loaded else "",
            issued_at=int(time.time()),
        ))

    async def _open(self, body: dict[str, Any], view: dict[str, Any], received_at: float | None) -> str | None:
        """views.open within what is left of the trigger's 3 s; None when open, else why not."""
        trigger = body.get("trigger_id")
        if not trigger:
            return "the command carries no trigger_id"
        elapsed = time.monotonic() - received_at if received_at is not None else 0.0
        try:
            await asyncio.wait_for(self.deps.web.views_open(trigger_id=trigger, view=view),
                                   max(TRIGGER_TTL - elapsed, OPEN_TIMEOUT_MIN))
        except asyncio.TimeoutError:
            return "Slack did not answer in time"
        except Exception as exc:  # noqa: BLE001  SlackApiError (expired_trigger_id, ...) or a network error
            error = getattr(getattr(exc, "response", None), "get", lambda *_: None)("error") or type(exc).__name__
            log.warning("slack form did not open", error=str(error))
            return str(error)
        return None

    async def open_form(self, body: dict[str, Any], respond: Any, received_at: float | None,
                        loaded: LoadedPlaybook, typed: dict[str, str], missing: ParamError) -> None:
        """The playbook's form, pre-filled with what was typed; if it cannot open, the missing
        params are told as the typed command tells them."""
        with structlog.contextvars.bound_contextvars(slack_trigger=body.get("trigger_id"), slack_user=body.get("user_id"),
                                                     subcommand="run", playbook=loaded.playbook.name):
            why = await self._open(body, forms.form_view(loaded, self._meta(body, loaded), typed), received_at)
            if why is None:
                log.info("slack form opened")
                return
            fallback = ParamError([*missing.problems, (None, f"the form could not open ({why}): type them as "
                                                             f"`/playbook run {loaded.playbook.name} key=value ...`")])
            queue_error(self.deps, fallback, body, respond)

    async def open_picker(self, body: dict[str, Any], respond: Any, received_at: float | None) -> None:
        """`/playbook` alone: the playbook list as a select; the help text if it cannot open."""
        view = forms.picker_view(self.deps.catalog(), self._meta(body, None), HELP)
        why = await self._open(body, view, received_at)
        if why is not None:
            self.command._say(body, respond, HELP)

    # ---- the picker ------------------------------------------------------------------------

    async def on_pick(self, ack: Ack, body: dict[str, Any]) -> None:
        """A playbook chosen in the picker: the same modal becomes its form (views.update, with
        the hash Slack sent, so a stale pick does not overwrite a newer view)."""
        await ack()
        user = slack_user(body)[0]
        view = body.get("view") or {}
        action = (body.get("actions") or [{}])[0]
        try:
            meta = self.sealer.open(view.get("private_metadata"), user)
            chosen = (action.get("selected_option") or {}).get("value")
            if not isinstance(chosen, str) or chosen not in self.deps.catalog():
                raise FormRefused("that is not a playbook this bot has loaded")
            loaded = self.deps.catalog().get(chosen)
        except FormRefused as exc:
            log.info("slack pick refused", reason=str(exc), slack_user=user)
            actor = slack_actor(user)
            await self.deps.refusals.record(actor, "form", refusal(actor, "start", str(exc),
                                                                   key=f"pick:{body.get('trigger_id') or user}"))
            return
        if not forms.fits_a_form(loaded):
            form = forms.notice_view("Too many params", f"{loaded.playbook.name} has more params than a Slack form "
                                     f"holds: `/playbook run {loaded.playbook.name} key=value ...` starts it.")
        else:
            origin = {"user_id": meta.user, "channel_id": meta.channel, "trigger_id": meta.trigger_id,
                      "response_url": meta.response_url}
            form = forms.form_view(loaded, self._meta(origin, loaded))
        try:
            await self.deps.web.views_update(view_id=view.get("id"), hash=view.get("hash"), view=form)
        except Exception as exc:  # noqa: BLE001  a newer view (hash_conflict) or Slack down: the picker stays
            log.warning("slack picker not turned into a form", error=f"{type(exc).__name__}: {exc}")

    # ---- submission ------------------------------------------------------------------------

    async def on_submit(self, ack: Ack, body: dict[str, Any], context: dict[str, Any]) -> None:
        """Errors in the form (ack with `response_action: errors`), a refusal shown in place of the
        form, or the run started as the typed command starts it."""
        user, name = slack_user(body)
        view = body.get("view") or {}
        with structlog.contextvars.bound_contextvars(slack_user=user, subcommand="form"):
            try:
                meta, loaded, params = self._checked(view, user)
            except FieldErrors as exc:
                log.info("slack form has errors", fields=sorted(exc.errors))
                await ack(response_action="errors", errors=exc.errors)
                return
            except FormRefused as exc:
                log.info("slack form refused", reason=str(exc))
                await ack(response_action="update", view=forms.notice_view("Not started", f"Nothing was started: {exc}"))
                actor = slack_actor(user)
                event = refusal(actor, "start", str(exc), key=f"form:{body.get('trigger_id') or user}")
                queue_refusal(self.deps, actor, lambda: self.deps.refusals.record(actor, "form", event),
                              {"actor": actor, "operation": "form", "reason": str(exc)})
                return
            origin = {
                "user_id": user,
                "user_name": name,
                "channel_id": meta.channel or None,
                "trigger_id": meta.trigger_id or body.get("trigger_id"),
                "response_url": meta.response_url or None,
                "command": "/playbook",
                "text": f"run {loaded.playbook.name} (form)",
            }
            respond = AsyncRespond(response_url=meta.response_url) if meta.response_url else None
            await self._start_in_ack_window(ack, origin, loaded, params, respond, context.get(RECEIVED_AT))

    def _checked(self, view: dict[str, Any], user: str) -> tuple[FormMeta, LoadedPlaybook, dict[str, Any]]:
        """Everything the submission claims, re-checked: our seal, this user, a loaded playbook of
        the version the form was drawn from, and each value typed as a command's would be."""
        if not user:
            raise FormRefused("this submission names no Slack user")
        meta = self.sealer.open(view.get("private_metadata"), user)
        if not meta.playbook:
            raise FormRefused("no playbook was chosen")
        try:
            loaded = self.deps.catalog().get(meta.playbook)
        except UnknownPlaybook:
            raise FormRefused(f"playbook {meta.playbook!r} is no longer loaded") from None
        if loaded.hash != meta.playbook_hash:
            raise FormRefused(f"{meta.playbook} changed since this form was opened; run `/playbook run "
                              f"{meta.playbook}` again for its current form")
        state = view.get("state") if isinstance(view.get("state"), dict) else {}
        return meta, loaded, forms.read_submission(loaded, state.get("values", {}))

    async def _start_in_ack_window(self, ack: Ack, origin: dict[str, Any], loaded: LoadedPlaybook,
                                   params: dict[str, Any], respond: Any, received_at: float | None) -> None:
        """As a typed `run`: the start gets what is left of ACK_BUDGET, then the modal is closed
        (an empty ack) and the answer follows in the channel once the start is done."""
        await self.command.start_in_ack_window(ack, origin, self.command.start_prepared(origin, loaded, params), respond,
                                               received_at, "form start")
