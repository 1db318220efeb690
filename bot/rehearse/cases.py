"""Rehearsal files (`*.test.yaml`): what a case may say, read with the line of every key.

A test file is hostile input like a playbook: unknown keys, unknown step addresses and oversized
lists are refused with the file and line, before anything runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from bot.playbook.checks import RUN_ACTION, Loc, dotted, suggestion
from bot.playbook.loader import Catalog, PlaybookLoadErrors, UnknownPlaybook, _parse_yaml
from bot.playbook.model import ForeachGroup, ParallelGroup, Playbook, Step

MAX_CASES = 200
MAX_VOTES = 20  # per step
MAX_ENTRIES = 500  # mocks, expectations, held locks: per case
MAX_FILE_BYTES = 1_000_000
_ID = r"[a-z_][a-z0-9_-]*"
_SEGMENT = rf"{_ID}(?:\[\d{{1,4}}\](?:\.{_ID})?)?"
ADDRESS = re.compile(rf"^(?:(undo|fallback):)?({_SEGMENT})(?:/({_SEGMENT}))?$")
SEGMENT = re.compile(rf"^({_ID})(?:\[(\d{{1,4}})\](?:\.({_ID}))?)?$")
_ITEM_PREFIX = re.compile(rf"(^|[:/]){_ID}\[\d+\]\.")


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
    """An answer to a core.confirm step: `choice` (one of its choices) or `value` (what its `input:`
    asks for), sent as `by` would send it, once the step waits."""

    by: str = Field(min_length=1, max_length=200)
    choice: str | None = Field(None, max_length=1000)
    value: str | int | float | None = None
    reason: str = Field("", max_length=1000)
    groups: list[str] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _one_answer(self) -> ConfirmSpec:
        if (self.choice is None) == (self.value is None):
            raise ValueError("give the answer as choice: (one of the step's choices) or value: (for its input:), one of them")
        return self

    @property
    def answer(self) -> str:
        """As a person types it (the step checks it against its choices or input)."""
        given = self.choice if self.choice is not None else self.value
        return given if isinstance(given, str) else json.dumps(given)


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
    trigger: Literal["cli", "slack", "alertmanager", "api", "schedule", "grafana", "pagerduty", "opsgenie"] = Field("cli", description=(
        "schedule: a firing of one of the playbook's schedules, requested by `schedule` with its proof."
    ))
    policy_data: dict[str, JsonValue] = Field(
        default_factory=dict, description="Merged over the policies' data (at data's root: {playbook: {...}})."
    )
    mocks: dict[str, Mock] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    votes: dict[str, list[VoteSpec]] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    confirm: dict[str, ConfirmSpec] = Field(default_factory=dict, max_length=MAX_ENTRIES)
    locks: Locks = Locks()
    expect: Expect

    @model_validator(mode="before")
    @classmethod
    def _scheduled(cls, data: Any) -> Any:
        """A scheduled run is requested by `schedule`, whoever the case would otherwise name."""
        if isinstance(data, dict) and data.get("trigger") == "schedule":
            if data.get("requested_by", "schedule") != "schedule":
                raise ValueError("a trigger: schedule case is requested by schedule (leave requested_by out)")
            return {**data, "requested_by": "schedule"}
        return data


class RehearsalFile(_Strict):
    playbook: str = Field(min_length=1, max_length=63)
    cases: list[Case] = Field(min_length=1, max_length=MAX_CASES)


@dataclass(frozen=True)
class Address:
    """`[undo:|fallback:][call/]path`: `path` is a step (`drain`), a foreach group (`roll`), an item
    (`roll[2]`) or an item's step (`roll[2].drain`, also written `drain[2]`); `call` is the
    playbook.run step whose child run holds `path`. After `resolve`, `path` and `call` are as the
    engine names them (the run's step ids)."""

    text: str
    kind: Literal["step", "undo", "fallback"]
    path: str
    call: str | None = None

    @property
    def target(self) -> str:
        """The address without undo:/fallback: (the step, in the run that holds it)."""
        return f"{self.call}/{self.path}" if self.call else self.path


def parse_address(text: str) -> Address:
    match = ADDRESS.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a step address (id, id[i], group[i].id, call/child_id, undo:<address>, fallback:<address>)"
        )
    kind, first, second = match.groups()
    call, path = (first, second) if second is not None else (None, first)
    return Address(text, kind or "step", path, call)  # type: ignore[arg-type]


