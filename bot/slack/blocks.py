"""Block Kit for runs: the live status message, approval requests and the final summary.

Pure functions of a `RunStatus` (no I/O, no clock), so the worker can render the same message
on every update and tests can compare shapes. Slack's limits are respected here, not by Slack
rejecting a post mid-incident: section text ≤ 3000 characters, ≤ 50 blocks, header ≤ 150.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from bot.engine.state import CompensationStatus, RunStatus, StepStatus
from bot.playbook.templating import slack_escaped

SECTION_LIMIT = 3000
HEADER_LIMIT = 150
BLOCK_LIMIT = 50
FALLBACK_LIMIT = 3000  # the notification text: keep it short, the blocks carry the detail
ERROR_LIMIT = 300  # characters of a step error quoted on the checklist

APPROVE_ACTION = "approval.approve"
REJECT_ACTION = "approval.reject"
CHOICE_ACTION = "confirm.choice"  # one button per choice: `confirm.choice.<i>` (action ids are unique per block)
CHOICE_ACTION_PATTERN = re.compile(r"^confirm\.choice\.[0-9]{1,2}\Z")
HUMAN_STEP_ACTIONS = ("core.approve", "core.confirm")

RUN_EMOJI = {
    "pending": ":hourglass_flowing_sand:",
    "queued": ":double_vertical_bar:",
    "running": ":arrows_counterclockwise:",
    "waiting_approval": ":raised_hand:",
    "completed": ":white_check_mark:",
    "compensating": ":rewind:",
    "compensated": ":leftwards_arrow_with_hook:",
    "failed": ":rotating_light:",
    "cancelled": ":no_entry_sign:",
}
STEP_EMOJI = {
    "pending": ":white_circle:",
    "running": ":arrows_counterclockwise:",
    "waiting_approval": ":raised_hand:",
    "succeeded": ":white_check_mark:",
    "skipped": ":fast_forward:",
    "failed": ":x:",
    "failed_ignored": ":heavy_minus_sign:",
    "denied": ":no_entry:",
    "rejected": ":no_entry_sign:",
    "cancelled": ":heavy_multiplication_x:",
    "compensating": ":rewind:",
    "compensated": ":leftwards_arrow_with_hook:",
    "compensation_failed": ":rotating_light:",
}
COMPENSATION_EMOJI = {
    "pending": ":white_circle:",
    "running": ":rewind:",
    "succeeded": ":leftwards_arrow_with_hook:",
    "failed": ":rotating_light:",
    "skipped": ":fast_forward:",
}
DONE_STEP_STATES = frozenset({"succeeded", "skipped"})

_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,}")
_SLACK_CHANNEL = re.compile(r"[CGD][A-Z0-9]{2,}")
_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")


# --- status message ---------------------------------------------------------------------------


def status_blocks(status: RunStatus) -> list[dict[str, Any]]:
    """The run's one live message: a header, who/what, a checklist of steps, the rollback."""
    header = f"{RUN_EMOJI.get(status.state, '')} {status.playbook}: {_state(status.state)}".strip()
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": truncate(header, HEADER_LIMIT), "emoji": True}},
        _context(
            f"Run `{escape(status.run_id)}`",
            f"requested by {requester(status)} via {status.trigger}",
            *([f"took {duration(status.started_at, status.finished_at)}"] if status.finished_at else []),
        ),
    ]
    if status.params:
        params = ", ".join(f"{escape(k)}=`{escape(_short(v))}`" for k, v in status.params.items())
        blocks.append(_section(f"*Params:* {params}"))
    if status.waiting_for:
        held = status.waiting_for.get("holder")
        blocks.append(_section(
            f"*Queued* for `{escape(str(status.waiting_for.get('key')))}`"
            + (f", held by run `{escape(str(held))}`" if held else "")
        ))
    steps = [line for step in status.steps for line in [step_line(step), *item_lines(step)]] or ["_no steps_"]
    blocks += _sections(steps, title="*Steps*")
    if status.compensations:
        blocks += _sections([compensation_line(c) for c in status.compensations], title="*Rollback*")
    if status.not_undone:
        undone = ", ".join(f"*{escape(s)}*" for s in status.not_undone)
        blocks.append(_section(f":rotating_light: *Could not undo:* {undone}. A human must check these."))
    if status.error:
        blocks.append(_section(f"*Error:* {escape(truncate(status.error, SECTION_LIMIT - 20))}"))
    return _cap(blocks)


