"""Exports: JSON for machines (hash fields included, so the chain can be checked offline) and a
Markdown timeline to paste into a postmortem. `summary` is also what `audit tail` prints.

Details should only ever hold `${secret:NAME}` references. Rendering still redacts anything that
looks like a secret value, because a postmortem doc travels further than the audit file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from bot.audit.events import StoredEvent, format_ts
from bot.terminal import visible

MAX_VALUE = 60  # characters of one details value shown in a summary
MAX_CELL = 200  # characters of one table cell
REDACTED = "[redacted]"

_SECRET_KEY = re.compile(r"secret|token|passw|api[_-]?key|authorization|cookie|credential|private[_-]?key", re.I)
_SECRET_REF = re.compile(r"^\$\{secret:[A-Za-z_][A-Za-z0-9_]*\}$")
_SECRET_VALUE = re.compile(
    r"xox[abposr]-[A-Za-z0-9-]+"  # Slack tokens
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"  # JWTs
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|(?i:bearer|basic)\s+(?!\$\{secret:)[A-Za-z0-9._~+/=-]{8,}"
)
_URL_CREDENTIALS = re.compile(r"(://)[^/\s:@]+:[^/\s@]+@")
_C1 = re.compile(r"[\x7f-\x9f]")


def to_json(events: Sequence[StoredEvent]) -> str:
    """A JSON list, oldest first; `ts` is the exact text that was hashed."""
    ordered = sorted(events, key=lambda event: event.seq)
    return json_text([_record(event) for event in ordered])


def json_text(value: Any) -> str:
    """Indented JSON, non-ASCII kept, but DEL and the C1 controls (U+007F-U+009F, CSI among them)
    escaped as JSON escapes them: `json` escapes only C0, and this text goes to a terminal. The same
    JSON value: a hash recomputed from it still holds."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return _C1.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _record(event: StoredEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "event_id": event.event_id,
        "ts": format_ts(event.ts),
        "run_id": event.run_id,
        "step_id": event.step_id,
        "kind": event.kind.value,
        "actor": event.actor,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def to_markdown(events: Sequence[StoredEvent], run_id: str) -> str:
    """A postmortem-ready timeline of one run: who started what, every decision, the outcome."""
    ordered = sorted((event for event in events if event.run_id == run_id), key=lambda event: event.seq)
    started = next((event for event in ordered if event.kind == "run_started"), None)
    finished = next((event for event in reversed(ordered) if event.kind == "run_finished"), None)
    start = redact(started.details) if started else {}

    lines = [f"# Run `{visible(run_id).replace('`', chr(0x2018))}`", ""]  # (a backtick would end the code span)
    playbook = _short(start.get("playbook", "unknown"))
    if start.get("playbook_hash"):
        playbook += f" (hash {_short(start['playbook_hash'])[:12]})"
    requester = _short(start.get("requested_by") or (started.actor if started else "unknown"))
    if start.get("trigger"):
        requester += f" via {_short(start['trigger'])}"
    lines.append(f"- **Playbook:** {_cell(playbook)}")
    lines.append(f"- **Requested by:** {_cell(requester)}")
    if ordered:
        lines.append(f"- **Started:** {_when(ordered[0].ts)}")
    if finished:
        state = _short(redact(finished.details).get("state", "unknown"))
        lines.append(f"- **Final state:** {_cell(state)} at {_when(finished.ts)}")
    else:
        lines.append("- **Final state:** not finished (no run_finished event)")
    if ordered:
        first, last = ordered[0], ordered[-1]
        lines.append(f"- **Events:** {len(ordered)} (seq {first.seq}–{last.seq}), last hash `{last.hash[:16]}`")
    lines += ["", "| seq | time (UTC) | kind | step | actor | what happened |", "|---:|---|---|---|---|---|"]
    for event in ordered:
        cells = [
            str(event.seq),
            event.ts.strftime("%H:%M:%S.") + f"{event.ts.microsecond // 1000:03d}",
            event.kind.value,
            event.step_id or "",
            event.actor,
            summary(event),
        ]
        lines.append("| " + " | ".join(_cell(_truncate(cell, MAX_CELL)) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def summary(event: StoredEvent) -> str:
    """One human line per event, from its details, short and redacted."""
    details = redact(event.details)
    try:
        line = _SUMMARIES.get(event.kind.value, _generic)(event, details)
    except (TypeError, ValueError):  # details of an unexpected shape: still show something
        line = _generic(event, details)
    return _truncate(line, MAX_CELL)


def redact(value: Any, key: str = "") -> Any:
    """Replace what looks like a secret value; `${secret:NAME}` references pass unchanged."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if not isinstance(value, str) or _SECRET_REF.match(value):
        return value
    if _SECRET_KEY.search(key) and value:
        return REDACTED
    return _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", _SECRET_VALUE.sub(REDACTED, value))


# -- one summary per kind ------------------------------------------------------------------------


def _short(value: Any, limit: int = MAX_VALUE) -> str:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = ", ".join(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return _truncate(text, limit)


def _truncate(text: str, limit: int) -> str:
    text = visible(" ".join(text.split()))  # one line, nothing that drives a terminal
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(text: str) -> str:
    """A table cell's text: `|` cannot end the cell, nor raw HTML (`</td><tr>...`, which renderers
    that allow it would draw as a row of its own, say a forged approval) make one, nor `![](url)`
    fetch an image (a tracker) or `[text](url)` show a link under another name when the timeline
    is viewed."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("](", "]\\(")  # (no `](`: no inline link or image)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts.microsecond // 1000:03d} UTC"


def _pairs(values: Any, limit: int = 4) -> str:
    if not isinstance(values, dict) or not values:
        return ""
    shown = [f"{k}={_short(v, 30)}" for k, v in list(values.items())[:limit]]
    return ", ".join(shown) + (", …" if len(values) > limit else "")


def _with_reason(text: str, reason: Any) -> str:
    if isinstance(reason, list):
        reason = "; ".join(_short(r) for r in reason)
    return f"{text} — {_short(reason, 120)}" if reason else text


def _generic(event: StoredEvent, d: dict[str, Any]) -> str:
    return _pairs(d) or event.kind.value.replace("_", " ")


def _alert_received(event: StoredEvent, d: dict[str, Any]) -> str:
    labels = d.get("labels") if isinstance(d.get("labels"), dict) else {}
    name = d.get("alertname") or labels.get("alertname") or "?"
    text = f"alert {_short(name)} ({_short(d.get('status', 'firing'))})"
    return text + (f" fingerprint {_short(d['fingerprint'], 20)}" if d.get("fingerprint") else "")


def _alert_outcome(event: StoredEvent, d: dict[str, Any]) -> str:
    text = f"alert outcome: {_short(d.get('outcome', '?'))}"
    text += f" ({_short(d['playbook'])})" if d.get("playbook") else ""
    return _with_reason(text, d.get("reason"))


def _slack_command(event: StoredEvent, d: dict[str, Any]) -> str:
    return f"{_short(d.get('command', '/playbook'))} {_short(d.get('text', ''), 100)}".strip()


def _run_started(event: StoredEvent, d: dict[str, Any]) -> str:
    text = f"run started: {_short(d.get('playbook', '?'))} by {_short(d.get('requested_by', event.actor))}"
    text += f" via {_short(d['trigger'])}" if d.get("trigger") else ""
    params = _pairs(d.get("params"))
    return f"{text} ({params})" if params else text


def _step_started(event: StoredEvent, d: dict[str, Any]) -> str:
    attempt = d.get("attempt")
    return f"{_short(d.get('action', 'step'))} started" + (f" (attempt {attempt})" if attempt and attempt != 1 else "")


def _step_succeeded(event: StoredEvent, d: dict[str, Any]) -> str:
    return f"{_short(d.get('action', 'step'))} succeeded" + _attempts(d)


def _step_output(event: StoredEvent, d: dict[str, Any]) -> str:
    return (f"{_short(d.get('action', 'step'))} output stored ({_short(d.get('size', '?'))} bytes, sha256 "
            f"{_short(d.get('sha256', '?'), 16)}): playbook-bot audit show-output {event.event_id}")


def _step_failed(event: StoredEvent, d: dict[str, Any]) -> str:
    state = d.get("state", "failed")
    return _with_reason(f"{_short(d.get('action', 'step'))} {_short(state)}" + _attempts(d), d.get("error"))


def _attempts(d: dict[str, Any]) -> str:
    attempts = d.get("attempts")
    return f" after {attempts} attempts" if isinstance(attempts, int) and attempts > 1 else ""


def _step_skipped(event: StoredEvent, d: dict[str, Any]) -> str:
    return _with_reason("skipped", d.get("reason"))


def _policy_decision(event: StoredEvent, d: dict[str, Any]) -> str:
    if not d.get("allow"):
        verdict = "deny"
    elif d.get("require_approval"):
        verdict = f"require approval ({_needed(d)} of {_groups(d)})"
    else:
        verdict = "allow"
    return _with_reason(f"policy: {verdict}", d.get("reasons"))


def _needed(d: dict[str, Any]) -> int:
    """DESIGN.md: `min_approvals` below 1 counts as 1."""
    value = d.get("min_approvals")
    return max(value, 1) if isinstance(value, int) else 1


def _groups(d: dict[str, Any]) -> str:
    groups = d.get("approver_groups") or []
    groups = groups if isinstance(groups, list) else [groups]
    return ", ".join(_short(group, 30) for group in groups) or "any approver"


def _approval_requested(event: StoredEvent, d: dict[str, Any]) -> str:
    text = f"approval requested: {_needed(d)} of {_groups(d)}"
    return text + (f", deadline {_short(d['deadline'], 30)}" if d.get("deadline") else "")


def _approval_vote(event: StoredEvent, d: dict[str, Any]) -> str:
    verb = "rejected" if d.get("vote") == "reject" else "approved"
    text = f"{verb} by {_short(d.get('user') or event.actor)}"
    if d.get("accepted") is False:
        text = f"vote refused ({verb} by {_short(d.get('user') or event.actor)})"
        return _with_reason(text, d.get("message"))
    return _with_reason(text, d.get("reason"))


def _approval_timeout(event: StoredEvent, d: dict[str, Any]) -> str:
    if d.get("stage") == "escalated":
        return "approval deadline passed: escalated"
    return "approval timed out: step rejected"


def _compensation(outcome: str) -> Callable[[StoredEvent, dict[str, Any]], str]:
    def render(event: StoredEvent, d: dict[str, Any]) -> str:
        text = f"compensation of {event.step_id or '?'} {outcome}"
        text += f" ({_short(d['action'])})" if d.get("action") and outcome == "started" else ""
        return _with_reason(text, d.get("error"))

    return render


def _run_finished(event: StoredEvent, d: dict[str, Any]) -> str:
    text = f"run finished: {_short(d.get('state', '?'))}"
    if d.get("not_undone"):
        text += f" (not undone: {_short(d['not_undone'], 100)})"
    if d.get("escalated_to"):
        text += f", escalated to {_short(d['escalated_to'], 100)}"
    return _with_reason(text, d.get("error"))


_SUMMARIES: dict[str, Callable[[StoredEvent, dict[str, Any]], str]] = {
    "alert_received": _alert_received,
    "alert_outcome": _alert_outcome,
    "slack_command": _slack_command,
    "run_started": _run_started,
    "step_started": _step_started,
    "step_succeeded": _step_succeeded,
    "step_output": _step_output,
    "step_failed": _step_failed,
    "step_skipped": _step_skipped,
    "policy_decision": _policy_decision,
    "approval_requested": _approval_requested,
    "approval_vote": _approval_vote,
    "approval_timeout": _approval_timeout,
    "compensation_started": _compensation("started"),
    "compensation_succeeded": _compensation("succeeded"),
    "compensation_failed": _compensation("failed"),
    "run_finished": _run_finished,
}
