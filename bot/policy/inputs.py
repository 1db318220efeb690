"""The input document of DESIGN.md's policy contract, built in one place.

Pure (no clock of its own: callers pass `now`), so the workflow can build it from its own state
and the front door and the Slack dry-run build exactly the same shape.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from bot.playbook.model import Playbook, Step


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


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
) -> dict[str, Any]:
    """`step` (with its rendered `args`) for the decision and approver rules; none for `start`."""
    doc: dict[str, Any] = {
        "playbook": {"name": playbook.name, "owner": playbook.owner, "hash": playbook_hash},
        "run": run,
        "params": params,
        "alert": alert,
        "approvals": list(approvals),
        "now": rfc3339(now),
    }
    if step is not None:
        doc["step"] = {"id": step.id, "action": step.action, "impact": step.impact, "with": args or {}}
    if user is not None:
        doc["user"] = user
    return doc