def status_text(status: RunStatus) -> str:
    """The fallback text (notifications, screen readers) of the status message."""
    done = sum(1 for step in status.steps if step.state in DONE_STEP_STATES)
    text = (
        f"{escape(status.playbook)} run {escape(status.run_id)}: {_state(status.state)}"
        f" ({done}/{len(status.steps)} steps done)"
    )
    waiting = [escape(step.id) for step in status.all_steps() if step.state == "waiting_approval"]
    if waiting:
        text += f", waiting for approval of {', '.join(waiting)}"
    return truncate(text, FALLBACK_LIMIT)


def step_line(step: StepStatus) -> str:
    head = f"{STEP_EMOJI.get(step.state, '')} *{escape(step.id)}* `{escape(step.action)}` {_state(step.state)}"
    if step.fallback is not None:
        head += f" (fallback `{escape(step.fallback.action)}` {_state(step.fallback.state)})"
    if step.irreversible:
        head += " · irreversible"
    if step.settled_by:
        head += f" · settled by *{escape(step.settled_by)}*"
    if step.progress is not None:
        head += f" · {step.progress.text()}"  # a foreach group: 3/12 done, 1 failed
    line = _checklist_line(head, step)
    return f"{escape(step.group)} › {line}" if step.group else line


ITEM_LINES = 8  # item steps a foreach group shows below its line: what needs eyes, not all 500


def item_lines(step: StepStatus) -> list[str]:
    """A foreach group's item steps that are running, waiting or went wrong (a bounded few)."""
    notable = [s for item in step.items or () for s in item.steps if s.state in NOTABLE_ITEM_STATES]
    lines = [step_line(s) for s in notable[:ITEM_LINES]]
    if len(notable) > ITEM_LINES:
        lines.append(f"{escape(step.id)} › _and {len(notable) - ITEM_LINES} more_")
    return lines


NOTABLE_ITEM_STATES = frozenset({"running", "waiting_approval", "failed", "denied", "rejected", "cancelled",
                                 "compensation_failed"})


def compensation_line(comp: CompensationStatus) -> str:
    emoji = COMPENSATION_EMOJI.get(comp.state, "")
    return _checklist_line(f"{emoji} undo *{escape(comp.step)}* `{escape(comp.action)}` {comp.state}", comp)


def _checklist_line(head: str, item: StepStatus | CompensationStatus) -> str:
    """A step or an undo: head · attempts · duration, and the error quoted below."""
    parts = [head]
    if item.attempts > 1:
        parts.append(f"{item.attempts} attempts")
    if item.started_at and item.finished_at:
        parts.append(duration(item.started_at, item.finished_at))
    line = " · ".join(parts)
    if item.error:
        line += f"\n>{escape(truncate(_oneline(item.error), ERROR_LIMIT))}"
    return line


# --- approval request -------------------------------------------------------------------------


def approval_blocks(status: RunStatus, step_id: str, decision: dict[str, Any], needed: int) -> list[dict[str, Any]]:
    """The approval request: what will run, why it needs approval, the quorum, the deadline, buttons.

    Once the step is no longer waiting the buttons go and a line says how it was decided; the
    arguments stay, since they are what the approvers were shown.
    """
    step = status.step(step_id)
    needed = max(needed, 1)
    if step.action in HUMAN_STEP_ACTIONS:
        return _human_blocks(status, step, decision, needed)
    blocks: list[dict[str, Any]] = [
        _section(
            f":raised_hand: *Approval needed:* step *{escape(step.id)}* of *{escape(status.playbook)}*"
            f" (run `{escape(status.run_id)}`, requested by {requester(status)})"
        ),
        _section(_what_will_run(step)),
    ]
    if step.irreversible:
        blocks.append(_section(":warning: *Irreversible:* if the run fails later, rollback will not undo this step."))
    reasons = [str(r) for r in decision.get("reasons") or []]
    if reasons:
        why = "\n".join(f"• {escape(_oneline(r))}" for r in reasons)
        blocks.append(_section(truncate(f"*Why:*\n{why}", SECTION_LIMIT)))
    approvals = [v for v in step.approvals if v.vote == "approve"]
    progress = f"{len(approvals)}/{needed} approvals"
    if approvals:
        progress += ": " + ", ".join(mention(v.user) for v in approvals)
    context = [progress]
    groups = [str(g) for g in decision.get("approver_groups") or []]
    if groups:
        context.append("approvers: " + ", ".join(f"@{escape(g)}" for g in groups))
    if step.approval_deadline:
        context.append(f"deadline {slack_date(step.approval_deadline)}")
    if step.escalated_at:
        context.append(":warning: escalated")
    blocks.append(_context(*context))
    if step.state == "waiting_approval":
        blocks.append(_buttons(status, step.id))
    else:
        blocks.append(_section(decided_line(step)))
    return _cap(blocks)


