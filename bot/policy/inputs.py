"""The input document of DESIGN.md's policy contract, built in one place.

Pure (no clock of its own: callers pass `now`), so the workflow can build it from its own state
and the front door and the Slack dry-run build exactly the same shape.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from bot.identity.principals import ALERT_SENDERS
from bot.playbook.model import Playbook, Step
from bot.playbook.params import coerce_value

# Where a param's value came from: the playbook file (its default), an authenticated alert
# (a trigger's template over a verified alert's labels), or whoever asked for the run.
PLAYBOOK, ALERT, REQUESTER = "playbook", "alert", "requester"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def provenance(
    playbook: Playbook, params: dict[str, Any], trigger_kind: str, alert: dict[str, Any] | None, alert_verified: bool
) -> dict[str, Any]:
    """`input.provenance`: which facts an authenticated source vouches for. Requester-chosen facts
    may only make a decision stricter (the shipped policy reads this; docs/security.md)."""
    sources: dict[str, str] = {}
    for name, value in params.items():
        spec = playbook.params.get(name)
        default: Any = None
        if spec is not None and spec.default is not None:
            try:
                default = coerce_value(name, spec, spec.default)
            except ValueError:
                default = None
        if value is None or (default is not None and value == default):
            sources[name] = PLAYBOOK
        elif trigger_kind in ALERT_SENDERS and alert_verified:
            sources[name] = ALERT
        else:
            sources[name] = REQUESTER
    source = {"source": trigger_kind, "verified": alert_verified} if alert is not None else None
    return {"params": sources, "alert": source}


def policy_input(
    playbook: Playbook,
    playbook_hash: str,
    run: dict[str, Any],
    params: dict[str, Any],
    alert: dict[str, Any] | None,
    now: datetime,
    *,
    step: Step | None = None,
    args: dict[str, Any] | None = None,
    approvals: Iterable[dict[str, Any]] = (),
    user: dict[str, Any] | None = None,
    sources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`step` (with its rendered `args`) for the decision and approver rules; none for `start`."""
    doc: dict[str, Any] = {
        "playbook": {"name": playbook.name, "owner": playbook.owner, "hash": playbook_hash},
        "run": run,
        "params": params,
        "alert": alert,
        "approvals": list(approvals),
        "now": rfc3339(now),
        "provenance": sources if sources is not None else provenance(playbook, params, run.get("trigger", ""), alert, False),
    }
    if step is not None:
        doc["step"] = {"id": step.id, "action": step.action, "impact": step.impact, "with": args or {}}
        if step.irreversible:  # said only when true, so a v1 step's input is what it always was
            doc["step"]["irreversible"] = True
    if user is not None:
        doc["user"] = user
    return doc
