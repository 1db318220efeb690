"""A run's plan without running it (`playbook-bot run --dry-run`): each step with its arguments
rendered from the params (what needs step outputs is rendered at run time), its undo, fallback and
failure path, and what policy would say about the high-impact ones."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from bot.playbook.loader import LoadedPlaybook
from bot.playbook.model import ParallelGroup, Step
from bot.playbook.templating import TemplateError, display, inert, render
from bot.policy.inputs import policy_input, rfc3339
from bot.policy.models import Decision

ARGS_MAX = 400  # characters of rendered arguments shown per step
ITEMS_MAX = 50  # foreach items listed; the rest are counted

Decide = Callable[[dict[str, Any]], Awaitable[Decision]]


def _json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= ARGS_MAX else text[: ARGS_MAX - 1] + "…"


def _rendered(template: Any, context: dict[str, Any], loaded: LoadedPlaybook) -> str:
    try:
        return _json(display(render(template, context, secrets=loaded.playbook.secrets)))
    except TemplateError as exc:
        return f"(rendered at run time: {exc})"


def _when(template: str | None, context: dict[str, Any]) -> str:
    if template is None:
        return ""
    try:
        from bot.playbook.templating import truthy

        return f"  when {template} → {'runs' if truthy(render(template, context)) else 'skipped'}"
    except TemplateError:
        return f"  when {template} (decided at run time)"


def foreach_items(item: Any, context: dict[str, Any]) -> list[Any] | None:
    """The items a foreach group would run over, or None when it is no foreach group (or its list
    needs step outputs). TODO(foreach): the foreach model is being built; this reads its DESIGN shape."""
    template = getattr(item, "foreach", None)
    if template is None:
        return None
    try:
        items = render(template, context)
    except TemplateError:
        return None
    return list(items) if isinstance(items, list) else None


async def plan_lines(
    loaded: LoadedPlaybook, params: dict[str, Any], requested_by: str, decide: Decide | None = None,
    alert: dict[str, Any] | None = None,
) -> list[str]:
    pb = loaded.playbook
    now = datetime.now(timezone.utc)
    run = {"id": "dry-run", "playbook": pb.name, "requested_by": requested_by, "trigger": "cli",
           "started_at": rfc3339(now), "error": None, "failed_step": None}
    context = inert({"params": params, "vars": pb.vars, "alert": alert, "run": run, "steps": {}})
    lines = [f"Dry run of {pb.name} ({loaded.hash[:19]}): nothing is executed."]
    if pb.concurrency is not None:
        try:
            key = render(pb.concurrency.key, context)
        except TemplateError as exc:
            key = f"(cannot render: {exc})"
        lines.append(f"one run at a time per key {key!r} (limit {pb.concurrency.limit}, on busy: {pb.concurrency.on_busy})")

    async def step_lines(step: Step, label: str, indent: str) -> list[str]:
        head = f"{indent}{label} {step.id}  {step.action}" + (f"  impact {step.impact}" if step.impact == "high" else "")
        head += "  irreversible" if step.irreversible else ""
        out = [head + _when(step.when, context), f"{indent}    with: {_rendered(step.with_, context, loaded)}"]
        if step.impact == "high" and decide is not None:
            try:
                args = display(render(step.with_, context, secrets=pb.secrets))
            except TemplateError:
                args = {}
            decision = await decide(policy_input(pb, loaded.hash, run, params, alert, now, step=step, args=args))
            reasons = "; ".join(decision.reasons) or "no reason given"
            if not decision.allow:
                said = f"would deny it: {reasons}"
            elif decision.require_approval:
                said = f"needs {max(decision.min_approvals, 1)} approval(s) from {', '.join(decision.approver_groups)}: {reasons}"
            else:
                said = f"allows it: {reasons}"
            out.append(f"{indent}    policy {said}")
        if step.compensate is not None:
            out.append(f"{indent}    undo: {step.compensate.action} {_rendered(step.compensate.with_, context, loaded)}")
        if step.fallback is not None:
            out.append(f"{indent}    fallback: {step.fallback.action} {_rendered(step.fallback.with_, context, loaded)}")
        if step.on_failure == "continue":
            out.append(f"{indent}    on failure: continue (failed_ignored)")
        if step.settles:
            out.append(f"{indent}    settles: {step.settles}")
        return out

    for n, item in enumerate(pb.steps, 1):
        if isinstance(item, ParallelGroup):
            lines.append(f"{n}. {item.id}  (parallel)" + _when(item.when, context))
            for m, step in enumerate(item.parallel, 1):
                lines += await step_lines(step, f"{n}.{m}", "   ")
            continue
        items = foreach_items(item, context)
        if items is not None:  # TODO(foreach): one block per item once items render their own context
            lines.append(f"{n}. {item.id}  (foreach, {len(items)} items)")
            lines += [f"   [{i}] {_json(value)}" for i, value in enumerate(items[:ITEMS_MAX])]
            if len(items) > ITEMS_MAX:
                lines.append(f"   … and {len(items) - ITEMS_MAX} more")
            continue
        lines += await step_lines(item, f"{n}.", "")
    if pb.on_failure:
        lines.append("on failure (after the rollback):")
        for step in pb.on_failure:
            lines += await step_lines(step, "-", "   ")
    return lines