def _human_blocks(status: RunStatus, step: StepStatus, decision: dict[str, Any], needed: int) -> list[dict[str, Any]]:
    """core.approve / core.confirm (v1.1): the playbook's question, then votes or one button per choice."""
    args = step.args or {}
    confirm = step.action == "core.confirm"
    what = "Your answer needed" if confirm else "Approval needed"
    blocks: list[dict[str, Any]] = [
        _section(
            f":{'question' if confirm else 'raised_hand'}: *{what}:* step *{escape(step.id)}* of "
            f"*{escape(status.playbook)}* (run `{escape(status.run_id)}`, requested by {requester(status)})"
        ),
        _section(truncate(f">{escape(_oneline(str(args.get('message') or '')))}", SECTION_LIMIT)),
    ]
    context: list[str] = []
    if confirm:
        voters = [v for v in step.approvals if v.vote == "approve"]
        if voters:
            context.append("answered by " + ", ".join(mention(v.user) for v in voters))
    else:
        approvals = [v for v in step.approvals if v.vote == "approve"]
        progress = f"{len(approvals)}/{needed} approvals"
        if approvals:
            progress += ": " + ", ".join(mention(v.user) for v in approvals)
        context.append(progress)
        hint = [str(a) for a in args.get("approvers") or []]
        if hint:
            context.append("asked: " + ", ".join(escape(h) for h in hint[:20]))
    groups = [str(g) for g in decision.get("approver_groups") or []]
    if groups:
        context.append("who may answer: " + ", ".join(f"@{escape(g)}" for g in groups))
    if step.approval_deadline:
        context.append(f"deadline {slack_date(step.approval_deadline)}")
    if step.escalated_at:
        context.append(":warning: escalated")
    if context:
        blocks.append(_context(*context))
    if step.state != "waiting_approval":
        blocks.append(_section(decided_line(step)))
    else:
        if confirm and not has_choices(step):
            blocks.append(_section(typed_answer(status, step)))
        blocks.append(vote_buttons(status, step))
    return _cap(blocks)


def has_choices(step: StepStatus) -> bool:
    """A core.confirm step with `choices` (a button each); without, its answer is typed."""
    return isinstance((step.args or {}).get("choices"), list)


def typed_answer(status: RunStatus, step: StepStatus) -> str:
    return (f"Type the answer with `playbook-bot confirm {escape(status.run_id)} {escape(step.id)} VALUE`"
            " (or the API); Reject declines.")


def _choice_buttons(status: RunStatus, step_id: str, choices: list[Any]) -> dict[str, Any]:
    """A button per choice (the workflow checks the clicked value against the step's choices), and Reject."""
    elements: list[dict[str, Any]] = []
    for i, choice in enumerate(choices[:20]):
        value = _button_value(status, step_id, choice=str(choice))
        elements.append({
            "type": "button",
            "action_id": f"{CHOICE_ACTION}.{i}",
            "text": {"type": "plain_text", "text": truncate(str(choice), 75), "emoji": False},
            "value": value,
        })
    reject = _button_value(status, step_id)
    elements.append({
        "type": "button",
        "action_id": REJECT_ACTION,
        "text": {"type": "plain_text", "text": "Reject", "emoji": True},
        "style": "danger",
        "value": reject,
    })
    return {"type": "actions", "block_id": f"confirm:{step_id}"[:255], "elements": elements}


