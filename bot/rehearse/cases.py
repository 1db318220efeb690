"""Rehearsal files (`*.test.yaml`): what a case may say, read with the line of every key.

A test file is hostile input like a playbook: unknown keys, unknown step addresses and oversized
lists are refused with the file and line, before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from bot.playbook.checks import Loc, dotted, suggestion
from bot.playbook.loader import Catalog, PlaybookLoadErrors, UnknownPlaybook, _parse_yaml
from bot.playbook.model import ParallelGroup, Playbook, Step

MAX_CASES = 200
MAX_VOTES = 20  # per step
MAX_ENTRIES = 500  # mocks, expectations, held locks: per case
MAX_FILE_BYTES = 1_000_000
MAX_VALUES = 200_000  # values in the document with every alias expanded
ADDRESS = re.compile(r"^(?:(undo|fallback):)?([a-z_][a-z0-9_-]*)(?:\[(\d{1,4})\])?(?:/([a-z_][a-z0-9_-]*))?$")


class RehearsalFileError(ValueError):
    """A problem in a test file, as `file:line: message` (exit code 2)."""

    def __init__(self, message: str, path: Path, line: int | None = None) -> None:
        self.message, self.path, self.line = message, path, line
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Mock(_Strict):
    """`output` answers the action; `fail` fails its first `attempts` attempts (every one when
    absent; then `output` answers), retryable like a transient error."""

    output: dict[str, JsonValue] | None = None
    fail: str | None = Field(None, min_length=1, max_length=2000)
    attempts: int | None = Field(None, ge=1, le=100)


class VoteSpec(_Strict):
    by: str = Field(min_length=1, max_length=200)
    vote: Literal["approve", "reject"] = "approve"
    reason: str = Field("", max_length=2000)
    groups: list[str] = Field(
        default_factory=list, max_length=50,
        description="The voter's groups as a front door would have verified them (Slack user groups).",
    )


class ConfirmSpec(_Strict):
    by: str = Field(min_length=1, max_length=200)
    choice: str | None = Field(None, max_length=2000)
    value: JsonValue = None
    groups: list[str] = Field(default_factory=list, max_length=50)


class Locks(_Strict):
    held: list[str] = Field(default_factory=list, max_length=20, description="Keys another run holds already.")


class Expect(_Strict):
    state: str | None = None
    outcome: Literal["started", "busy", "attached", "queued", "refused"] | None = None
    steps: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    order: list[str] | None = Field(None, max_length=MAX_ENTRIES)
    outputs: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    args: dict[str, dict[str, JsonValue]] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    params: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    error: str | None = Field(None, description="Text the run's error contains (a substring).")
    no_error: bool = Field(False, description="The run has no error at all.")


class Case(_Strict):
    name: str = Field(min_length=1, max_length=200)
    params: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    alert: dict[str, JsonValue] | None = None
    requested_by: str = Field("cli:rehearsal", max_length=200)
    trigger: Literal["cli", "slack", "alertmanager", "api"] = "cli"
    policy_data: dict[str, JsonValue] = Field(
        default_factory=dict, description="Merged over the policies' data (at data's root: {playbook: {...}})."
    )
    mocks: dict[str, Mock] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    votes: dict[str, list[VoteSpec]] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    confirm: dict[str, ConfirmSpec] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    locks: Locks = Locks()
    expect: Expect


class RehearsalFile(_Strict):
    playbook: str = Field(min_length=1, max_length=63)
    cases: list[Case] = Field(min_length=1, max_length=MAX_CASES)


@dataclass(frozen=True)
class Address:
    """`id`, `id[i]` (foreach item i), `call/child` (a child run's step), `undo:<addr>`, `fallback:<addr>`."""

    text: str
    kind: Literal["step", "undo", "fallback"]
    step: str
    item: int | None = None
    child: str | None = None

    @property
    def base(self) -> str:
        """The address without its foreach item: a mock without `[i]` applies to every item."""
        prefix = "" if self.kind == "step" else f"{self.kind}:"
        return prefix + self.step + (f"/{self.child}" if self.child else "")


def parse_address(text: str) -> Address:
    match = ADDRESS.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a step address (id, id[i], call/child_id, undo:<address>, fallback:<address>)"
        )
    kind, step, item, child = match.groups()
    return Address(text, kind or "step", step, int(item) if item is not None else None, child)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LoadedCase:
    case: Case
    line: int | None


