"""A case's runs read by rehearsal address: its own run's status and its child runs' (a
`playbook.run` step's child, `call/step`), foreach items (`roll[2]`) and their steps
(`roll[2].drain`), undos and fallbacks. Addresses are as `cases.resolve` left them (engine ids)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.engine.state import ForeachItem, RunStatus, StepStatus
from bot.rehearse.cases import Address, generic, parse_address

MISSING = object()
UNDONE_BY_PARENT = ("succeeded", "failed", "running")  # the parent's word undid a held child (not skipped)


@dataclass
class Tree:
    status: RunStatus
    children: dict[str, RunStatus] = field(default_factory=dict)  # call step id -> the child's status

    def run_of(self, addr: Address) -> RunStatus | None:
        return self.children.get(addr.call) if addr.call is not None else self.status

    def node(self, addr: Address) -> StepStatus | ForeachItem | None:
        """The step (or foreach item) an address names, or None when its run or item does not exist (yet)."""
        run = self.run_of(addr)
        if run is None:
            return None
        group, bracket, rest = addr.path.partition("[")
        if bracket and "." not in rest:  # a whole item: roll[2]
            try:
                items = run.step(group).items or []
            except KeyError:
                return None
            index = int(rest.rstrip("]"))
            return items[index] if index < len(items) else None
        try:
            return run.step(addr.path)
        except KeyError:
            return None

    def state(self, text: str) -> str:
        addr = parse_address(text)
        node = self.node(addr)
        if node is None:
            return "absent"
        if addr.kind == "undo":
            run = self.run_of(addr)
            assert run is not None
            record = next((c for c in reversed(run.compensations) if c.step == addr.path), None)
            return record.state if record is not None else "not run"
        if addr.kind == "fallback":
            assert isinstance(node, StepStatus)
            return node.fallback.state if node.fallback is not None else "not run"
        return node.state

    def error(self, text: str) -> str | None:
        node = self.node(parse_address(text))
        return node.error if node is not None else None

    def output(self, text: str) -> Any:
        addr = parse_address(text)
        node = self.node(addr)
        if node is None or addr.kind == "undo":  # an undo's output is not kept
            return MISSING
        if isinstance(node, ForeachItem):
            return {s.id.rpartition(".")[2]: s.output for s in node.steps}
        if addr.kind == "fallback":
            return node.fallback.output if node.fallback is not None else MISSING
        if node.items is not None and node.output is None:  # a foreach group: one mapping per item
            return [{s.id.rpartition(".")[2]: s.output for s in item.steps} for item in node.items]
        return node.output

    def args(self, text: str, recorded: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """What the action was called with, as status shows it (secrets as `${secret:NAME}`)."""
        addr = parse_address(text)
        if addr.kind == "undo":
            return recorded.get(text)
        node = self.node(addr)
        if not isinstance(node, StepStatus):
            return None
        if addr.kind == "fallback":
            return node.fallback.args if node.fallback is not None else None
        return node.args

    def concrete(self, key: str) -> list[str]:
        """The step addresses a key names: itself, or (an item step named without [i]) each item's."""
        addr = parse_address(key)
        run = self.run_of(addr)
        if run is None:
            return []
        prefix = f"{addr.call}/" if addr.call else ""
        return [prefix + s.id for s in run.all_steps() if key in (prefix + s.id, generic(prefix + s.id))]

    def may_still_run(self, key: str) -> bool:
        """Whether a step the key names may still start: its run has not started, a foreach group
        has not listed its items yet, or one of the named steps is still to come."""
        addr = parse_address(key)
        run = self.run_of(addr)
        if run is None:
            return not self.status.finished
        if run.finished:
            return False
        if any(s.items is None and s.progress is None and s.state in ("pending", "running") for s in run.steps):
            return True
        return any(self.state(a) in ("pending", "running", "waiting_approval") for a in self.concrete(key))

    def trace(self) -> list[str]:
        """What ran, in order, a child run's entries (as `call/...`) in its call step's place: up
        to its undos after the call, and the undos its parent ordered after `undo:<call>`."""
        out: list[str] = []
        later: dict[str, list[str]] = {}
        for entry in self.status.trace:
            out.append(entry)
            if entry.startswith("undo:") and entry[5:] in later:
                out += later.pop(entry[5:])
                continue
            child = self.children.get(entry)
            if child is None:
                continue
            shown = [_under(entry, e) for e in child.trace]
            record = next((c for c in self.status.compensations if c.step == entry), None)
            if record is not None and record.state in UNDONE_BY_PARENT:
                first = next((i for i, e in enumerate(child.trace) if e.startswith("undo:")), len(shown))
                shown, later[entry] = shown[:first], shown[first:]
            out += shown
        for rest in later.values():
            out += rest
        return out


def _under(call: str, entry: str) -> str:
    kind, colon, step = entry.partition(":")
    return f"{kind}:{call}/{step}" if colon else f"{call}/{entry}"