def approval_text(status: RunStatus, step_id: str) -> str:
    step = status.step(step_id)
    text = (
        f"Approval needed: {escape(step.id)} ({escape(step.action)}{', irreversible' if step.irreversible else ''})"
        f" in {escape(status.playbook)} run {escape(status.run_id)}"
    )
    return truncate(text, FALLBACK_LIMIT)


def decided_line(step: StepStatus) -> str:
    """How an approval ended, for the message whose buttons are gone."""
    rejecters = [v for v in step.approvals if v.vote == "reject"]
    approvers = [v for v in step.approvals if v.vote == "approve"]
    if step.state == "rejected":
        if rejecters:
            reason = next((v.reason for v in rejecters if v.reason), "")
            line = ":no_entry_sign: Rejected by " + ", ".join(mention(v.user) for v in rejecters)
            return line + (f": {escape(_oneline(reason))}" if reason else "")
        return f":no_entry_sign: Rejected: {escape(_oneline(step.error or 'approval timed out'))}"
    if step.state == "denied":
        return f":no_entry: Denied by policy: {escape(_oneline(step.error or 'no reason given'))}"
    if step.state == "cancelled":
        return ":heavy_multiplication_x: The run was cancelled before a decision."
    if step.action == "core.confirm" and approvers and approvers[0].answer is not None:
        return f":white_check_mark: Answered *{escape(_oneline(str(approvers[0].answer)))}* by {mention(approvers[0].user)}"
    if approvers:
        return ":white_check_mark: Approved by " + ", ".join(mention(v.user) for v in approvers)
    return f"Step is {_state(step.state)}."


def _what_will_run(step: StepStatus) -> str:
    head = f"*Will run:* `{escape(step.action)}` with:\n"
    args = json.dumps(step.args or {}, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    return head + code_block(args, SECTION_LIMIT - len(head))


def _button_value(status: RunStatus, step_id: str, **more: str) -> str:
    """`{"run_id", "step_id", "execution"?, "choice"?}`: the execution (the run's first execution
    run id) binds the click to this run, not to a later one under the same run id."""
    value = {"run_id": status.run_id, "step_id": step_id, **more}
    if status.execution is not None:
        value["execution"] = status.execution
    return json.dumps(value, separators=(",", ":"))


def vote_buttons(status: RunStatus, step: StepStatus, block_id: str | None = None) -> dict[str, Any]:
    """A waiting step's buttons: Approve and Reject, or a core.confirm step's choices and Reject.
    `block_id` replaces the step's own where several steps share a view (the App Home tab)."""
    if step.action == "core.confirm":
        choices = (step.args or {}).get("choices")
        block = _choice_buttons(status, step.id, choices if has_choices(step) else [])
    else:
        block = _buttons(status, step.id)
    return block if block_id is None else {**block, "block_id": block_id}


def _buttons(status: RunStatus, step_id: str) -> dict[str, Any]:
    value = _button_value(status, step_id)
    return {
        "type": "actions",
        "block_id": f"approval:{step_id}"[:255],
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE_ACTION,
                "text": {"type": "plain_text", "text": "Approve", "emoji": True},
                "style": "primary",
                "value": value,
            },
            {
                "type": "button",
                "action_id": REJECT_ACTION,
                "text": {"type": "plain_text", "text": "Reject", "emoji": True},
                "style": "danger",
                "value": value,
            },
        ],
    }


# --- summary ----------------------------------------------------------------------------------


def summary_text(status: RunStatus) -> str:
    """The final thread reply: the outcome, counts, and loudly, anything left undone."""
    counts: dict[str, int] = {}
    for step in status.steps:
        counts[step.state] = counts.get(step.state, 0) + 1
    tally = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items()) or "no steps"
    took = f" in {duration(status.started_at, status.finished_at)}" if status.finished_at else ""
    lines = [f"{RUN_EMOJI.get(status.state, '')} *{escape(status.playbook)}* {_state(status.state)}{took}: {tally}."]
    if status.cancelled_by:  # who stopped it is what the thread most needs to say
        why = f": {escape(truncate(_oneline(status.cancel_reason), ERROR_LIMIT))}" if status.cancel_reason else ""
        lines.append(f":octagonal_sign: Cancelled by {mention(status.cancelled_by)}{why}")
    elif status.error:
        lines.append(f"*Error:* {escape(truncate(_oneline(status.error), ERROR_LIMIT * 2))}")
    if status.compensations:
        undone = [c.step for c in status.compensations if c.state == "succeeded"]
        if undone:
            lines.append("Rolled back: " + ", ".join(escape(s) for s in undone) + ".")
    if status.irreversible:
        lines.append("Irreversible (no rollback undoes them): " + ", ".join(escape(s) for s in status.irreversible) + ".")
    if status.not_undone:
        lines.append(
            ":rotating_light: *Could not undo:* "
            + ", ".join(f"*{escape(s)}*" for s in status.not_undone)
            + ". A human must check these."
        )
    return truncate("\n".join(lines), SECTION_LIMIT)