@dataclass(frozen=True)
class LoadedFile:
    path: Path
    playbook: Playbook
    cases: list[LoadedCase]


def load_rehearsal(path: Path, catalog: Catalog) -> LoadedFile:
    """Read and check a test file against the playbook it names; RehearsalFileError otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RehearsalFileError(f"cannot read: {exc.strerror or exc}", path) from None
    if len(raw) > MAX_FILE_BYTES:
        raise RehearsalFileError(f"{len(raw)} bytes; a test file holds at most {MAX_FILE_BYTES}", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RehearsalFileError(f"not UTF-8 text: {exc.reason}", path) from None
    try:
        data, lines, duplicates = _parse_yaml(text, path)
    except PlaybookLoadErrors as exc:
        raise RehearsalFileError(exc.errors[0].message, path, exc.errors[0].line) from None
    if duplicates:
        raise RehearsalFileError(duplicates[0].message, path, duplicates[0].line)
    where = _Lines(lines)
    if _expanded_size(data, {}) > MAX_VALUES:
        raise RehearsalFileError(
            f"the document expands to more than {MAX_VALUES} values (YAML aliases repeat what they point to): "
            "write the values out", path, where(()),
        )
    if not isinstance(data, dict):
        raise RehearsalFileError("a test file holds one mapping: playbook: NAME, cases: [...]", path, where(()))
    try:
        parsed = RehearsalFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _allowed(loc[:-1])
            message = f"unknown key {loc[-1]!r}{suggestion(str(loc[-1]), allowed)} (allowed: {', '.join(allowed)})"
        elif err["type"] == "missing":
            message = f"missing required key {loc[-1]!r}"
        else:
            message = err["msg"]
        raise RehearsalFileError(f"{dotted(loc) or 'file'}: {message}", path, where(loc)) from None
    try:
        playbook = catalog.get(parsed.playbook).playbook
    except UnknownPlaybook as exc:
        raise RehearsalFileError(str(exc), path, where(("playbook",))) from None
    cases = []
    names: set[str] = set()
    for i, case in enumerate(parsed.cases):
        if case.name in names:
            raise RehearsalFileError(f"cases[{i}].name: {case.name!r} names two cases", path, where(("cases", i, "name")))
        names.add(case.name)
        for loc, message in _address_problems(case, playbook, catalog):
            raise RehearsalFileError(f"{dotted(('cases', i, *loc))}: {message}", path, where(("cases", i, *loc)))
        cases.append(LoadedCase(case, where(("cases", i))))
    return LoadedFile(path, playbook, cases)


def _expanded_size(value: Any, seen: dict[int, int]) -> int:
    """How many values the document holds with aliases expanded, counted without expanding them
    (an alias is the same Python object, so each is sized once)."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in seen:
        return seen[id(value)]
    seen[id(value)] = MAX_VALUES + 1  # a cycle (a recursive alias) counts as too big
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    total = 1
    for item in items:
        total += _expanded_size(item, seen)
        if total > MAX_VALUES:
            break
    seen[id(value)] = total
    return total


class _Lines:
    def __init__(self, lines: dict[Loc, int]) -> None:
        self.lines = lines

    def __call__(self, loc: tuple[Any, ...]) -> int | None:
        for end in range(len(loc), -1, -1):
            if tuple(loc[:end]) in self.lines:
                return self.lines[tuple(loc[:end])]
        return None


