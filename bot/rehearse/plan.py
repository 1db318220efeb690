"""A run's plan without running it (`playbook-bot run --dry-run`): each step with its arguments
rendered from the params (what needs step outputs is rendered at run time), its undo, fallback and
failure path, and what policy would say about the high-impact ones."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from bot.playbook.loader import LoadedPlaybook
from bot.playbook.model import ForeachGroup, ParallelGroup, Step
from bot.playbook.templating import TemplateError, display, inert, render, render_args
from bot.policy.inputs import policy_input, rfc3339
from bot.policy.models import Decision

ARGS_MAX = 400  # characters of rendered arguments shown per step
ITEMS_MAX = 50  # foreach items listed; the rest are counted
ITEMS_EXPANDED = 10  # of those, items shown step by step (arguments rendered, policy asked)

Decide = Callable[[dict[str, Any]], Awaitable[Decision]]


def _json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= ARGS_MAX else text[: ARGS_MAX - 1] + "…"


def _rendered(action: str, template: dict[str, Any], context: dict[str, Any], loaded: LoadedPlaybook) -> str:
    try:
        return _json(display(render_args(action, template, context, secrets=loaded.playbook.secrets)))
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


def foreach_items(group: ForeachGroup, context: dict[str, Any]) -> list[Any] | str:
    """The items a foreach group would run over, or why a dry run cannot list them."""
    try:
        items = group.foreach if isinstance(group.foreach, list) else render(group.foreach, context)
    except TemplateError as exc:
        return f"items known at run time: {exc}"
    return list(items) if isinstance(items, list) else f"renders to {type(items).__name__}, not a list: the group would fail"


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

    async def step_lines(step: Step, label: str, indent: str, ctx: dict[str, Any] = context,
                         item: tuple[Any, int] | None = None) -> list[str]:
        head = f"{indent}{label} {step.id}  {step.action}" + (f"  impact {step.impact}" if step.impact == "high" else "")
        head += "  irreversible" if step.irreversible else ""
        out = [head + _when(step.when, ctx), f"{indent}    with: {_rendered(step.action, step.with_, ctx, loaded)}"]
        if step.impact == "high" and decide is not None:
            try:
                args = display(render_args(step.action, step.with_, ctx, secrets=pb.secrets))
            except TemplateError:
                args = {}
            asked = policy_input(pb, loaded.hash, run, params, alert, now, step=step, args=args)
            if item is not None:  # as the run asks it: per item (DESIGN v1.1 foreach)
                asked["item"], asked["index"] = item
            decision = await decide(asked)
            reasons = "; ".join(decision.reasons) or "no reason given"
            if not decision.allow:
                said = f"would deny it: {reasons}"
            elif decision.require_approval:
                said = f"needs {max(decision.min_approvals, 1)} approval(s) from {', '.join(decision.approver_groups)}: {reasons}"
            else:
                said = f"allows it: {reasons}"
            out.append(f"{indent}    policy {said}")
        if step.compensate is not None:
            out.append(f"{indent}    undo: {step.compensate.action} {_rendered(step.compensate.action, step.compensate.with_, ctx, loaded)}")
        if step.fallback is not None:
            out.append(f"{indent}    fallback: {step.fallback.action} {_rendered(step.fallback.action, step.fallback.with_, ctx, loaded)}")
        if step.on_failure == "continue":
            out.append(f"{indent}    on failure: continue (failed_ignored)")
        if step.settles:
            out.append(f"{indent}    settles: {step.settles}")
        return out

    async def foreach_lines(group: ForeachGroup, n: int) -> list[str]:
        """Each item (up to ITEMS_EXPANDED) with its steps rendered as that item would run them."""
        items = foreach_items(group, context)
        said = f"{len(items)} items" if isinstance(items, list) else items
        out = [f"{n}. {group.id}  (foreach as {group.as_}, {said}, concurrency {group.concurrency}, "
               f"max_failures {group.max_failures})" + _when(group.when, context)]
        if not isinstance(items, list):
            for m, step in enumerate(group.steps, 1):  # once, as any item would run them
                out += await step_lines(step, f"{n}.{m}", "   ")
            return out
        for i, value in enumerate(items[:ITEMS_MAX]):
            out.append(f"   [{i}] {group.as_} = {_json(value)}")
            if i >= ITEMS_EXPANDED:
                continue
            ctx = inert({**context, group.as_: value, "index": i})
            for m, step in enumerate(group.steps, 1):
                out += await step_lines(step, f"{n}.{m}", "      ", ctx, (value, i))
        if len(items) > ITEMS_EXPANDED:
            out.append(f"   (items after [{ITEMS_EXPANDED - 1}] run the same steps; listed, not expanded)")
        if len(items) > ITEMS_MAX:
            out.append(f"   … and {len(items) - ITEMS_MAX} more")
        return out

    for n, item in enumerate(pb.steps, 1):
        if isinstance(item, ParallelGroup):
            lines.append(f"{n}. {item.id}  (parallel)" + _when(item.when, context))
            for m, step in enumerate(item.parallel, 1):
                lines += await step_lines(step, f"{n}.{m}", "   ")
            continue
        if isinstance(item, ForeachGroup):
            lines += await foreach_lines(item, n)
            continue
        lines += await step_lines(item, f"{n}.", "")
    if pb.on_failure:
        lines.append("on failure (after the rollback):")
        failed = {**run, "error": "(the run's error)", "failed_step": "(the step that failed)"}
        after = inert({"params": params, "vars": pb.vars, "alert": alert, "run": failed, "steps": {}})
        for step in pb.on_failure:
            lines += await step_lines(step, "-", "   ", after)
    return lines
