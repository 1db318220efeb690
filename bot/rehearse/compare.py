"""A case's `expect` against what its run did: one readable line (or block) per difference."""

from __future__ import annotations

import json
from typing import Any

from bot.engine.state import RunStatus
from bot.rehearse.cases import Expect
from bot.rehearse.tree import MISSING, Tree


def actual_outcome(status: RunStatus, stuck_queued: bool) -> str:
    """started | busy | attached (the key was held, nothing ran) | queued | refused (by admission)."""
    if status.busy:
        return "attached" if status.busy.get("on_busy") == "attach" else "busy"
    if stuck_queued:
        return "queued"
    if status.state == "cancelled" and (status.error or "").startswith("refused by the worker's"):
        return "refused"
    return "started"


def compare(expect: Expect, tree: Tree, outcome: str, args: dict[str, dict[str, Any]]) -> list[str]:
    status = tree.status
    out: list[str] = []
    if expect.state is not None and expect.state != status.state:
        out.append(f"state: expected {expect.state}, got {status.state}" + _why(status))
    if expect.outcome is not None and expect.outcome != outcome:
        out.append(f"outcome: expected {expect.outcome}, got {outcome}" + _why(status))
    for addr, want in expect.steps.items():
        got = tree.state(addr)
        if got != want:
            error = tree.error(addr)
            out.append(f"steps.{addr}: expected {want}, got {got}" + (f" (error: {error})" if error else ""))
    trace = tree.trace()
    if expect.order is not None and expect.order != trace:
        out.append(_order_diff(expect.order, trace))
    for addr, want in expect.outputs.items():
        got = tree.output(addr)
        if got != want:
            out.append(f"outputs.{addr}: expected {_show(want)}, got {_show(got)}")
    for addr, wanted in expect.args.items():
        given = tree.args(addr, args)
        if given is None:
            out.append(f"args.{addr}: expected {_show(wanted)}, but it never ran")
            continue
        for key, want in wanted.items():
            got = given.get(key, MISSING)
            if got != want:
                out.append(f"args.{addr}.{key}: expected {_show(want)}, got {_show(got)}")
    for key, want in expect.params.items():
        got = status.params.get(key, MISSING)
        if got != want:
            out.append(f"params.{key}: expected {_show(want)}, got {_show(got)}")
    if expect.error is not None and expect.error not in (status.error or ""):
        out.append(f"error: expected text containing {expect.error!r}, got {status.error!r}")
    if expect.no_error and status.error is not None:
        out.append(f"error: expected none, got {status.error!r}")
    return out


def _why(status: RunStatus) -> str:
    return f" (error: {status.error})" if status.error else ""


def _order_diff(want: list[str], got: list[str]) -> str:
    first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    at_want = want[first] if first < len(want) else "(end)"
    at_got = got[first] if first < len(got) else "(end)"
    return (
        "order: differs at [{0}]: expected {1}, got {2}\n"
        "  expected: {3}\n"
        "  actual:   {4}".format(first, at_want, at_got, ", ".join(want) or "(nothing)", ", ".join(got) or "(nothing)")
    )


def _show(value: Any) -> str:
    if value is MISSING:
        return "(absent)"
    return json.dumps(value, sort_keys=True, default=str)