# --- helpers ----------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Slack's three control characters; anything else in mrkdwn is left to read as written.

    Every string that comes from data (errors, params, args, outputs, ids, reasons, what a user
    typed) goes through here before it reaches Slack text, so `<!channel>` or `<https://x|y>` in
    it shows as written instead of notifying or linking. Only the bot's own mentions stay live.
    (The same escaping a `slack.post` text's templates get: bot.playbook.templating.)"""
    return slack_escaped(text)


def requester(status: RunStatus) -> str:
    """Who asked, as the worker verified it. A requester no front door vouched for is whatever a
    raw Temporal client claimed: shown as text marked unverified, never as someone's mention."""
    if status.requester is not None and not status.requester.verified:
        return f"`{escape(status.requested_by)}` (unverified)"
    return mention(status.requested_by)


def mention(user: str) -> str:
    """A Slack principal (`slack:U…`, or a bare Slack user id) becomes a mention; `cli:alice` and
    other principals are shown as text."""
    bare = user.removeprefix("slack:")
    return f"<@{bare}>" if _SLACK_USER.fullmatch(bare) else f"`{escape(user)}`"


def channel_mention(channel: str | None, otherwise: str) -> str:
    """A channel id as Slack links it (`<#C…>`); anything else (`otherwise` when there is none) as
    text: a command's channel_id is data, and `<#{…}>` would carry whatever mrkdwn it holds."""
    if not channel:
        return otherwise
    return f"<#{channel}>" if _SLACK_CHANNEL.fullmatch(channel) else f"`{escape(channel)}`"


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code_block(text: str, limit: int) -> str:
    """A ``` block of at most `limit` characters; cut text says so."""
    body = escape(text).replace("```", "`\u200b``")
    fence, note = "```\n", "\n… (truncated)```"
    if len(fence) + len(body) + 4 <= limit:
        return f"{fence}{body}\n```"
    cut = _PARTIAL_ENTITY.sub("", body[: max(limit - len(fence) - len(note), 0)])  # never half an &amp;
    return f"{fence}{cut}{note}"


def duration(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return ""
    return short_duration(end - start)


def short_duration(value: timedelta) -> str:
    seconds = max(value.total_seconds(), 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def slack_date(when: datetime) -> str:
    """Shown in each reader's own time zone; the fallback is UTC ISO time."""
    return f"<!date^{int(when.timestamp())}^{{date_short_pretty}} {{time}}|{when.isoformat()}>"


def _state(state: str) -> str:
    return state.replace("_", " ")


def _oneline(text: str) -> str:
    return " ".join(text.split())


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return truncate(text, limit)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_LIMIT)}}


def _context(*parts: str) -> dict[str, Any]:
    # A context block holds at most 10 elements: one mrkdwn element with " · " between parts.
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(" · ".join(parts), SECTION_LIMIT)}]}


def _sections(lines: list[str], *, title: str) -> list[dict[str, Any]]:
    """Lines packed into as few sections as fit the text limit, the title on the first."""
    sections: list[dict[str, Any]] = []
    current = title
    for line in lines:
        line = truncate(line, SECTION_LIMIT - len(title) - 1)
        if len(current) + 1 + len(line) > SECTION_LIMIT:
            sections.append(_section(current))
            current = line
        else:
            current = f"{current}\n{line}"
    sections.append(_section(current))
    return sections


def _cap(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(blocks) <= BLOCK_LIMIT:
        return blocks
    kept = blocks[: BLOCK_LIMIT - 1]
    kept.append(_context(f"… {len(blocks) - len(kept)} more blocks not shown; `playbook-bot status` has them all"))
    return kept