def generic(address: str) -> str:
    """An item step's address without its item (`undo:roll[2].drain` -> `undo:drain`): the key of
    a mock, vote or answer given for every item."""
    return _ITEM_PREFIX.sub(r"\1", address)


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
    where = _Lines(lines)  # (an alias bomb was refused by _parse_yaml, before anything expanded it)
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
        problems, resolved = _address_problems(case, playbook, catalog)
        for loc, message in problems:
            raise RehearsalFileError(f"{dotted(('cases', i, *loc))}: {message}", path, where(("cases", i, *loc)))
        cases.append(LoadedCase(resolved, where(("cases", i))))
    return LoadedFile(path, playbook, cases)


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


Use = Literal["mock", "vote", "confirm", "state", "order", "output", "args"]
EVERY_ITEM_USES = ("mock", "vote", "confirm")  # where an item step may be named without [i]


@dataclass(frozen=True)
class _Target:
    node: Any  # Step | ParallelGroup | ForeachGroup, or the group of an item address (`roll[2]`)
    path: str  # as the engine names it
    item: bool = False  # `roll[2]`: a whole item
    every_item: bool = False  # an item step named without [i]
    group: ForeachGroup | None = None


class _Ids:
    """A playbook's addressable ids: steps, groups (and their steps), on_failure steps."""

    def __init__(self, playbook: Playbook) -> None:
        self.playbook = playbook
        self.top: dict[str, Any] = {}
        self.inner: dict[str, tuple[ForeachGroup, Step]] = {}
        for item in [*playbook.steps, *playbook.on_failure]:
            self.top[item.id] = item
            if isinstance(item, ParallelGroup):
                self.top.update({s.id: s for s in item.parallel})
            if isinstance(item, ForeachGroup):
                self.inner.update({s.id: (item, s) for s in item.steps})

    def resolve(self, segment: str) -> _Target:
        match = SEGMENT.match(segment)
        assert match is not None  # the address grammar matched it already
        name, index, inner = match.groups()
        pb = self.playbook.name
        if index is None:
            if name in self.top:
                return _Target(self.top[name], name)
            if name in self.inner:
                group, step = self.inner[name]
                return _Target(step, name, every_item=True, group=group)
            raise ValueError(f"no step {name!r} in playbook {pb!r}{suggestion(name, sorted([*self.top, *self.inner]))}")
        if inner is None:
            if isinstance(self.top.get(name), ForeachGroup):
                return _Target(self.top[name], segment, item=True, group=self.top[name])
            if name in self.inner:
                group, step = self.inner[name]
                return _Target(step, f"{group.id}[{index}].{name}", group=group)
            if name not in self.top:
                raise ValueError(f"no step {name!r} in playbook {pb!r}{suggestion(name, sorted([*self.top, *self.inner]))}")
            raise ValueError(f"{segment!r}: [i] addresses a foreach item, and {name!r} is not in a foreach")
        group = self.top.get(name)
        if not isinstance(group, ForeachGroup):
            raise ValueError(f"{segment!r}: {name!r} is not a foreach group of playbook {pb!r}, so it has no item steps")
        step = next((s for s in group.steps if s.id == inner), None)
        if step is None:
            raise ValueError(f"foreach {name!r} has no step {inner!r}{suggestion(inner, [s.id for s in group.steps])}")
        return _Target(step, segment, group=group)


def resolve(text: str, use: Use, playbook: Playbook, catalog: Catalog) -> Address:
    """The address as the engine names it, or ValueError saying what is wrong with it for this use."""
    addr = parse_address(text)
    call: _Target | None = None
    ids = _Ids(playbook)
    if addr.call is not None:
        call = ids.resolve(addr.call)
        if getattr(call.node, "action", None) != RUN_ACTION or call.item:
            raise ValueError(f"{text!r}: {addr.call!r} is not a playbook.run step, so it has no child steps")
        _usable(call, "mock" if call.every_item and use in EVERY_ITEM_USES else "order", addr.call)
        name = str(call.node.with_.get("name"))
        try:
            ids = _Ids(catalog.get(name).playbook)
        except UnknownPlaybook as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    target = ids.resolve(addr.path)
    _usable(target, use, text)
    node = target.node
    if addr.kind != "step":
        undoes = node.action == RUN_ACTION if isinstance(node, Step) else False
        if not isinstance(node, Step) or target.item:
            raise ValueError(f"{text!r}: {addr.kind}: names a step, and {addr.path!r} is a group or an item")
        if addr.kind == "undo" and node.compensate is None and not (undoes and use in ("state", "order")):
            raise ValueError(f"step {addr.path!r} has no compensate:, so there is no {text!r}")
        if addr.kind == "fallback" and node.fallback is None:
            raise ValueError(f"step {addr.path!r} has no fallback:, so there is no {text!r}")
    if use == "mock":
        action = _action_at(node, addr.kind)
        if action.startswith("core."):
            raise ValueError(f"{text!r} runs {action}: core.* actions are never mocked")
        if action == RUN_ACTION:
            raise ValueError(f"{text!r} runs a child run (playbook.run): mock its steps, as {target.path}/<child step id>")
    if use == "confirm" and getattr(node, "action", None) != "core.confirm":
        raise ValueError(f"{text!r} runs {getattr(node, 'action', 'a group')}: confirm: answers core.confirm steps")
    prefix = "" if addr.kind == "step" else f"{addr.kind}:"
    path = f"{call.path}/{target.path}" if call is not None else target.path
    return Address(prefix + path, addr.kind, target.path, call.path if call is not None else None)


