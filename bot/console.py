"""How runs look in a terminal: a step checklist, live while a run goes on."""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bot.engine.state import RunStatus, StepStatus
from bot.terminal import visible

if TYPE_CHECKING:
    from bot.engine.schedules import ScheduleView

PREVIEW_CHARS = 60  # of a large output's preview, in the status table (status --json has all of it)

STYLE = {
    "pending": ("·", "dim"),
    "queued": ("⏸", "yellow"),
    "running": ("▶", "cyan"),
    "waiting_approval": ("⏸", "yellow"),
    "succeeded": ("✔", "green"),
    "completed": ("✔", "green"),
    "skipped": ("↷", "dim"),
    "failed": ("✘", "red"),
    "denied": ("⛔", "red"),
    "rejected": ("✘", "red"),
    "cancelled": ("■", "magenta"),
    "compensating": ("↺", "yellow"),
    "compensated": ("↺", "blue"),
    "compensation_failed": ("‼", "bold red"),
}


def _duration(step: StepStatus) -> str:
    if not step.started_at:
        return ""
    end = step.finished_at or datetime.now(timezone.utc)
    seconds = (end - step.started_at).total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _queued(status: RunStatus) -> str:
    waiting = status.waiting_for or {}
    held = waiting.get("holder")
    return f"queued for concurrency key {waiting.get('key')!r}" + (f", held by run {held}" if held else "")


def _audit_note(status: RunStatus) -> str:
    return (f"audit store down: {status.audit_pending} event(s) of this run wait for it; "
            "the run ends once they are recorded")


def _caption(status: RunStatus) -> str | None:
    parts = [status.error or (_queued(status) if status.waiting_for else None)]
    if status.audit_pending:
        parts.append(_audit_note(status))
    return "; ".join(p for p in parts if p) or None


def _plain(text: str) -> Text:
    """A cell of anyone's words (a target's error, a lock key, a voter's name): never Rich markup
    (`[link=...]` drew a link, `[green]` restyled a line), never a control character (ESC]52 set
    the clipboard of the terminal that showed `status`)."""
    return Text(visible(text))


def status_table(status: RunStatus) -> Table:
    icon, style = STYLE.get(status.state, ("?", ""))
    caption = _caption(status)
    table = Table(
        title=Text.assemble(f"{visible(status.run_id)}  ", (f"{icon} {status.state}", style)),
        title_justify="left",
        caption=_plain(caption) if caption else None,
        caption_justify="left",
    )
    for column in ("step", "action", "state", "attempts", "time", "note"):
        table.add_column(column)
    for step in status.all_steps():  # a foreach group's item steps under it, by address
        icon, style = STYLE.get(step.state, ("?", ""))
        name = f"  {step.id}" if step.group else step.id
        note = step.error or ""
        if step.progress is not None:
            note = step.progress.text() + (f"; {note}" if note else "")
        if step.state == "waiting_approval":
            note = f"approve: playbook-bot approve {status.run_id} {step.id}"
        elif step.approvals:
            note = ", ".join(f"{v.vote}d by {v.user}" for v in step.approvals)
        elif step.output_ref is not None and not note:
            ref = step.output_ref
            shown = " ".join(ref.preview[:PREVIEW_CHARS].split())
            note = f"output {ref.size} bytes ({shown}…): playbook-bot audit show-output {ref.event_id}"
        table.add_row(_plain(name), step.action, Text(f"{icon} {step.state}", style), str(step.attempts or ""),
                      _duration(step), _plain(note))
    for comp in status.compensations:
        icon, style = STYLE.get("compensated" if comp.state == "succeeded" else comp.state, ("?", ""))
        table.add_row(_plain(f"undo {comp.step}"), comp.action, Text(f"{icon} {comp.state}", style),
                      str(comp.attempts or ""), "", _plain(comp.error or ""))
    return table


def progress_lines(before: RunStatus | None, after: RunStatus) -> list[str]:
    """Plain one-line transitions for logs and pipes, where a live table would be noise (print them
    without markup: an error is a target's words)."""
    lines = []
    old = {s.id: s.state for s in before.all_steps()} if before else {}
    for step in after.all_steps():
        if old.get(step.id, "pending") != step.state:
            extra = f" ({visible(step.error)})" if step.error else ""
            lines.append(f"{step.id}: {step.state}{extra}")
    old_comp = {c.step: c.state for c in before.compensations} if before else {}
    for comp in after.compensations:
        if old_comp.get(comp.step, "pending") != comp.state:
            lines.append(f"undo {comp.step}: {comp.state}")
    if before is None or before.state != after.state:
        lines.append(f"run {after.run_id}: {after.state}")
    if after.audit_pending and not (before and before.audit_pending):
        lines.append(_audit_note(after))
    elif before and before.audit_pending and not after.audit_pending:
        lines.append("audit store back: the run's record is complete")
    return lines


def schedules_table(views: list[ScheduleView]) -> Table:
    """`playbook-bot schedules`: the next firings in each schedule's own zone (as its cron reads)."""
    table = Table(title="schedules", title_justify="left")
    for column in ("schedule", "playbook", "cron", "next runs", "last run"):
        table.add_column(column)
    for view in views:
        try:
            zone: tzinfo = ZoneInfo(view.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = timezone.utc
        upcoming = ", ".join(f"{t.astimezone(zone):%Y-%m-%d %H:%M %Z}" for t in view.next_runs[:3])
        cron = f"{view.cron} ({view.timezone})"
        table.add_row(escape(view.id), escape(view.playbook), escape(cron),
                      Text("paused", "yellow") if view.paused else upcoming, escape(view.recent_runs[-1] if view.recent_runs else ""))
    return table