def _allowed(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at a pydantic location accepts (for 'unknown key' messages)."""
    model: Any = RehearsalFile
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        for inner in getattr(model, "__args__", ()):  # list[Case], dict[str, Mock], X | None
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
    return list(getattr(model, "model_fields", {}))


def step_tree(playbook: Playbook) -> dict[str, Any]:
    """Every addressable id: leaf steps (their Step), parallel groups, on_failure steps; foreach
    groups (format v1.1, when present: an item with `foreach` and `steps`) and their inner steps."""
    ids: dict[str, Any] = {}
    for item in [*playbook.steps, *playbook.on_failure]:
        ids[item.id] = item
        if isinstance(item, ParallelGroup):
            ids.update({s.id: s for s in item.parallel})
        for inner in _foreach_steps(item):
            ids[inner.id] = inner
    return ids


def _foreach_steps(item: Any) -> list[Any]:
    """A foreach group's inner steps. TODO(foreach): the foreach helper's model is not merged yet;
    this reads its DESIGN shape (`foreach:` and `steps:`) so addresses `id[i]` work once it is."""
    if getattr(item, "foreach", None) is None:
        return []
    return list(getattr(item, "steps", None) or [])


def foreach_ids(playbook: Playbook) -> set[str]:
    """Ids that may take `[i]`: foreach groups and the steps inside them."""
    out: set[str] = set()
    for item in playbook.steps:
        inner = _foreach_steps(item)
        if inner:
            out.add(item.id)
            out.update(s.id for s in inner)
    return out


def _address_problems(case: Case, playbook: Playbook, catalog: Catalog) -> list[tuple[Loc, str]]:
    tree = step_tree(playbook)
    looped = foreach_ids(playbook)
    problems: list[tuple[Loc, str]] = []

    def check(loc: Loc, text: str, *, state_of_group: bool = False, mockable: bool = False) -> None:
        try:
            addr = parse_address(text)
        except ValueError as exc:
            problems.append((loc, str(exc)))
            return
        known = tree.get(addr.step)
        if known is None:
            problems.append((loc, f"no step {addr.step!r} in playbook {playbook.name!r}"
                             f"{suggestion(addr.step, sorted(tree))}"))
            return
        if addr.item is not None and addr.step not in looped:
            problems.append((loc, f"{text!r}: [i] addresses a foreach item, and {addr.step!r} is not in a foreach"))
            return
        if addr.child is not None:
            problems.append((loc, _child_problem(addr, known, catalog)))
            return
        if isinstance(known, ParallelGroup) and (state_of_group or mockable or addr.kind != "step"):
            problems.append((loc, f"{addr.step!r} is a parallel group: name one of its steps"))
            return
        if addr.kind == "undo" and isinstance(known, Step) and known.compensate is None:
            problems.append((loc, f"step {addr.step!r} has no compensate:, so there is no {text!r}"))
        elif addr.kind == "fallback" and isinstance(known, Step) and known.fallback is None:
            problems.append((loc, f"step {addr.step!r} has no fallback:, so there is no {text!r}"))
        elif mockable and _is_core(_action_at(known, addr)):
            problems.append((loc, f"{text!r} runs {_action_at(known, addr)}: core.* actions are never mocked"))

    for key in case.mocks:
        check(("mocks", key), key, mockable=True)
    for key, votes in case.votes.items():
        check(("votes", key), key)
        if len(votes) > MAX_VOTES:
            problems.append((("votes", key), f"at most {MAX_VOTES} votes per step"))
    for key in case.confirm:
        check(("confirm", key), key)
    ex = case.expect
    for key in ex.steps:
        check(("expect", "steps", key), key, state_of_group=True)
    for i, key in enumerate(ex.order or []):
        check(("expect", "order", i), key)
    for key in ex.outputs:
        check(("expect", "outputs", key), key, state_of_group=True)
    for key in ex.args:
        check(("expect", "args", key), key, state_of_group=True)
    for key in ex.params:
        if key not in playbook.params:
            problems.append((("expect", "params", key), f"playbook {playbook.name!r} has no param {key!r}"
                             f"{suggestion(key, sorted(playbook.params))}"))
    if ex.error is not None and ex.no_error:
        problems.append((("expect", "no_error"), "say error: TEXT or no_error: true, not both"))
    return problems


def _action_at(step: Any, addr: Address) -> str:
    if addr.kind == "undo":
        return step.compensate.action
    if addr.kind == "fallback":
        return step.fallback.action
    return str(getattr(step, "action", ""))


def _is_core(action: str) -> bool:
    return action.startswith("core.")


def _child_problem(addr: Address, known: Any, catalog: Catalog) -> str:
    """`call/child_id`: the call must be a playbook.run step naming a playbook in the catalog.
    TODO(sub-playbooks): playbook.run is being built; child runs are not matched by the runner yet."""
    if getattr(known, "action", None) != "playbook.run":
        return f"{addr.text!r}: {addr.step!r} is not a playbook.run step, so it has no child steps"
    return f"{addr.text!r}: child-run addresses are not supported by this build of the rehearsal runner yet"


def rehearsal_files(target: Path) -> list[Path]:
    """The `*.test.yaml`/`*.test.yml` directly in a directory, or the one file given."""
    from bot.playbook.loader import is_rehearsal_file

    if target.is_file():
        return [target]
    return sorted(p for p in target.iterdir() if is_rehearsal_file(p) and not p.name.startswith(".") and p.is_file())