def _usable(target: _Target, use: Use, text: str) -> None:
    node = target.node
    if isinstance(node, ParallelGroup):
        raise ValueError(f"{text!r}: {target.path!r} is a parallel group: name one of its steps")
    if target.every_item and use not in EVERY_ITEM_USES:
        group = target.group.id if target.group is not None else "?"
        raise ValueError(
            f"{text!r}: {target.path!r} runs once per item of foreach {group!r}: name one, as "
            f"{group}[0].{target.path} (or {target.path}[0])"
        )
    if (target.item or isinstance(node, ForeachGroup)) and use not in ("state", "output"):
        raise ValueError(f"{text!r} is a foreach {'item' if target.item else 'group'}: name one of its steps")


def _address_problems(case: Case, playbook: Playbook, catalog: Catalog) -> tuple[list[tuple[Loc, str]], Case]:
    """What is wrong with the case's addresses, and the case with every address as the engine names it."""
    problems: list[tuple[Loc, str]] = []

    def canon(loc: Loc, text: str, use: Use) -> str:
        try:
            return resolve(text, use, playbook, catalog).text
        except ValueError as exc:
            problems.append((loc, str(exc)))
            return text

    def keyed(field: str, given: dict[str, Any], use: Use, *outer: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in given.items():
            name = canon((*outer, field, key), key, use)
            if name in out:
                problems.append(((*outer, field, key), f"{key!r} names the same step as another key here ({name})"))
            out[name] = value
        return out

    mocks = keyed("mocks", case.mocks, "mock")
    votes = keyed("votes", case.votes, "vote")
    for key, given in case.votes.items():
        if len(given) > MAX_VOTES:
            problems.append((("votes", key), f"at most {MAX_VOTES} votes per step"))
    confirm = keyed("confirm", case.confirm, "confirm")
    ex = case.expect
    steps = keyed("steps", ex.steps, "state", "expect")
    order = [canon(("expect", "order", i), key, "order") for i, key in enumerate(ex.order)] if ex.order is not None else None
    outputs = keyed("outputs", ex.outputs, "output", "expect")
    args = keyed("args", ex.args, "args", "expect")
    for key in ex.params:
        if key not in playbook.params:
            problems.append((("expect", "params", key), f"playbook {playbook.name!r} has no param {key!r}"
                             f"{suggestion(key, sorted(playbook.params))}"))
    if ex.error is not None and ex.no_error:
        problems.append((("expect", "no_error"), "say error: TEXT or no_error: true, not both"))
    expect = ex.model_copy(update={"steps": steps, "order": order, "outputs": outputs, "args": args})
    return problems, case.model_copy(update={"mocks": mocks, "votes": votes, "confirm": confirm, "expect": expect})


def _action_at(step: Step, kind: str) -> str:
    if kind == "undo":
        return step.compensate.action if step.compensate is not None else RUN_ACTION
    if kind == "fallback":
        assert step.fallback is not None
        return step.fallback.action
    return step.action


def rehearsal_files(target: Path) -> list[Path]:
    """The `*.test.yaml`/`*.test.yml` directly in a directory, or the one file given."""
    from bot.playbook.loader import is_rehearsal_file

    if target.is_file():
        return [target]
    return sorted(p for p in target.iterdir() if is_rehearsal_file(p) and not p.name.startswith(".") and p.is_file())
