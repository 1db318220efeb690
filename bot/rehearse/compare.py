"""A case's `expect` against what its run did: one readable line (or block) per difference."""

from __future__ import annotations

import json
from typing import Any

from bot.engine.state import RunStatus
from bot.rehearse.cases import Expect, parse_address

MISSING = object()


def actual_outcome(status: RunStatus, stuck_queued: bool) -> str:
    """started | busy | attached (the key was held, nothing ran) | queued | refused (by admission)."""
    if status.busy:
        return "attached" if status.busy.get("on_busy") == "attach" else "busy"
    if stuck_queued:
        return "queued"
    if status.state == "cancelled" and (status.error or "").startswith("refused by the worker's"):
        return "refused"
    return "started"


def compare(expect: Expect, status: RunStatus, outcome: str, args: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    if expect.state is not None and expect.state != status.state:
        out.append(f"state: expected {expect.state}, got {status.state}" + _why(status))
    if expect.outcome is not None and expect.outcome != outcome:
        out.append(f"outcome: expected {expect.outcome}, got {outcome}" + _why(status))
    for addr, want in expect.steps.items():
        got = _state(status, addr)
        if got != want:
            out.append(f"steps.{addr}: expected {want}, got {got}" + _step_error(status, addr))
    if expect.order is not None and expect.order != status.trace:
        out.append(_order_diff(expect.order, status.trace))
    for addr, want in expect.outputs.items():
        got = _output(status, addr)
        if got != want:
            out.append(f"outputs.{addr}: expected {_show(want)}, got {_show(got)}")
    for addr, wanted in expect.args.items():
        given = _args(status, addr, args)
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


def _step_error(status: RunStatus, addr: str) -> str:
    try:
        error = status.step(parse_address(addr).step).error
    except KeyError:
        return ""
    return f" (error: {error})" if error else ""


def _state(status: RunStatus, text: str) -> str:
    addr = parse_address(text)
    try:
        st = status.step(addr.step if addr.item is None else text)  # TODO(foreach): item addresses in status
    except KeyError:
        return "absent"
    if addr.kind == "undo":
        record = next((c for c in status.compensations if c.step == addr.step), None)
        return record.state if record is not None else "not run"
    if addr.kind == "fallback":
        return st.fallback.state if st.fallback is not None else "not run"
    return st.state


def _output(status: RunStatus, text: str) -> Any:
    addr = parse_address(text)
    try:
        st = status.step(addr.step if addr.item is None else text)
    except KeyError:
        return MISSING
    if addr.kind == "fallback":
        return st.fallback.output if st.fallback is not None else MISSING
    if addr.kind == "undo":
        return MISSING  # an undo's output is not kept
    return st.output


def _args(status: RunStatus, text: str, recorded: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What the action was called with, as status shows it (secrets as `${secret:NAME}`)."""
    addr = parse_address(text)
    if addr.kind == "undo":
        return recorded.get(text)
    try:
        st = status.step(addr.step if addr.item is None else text)
    except KeyError:
        return None
    if addr.kind == "fallback":
        return st.fallback.args if st.fallback is not None else None
    return st.args


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
