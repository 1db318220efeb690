"""Read playbook YAML into validated, hashed snapshots; every problem names its file, line and step.

A playbook is loaded whole or not at all: YAML syntax, the schema (`model.py`) and the static
checks (`checks.py`) all run here, so `validate`, the server and the CLI refuse the same files
with the same messages.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Callable, Iterable, Iterator, Mapping, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Tag, ValidationError

from bot.actions.base import ActionSpec
from bot.playbook.checks import RUN_ACTION, Loc, check_playbook, dotted, error_text, registered_actions, suggestion
from bot.playbook.model import ForeachGroup, ParallelGroup, Playbook
from bot.playbook.templating import MARKER_CHARS, is_template

PLAYBOOK_SUFFIXES = (".yaml", ".yml")
REHEARSAL_SUFFIXES = (".test.yaml", ".test.yml")  # rehearsal files (`playbook-bot test`) beside the playbooks


def is_rehearsal_file(path: Path) -> bool:
    return path.name.endswith(REHEARSAL_SUFFIXES)


class PlaybookError(ValueError):
    """One problem in a playbook, located as `file:line: step 'id': message` so editors can jump to it."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 step: str | None = None) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line
        self.step = step
        super().__init__(message)

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line else f"{self.path}: "
        return where + (f"step {self.step!r}: " if self.step else "") + self.message


class PlaybookLoadErrors(PlaybookError):
    """Every problem found in a file or directory at once, so one edit-validate round fixes them all."""

    def __init__(self, errors: Sequence[PlaybookError], *, path: str | Path | None = None,
                 catalog: Catalog | None = None) -> None:
        if not errors:
            raise ValueError("PlaybookLoadErrors needs at least one error")
        self.errors: tuple[PlaybookError, ...] = tuple(errors)
        self.catalog = catalog if catalog is not None else Catalog()
        only = self.errors[0] if len(self.errors) == 1 else None
        super().__init__(
            only.message if only else f"{len(self.errors)} problems",
            path=path,
            line=only.line if only else None,
            step=only.step if only else None,
        )

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        return f"{self.path or 'playbooks'}: {len(self.errors)} problems:\n" + "\n".join(
            f"  {error}" for error in self.errors
        )


class UnknownPlaybook(KeyError):
    """A name no loaded playbook has; the message lists the known ones, the fix is usually a typo."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(name)

    def __str__(self) -> str:
        message = f"unknown playbook {self.name!r}" + suggestion(self.name, list(self.known))
        if self.known:
            return message + f" (known: {', '.join(self.known)})"
        return message + " (no playbooks are loaded)"


@dataclass(frozen=True)
class LoadedPlaybook:
    """A validated playbook with where it came from and the hash runs record (what ran is what it names)."""

    playbook: Playbook
    path: Path
    hash: str
    warnings: tuple[str, ...] = ()  # `path:line: step: message`, each worth fixing; the playbook loads


def _none_retired(name: str, content_hash: str) -> bool:
    return False


class Catalog:
    """Loaded playbooks by name: a read-only mapping whose `get` explains a miss instead of returning None."""

    def __init__(self, playbooks: Iterable[LoadedPlaybook] = ()) -> None:
        self._by_name: dict[str, LoadedPlaybook] = {}
        # (name, content hash) -> whether that version was replaced moments ago and is still admitted
        # (bot/playbook/reload.py: replicas reload on their own clocks); a static catalog has none.
        self.retired: Callable[[str, str], bool] = _none_retired
        for loaded in playbooks:
            name = loaded.playbook.name
            if name in self._by_name:
                raise ValueError(f"playbook {name!r} is in both {self._by_name[name].path} and {loaded.path}")
            self._by_name[name] = loaded

    def get(self, name: str) -> LoadedPlaybook:
        """The playbook called `name`; raises UnknownPlaybook listing the known names."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownPlaybook(name, self._by_name) from None

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

    def warnings(self) -> list[str]:
        """Every loaded playbook's warnings (worth fixing; they load anyway)."""
        return [warning for loaded in self.values() for warning in loaded.warnings]

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def values(self) -> list[LoadedPlaybook]:
        return [self._by_name[name] for name in self.names()]

    def items(self) -> list[tuple[str, LoadedPlaybook]]:
        return [(name, self._by_name[name]) for name in self.names()]

    def __repr__(self) -> str:
        return f"Catalog({self.names()})"


def load_file(path: str | Path, *, actions: Mapping[str, ActionSpec] | None = None) -> LoadedPlaybook:
    """Load and check one playbook file; raises PlaybookLoadErrors (a PlaybookError) listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PlaybookLoadErrors([PlaybookError(f"not UTF-8 text: {exc.reason}", path=path)], path=path) from None
    except OSError as exc:
        raise PlaybookLoadErrors([PlaybookError(f"cannot read: {exc.strerror or exc}", path=path)], path=path) from None
    return load_text(text, path=path, actions=actions)


def load_text(text: str, *, path: str | Path = "<playbook>",
              actions: Mapping[str, ActionSpec] | None = None) -> LoadedPlaybook:
    """Load a playbook from YAML text (tests, Slack uploads); `path` only labels the messages."""
    path = Path(path)
    data, lines, errors = _parse_yaml(text, path)
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        errors.append(PlaybookError(
            f"a playbook file holds one YAML mapping (name:, steps:, ...), not {kind}", path=path, line=lines.get(()),
        ))
        raise PlaybookLoadErrors(errors, path=path)
    locate = _Locator(data, lines, path)
    for loc in _reserved_characters(data, ()):
        _, where = locate.field(loc)
        errors.append(locate(loc, f"{where}: the characters U+E000 and U+E001 are reserved for secret references "
                             "(what secret() renders to); remove them"))
    duplicates = _duplicate_step_ids(data, lines)
    errors += [locate(loc, message) for loc, message in duplicates]
    playbook: Playbook | None = None
    try:
        playbook = Playbook.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            if not err["loc"] and duplicates:
                continue  # the model's own duplicate-id check; reported above with lines
            errors.append(_from_pydantic(err, locate))
    if playbook is not None:
        problems = check_playbook(playbook, registered_actions() if actions is None else actions)
        errors += [locate(problem.loc, problem.message) for problem in problems if not problem.warning]
        warnings = tuple(str(locate(problem.loc, problem.message)) for problem in problems if problem.warning)
    if errors:
        errors.sort(key=lambda error: error.line or 0)
        raise PlaybookLoadErrors(errors, path=path)
    assert playbook is not None
    return LoadedPlaybook(playbook=playbook, path=path, hash=playbook.content_hash(), warnings=warnings)


def load_directory(path: str | Path, *, actions: Mapping[str, ActionSpec] | None = None) -> Catalog:
    """Every `*.yaml`/`*.yml` directly in `path` (not subdirectories, dotfiles or `*.test.yaml`; a file path loads
    just that file). Raises PlaybookLoadErrors with every problem in every file, and duplicate names;
    its `.catalog` holds the playbooks that did load, for callers that choose to serve those."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p for p in path.iterdir()
            if p.suffix in PLAYBOOK_SUFFIXES and not p.name.startswith(".") and not is_rehearsal_file(p) and p.is_file()
        )
    else:
        raise PlaybookLoadErrors([PlaybookError("no such file or directory", path=path)], path=path)
    actions = registered_actions() if actions is None else actions
    errors: list[PlaybookError] = []
    loaded: dict[str, LoadedPlaybook] = {}
    broken: dict[str, Path] = {}  # playbooks that do not load, by the name they give: what a call may mean
    for file in files:
        try:
            playbook = load_file(file, actions=actions)
        except RecursionError:  # (a file its checks cannot follow: its own error, never the directory's)
            errors.append(PlaybookError(f"nested past what the checks can follow (at most {YAML_MAX_DEPTH} levels)",
                                        path=file))
            continue
        except PlaybookLoadErrors as exc:
            errors.extend(exc.errors)
            if name := declared_name(file):
                broken.setdefault(name, file)
            continue
        name = playbook.playbook.name
        if name in loaded:
            line = _name_line(file)
            errors.append(PlaybookError(
                f"playbook name {name!r} is already used by {loaded[name].path}:{_name_line(loaded[name].path)}",
                path=file, line=line,
            ))
            continue
        loaded[name] = playbook
    if path.is_file() and any(_calls(lp.playbook) for lp in loaded.values()):
        # One file: its sub-playbooks are its neighbours, which must load (quietly) to be found.
        try:
            neighbours = load_directory(path.parent, actions=actions)
        except PlaybookLoadErrors as exc:
            neighbours = exc.catalog
        everything = {lp.playbook.name: lp for lp in neighbours.values() if lp.path.resolve() != path.resolve()}
        call_errors, bad = _check_calls({**everything, **loaded}, _broken_names(path.parent, everything))
        errors += [error for error in call_errors if error.path is not None and error.path.resolve() == path.resolve()]
    else:
        call_errors, bad = _check_calls(loaded, broken)
        errors += call_errors
    loaded = {name: lp for name, lp in loaded.items() if name not in bad}
    catalog = Catalog(loaded.values())
    if errors:
        raise PlaybookLoadErrors(errors, path=path, catalog=catalog)
    return catalog


# -- YAML with line numbers ---------------------------------------------------------------------


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[Loc, int], list[PlaybookError]]:
    """The document, the line of every key and list item, and duplicate-key errors (YAML drops them silently)."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # the reader refuses control characters right here
        node = loader.get_single_node()
        lines: dict[Loc, int] = {}
        duplicates: list[tuple[Loc, str, int]] = []
        if node is not None:
            if problem := _too_big(node):
                raise PlaybookLoadErrors([PlaybookError(problem, path=path, line=node.start_mark.line + 1)], path=path)
            lines[()] = node.start_mark.line + 1
            _walk(loader, node, (), lines, duplicates, set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"invalid YAML: {exc.problem or exc.context or 'cannot parse'}"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise PlaybookLoadErrors(
            [PlaybookError(message, path=path, line=mark.line + 1 if mark else None)], path=path
        ) from None
    except yaml.reader.ReaderError as exc:  # a control character: it has a position, not a mark
        line = text.count("\n", 0, exc.position) + 1
        message = f"invalid YAML: character #x{exc.character:04x} is not allowed: {exc.reason}"
        raise PlaybookLoadErrors([PlaybookError(message, path=path, line=line)], path=path) from None
    except yaml.YAMLError as exc:
        raise PlaybookLoadErrors([PlaybookError(f"invalid YAML: {exc}", path=path)], path=path) from None
    except RecursionError:  # (the YAML composer recurses per level: a file of 1,000 '[' got here)
        problem = f"nested more than the YAML reader can follow; a playbook nests at most {YAML_MAX_DEPTH} levels"
        raise PlaybookLoadErrors([PlaybookError(problem, path=path)], path=path) from None
    finally:
        if loader is not None:
            loader.dispose()
    locate = _Locator(data if isinstance(data, dict) else {}, lines, path)
    return data, lines, [locate(loc, message, line=line) for loc, message, line in duplicates]


YAML_MAX_DEPTH = 64  # levels of a playbook's YAML
YAML_MAX_NODES = 200_000  # values a playbook's YAML expands to, aliases counted each time they are used


def _too_big(root: yaml.Node) -> str | None:
    """Why a document is refused before anything expands it, or None. Red team: nine lines of
    anchors, each aliasing the one before ten times, expanded to 10^7 values, 15 s and 520 MB in
    every front door and worker that reloaded the directory. Each node is measured once (size, and
    height: an alias used deep down nests what it points to that much deeper, review)."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (size, height), aliases measured once

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > YAML_MAX_DEPTH:
            raise _TooBig(f"nests more than {YAML_MAX_DEPTH} levels")
        if id(node) not in measured:
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            else:
                children = []
            size, height = 1, 1
            for child in children:
                child_size, child_height = measure(child, depth + 1)
                size, height = size + child_size, max(height, child_height + 1)
                if size > YAML_MAX_NODES:
                    raise _TooBig(f"expands to more than {YAML_MAX_NODES:,} values (aliases count each time they are used)")
            measured[id(node)] = (size, height)
        size, height = measured[id(node)]
        if depth + height - 1 > YAML_MAX_DEPTH:
            raise _TooBig(f"nests more than {YAML_MAX_DEPTH} levels")
        return size, height

    try:
        measure(root, 1)
    except _TooBig as exc:
        return f"refused: the YAML {exc}"
    return None


class _TooBig(Exception):
    pass


def _walk(loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, lines: dict[Loc, int],
          duplicates: list[tuple[Loc, str, int]], seen: set[int]) -> None:
    if id(node) in seen:  # an alias: its lines are the anchor's, and walking it again could explode
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first:
                duplicates.append((loc + (key,), f"duplicate key {key!r} (also at line {first[key]}); "
                                   "YAML would silently keep only the last one", line))
            else:
                first[key] = line
                lines[loc + (key,)] = line
            _walk(loader, value_node, loc + (key,), lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[loc + (index,)] = item.start_mark.line + 1
            _walk(loader, item, loc + (index,), lines, duplicates, seen)
    elif node.tag == "tag:yaml.org,2002:float" and not math.isfinite(loader.construct_object(node)):
        # .nan / .inf: no JSON holds them (a step's args, its records); quoted, they are text
        duplicates.append((loc, f"{node.value} is not a JSON number (nan and infinities are not); quote it "
                                f"for the text {node.value!r}", node.start_mark.line + 1))


def _name_line(path: Path) -> int | None:
    try:
        _, lines, _ = _parse_yaml(path.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, PlaybookError):
        return None
    return lines.get(("name",))


# -- locating problems ---------------------------------------------------------------------------


class _Locator:
    """Turns a document location into a PlaybookError with the YAML line and the step's id."""

    def __init__(self, data: dict[str, Any], lines: dict[Loc, int], path: Path) -> None:
        self.data = data
        self.lines = lines
        self.path = path

    def line(self, loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):  # a missing key or an alias: the nearest enclosing line
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

    def step(self, loc: Loc) -> tuple[str | None, int]:
        """The innermost step the location is in (its id, or None if it has none) and where its fields start."""
        if len(loc) < 2 or loc[0] not in ("steps", "on_failure") or not isinstance(loc[1], int):
            return None, 0
        item = _index(self.data.get(loc[0]), loc[1])
        start = 2
        if len(loc) >= 4 and loc[2] in ("parallel", "steps") and isinstance(loc[3], int) and isinstance(item, dict):
            item = _index(item.get(loc[2]), loc[3])  # a parallel group's step, or a foreach group's
            start = 4
        step_id = item.get("id") if isinstance(item, dict) else None
        return (step_id, start) if isinstance(step_id, str) else (None, 0)

    def __call__(self, loc: Loc, message: str, *, line: int | None = None) -> PlaybookError:
        step_id, _ = self.step(loc)
        return PlaybookError(message, path=self.path, line=line or self.line(loc), step=step_id)

    def field(self, loc: Loc) -> tuple[str | None, str]:
        """(step id, the location as the author reads it, relative to that step)."""
        step_id, start = self.step(loc)
        return step_id, dotted(loc[start:])


def _index(value: Any, index: int) -> Any:
    return value[index] if isinstance(value, list) and 0 <= index < len(value) else None


def _from_pydantic(err: Mapping[str, Any], locate: _Locator) -> PlaybookError:
    raw_loc: tuple[Any, ...] = tuple(err["loc"])
    loc = _without_tags(raw_loc)
    kind = err["type"]
    if kind == "invalid_key" or (len(loc) >= 2 and loc[-1] == "[key]"):  # `on:`, `yes:` or `1:` as a key
        loc = loc[:-1] if kind == "invalid_key" else loc[:-2]
        step_id, parent = locate.field(loc)
        message = (f"key {err.get('input')!r} is not a string; quote it (YAML reads unquoted yes/no/on/off "
                   "as booleans and digits as numbers)")
    elif kind in ("extra_forbidden", "missing") and loc:
        key = loc[-1]
        step_id, parent = locate.field(loc[:-1])
        if kind == "extra_forbidden":
            allowed = _allowed_keys(raw_loc[:-1])
            message = f"unknown key {key!r}"
            if allowed:
                message += f"{suggestion(str(key), allowed)} (allowed: {', '.join(allowed)})"
        else:
            message = f"missing required key {key!r}"
    else:
        step_id, parent = locate.field(loc)
        message = error_text(err)
    if parent:
        message = f"{parent}: {message}"
    return PlaybookError(message, path=locate.path, line=locate.line(loc), step=step_id)


def _without_tags(loc: tuple[Any, ...]) -> Loc:
    """Drop the union tag pydantic puts after `steps.<i>` (`step`/`parallel`/`foreach`): it is no key in the YAML."""
    if len(loc) >= 3 and loc[0] == "steps" and isinstance(loc[1], int) and loc[2] in ("step", "parallel", "foreach"):
        return loc[:2] + loc[3:]
    return loc


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at a (tagged) pydantic location accepts, as written in YAML (`with`, not `with_`)."""
    tp: Any = Playbook
    for part in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) in (Union, UnionType):
            tagged = {_tag(arg): arg for arg in get_args(tp)}
            if part not in tagged:
                return []
            tp = tagged[part]
        else:
            return []
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [field.alias or name for name, field in tp.model_fields.items()]
    return []


def _strip(tp: Any) -> Any:
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType) and NoneType in get_args(tp) and len(get_args(tp)) == 2:
            tp = next(arg for arg in get_args(tp) if arg is not NoneType)
        else:
            return tp


def _tag(tp: Any) -> str | None:
    if get_origin(tp) is Annotated:
        return next((m.tag for m in typing.get_args(tp)[1:] if isinstance(m, Tag)), None)
    return None


def _reserved_characters(value: Any, loc: Loc, seen: set[int] | None = None) -> list[Loc]:
    """Where strings (keys too) hold U+E000/U+E001: those are what secret() renders to, so a
    playbook that holds them itself could forge a secret reference."""
    seen = set() if seen is None else seen
    found: list[Loc] = []
    if isinstance(value, str):
        if any(ch in value for ch in MARKER_CHARS):
            found.append(loc)
    elif isinstance(value, (dict, list)) and id(value) not in seen:  # an alias is checked once
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and any(ch in key for ch in MARKER_CHARS):
                found += _reserved_characters(key, loc + (key,), seen)
            found += _reserved_characters(item, loc + (key,), seen)
    return found


def _duplicate_step_ids(data: dict[str, Any], lines: dict[Loc, int]) -> list[tuple[Loc, str]]:
    """Every repeated step id, at the repeat, with the line of the first: the model only names one."""
    steps = data.get("steps")
    if not isinstance(steps, list):
        return []
    on_failure = data.get("on_failure")
    listed = [("steps", i, item) for i, item in enumerate(steps)]
    listed += [("on_failure", i, item) for i, item in enumerate(on_failure if isinstance(on_failure, list) else [])]
    first: dict[str, Loc] = {}
    found: list[tuple[Loc, str]] = []
    for where, i, item in listed:
        if not isinstance(item, dict):
            continue
        entries: list[tuple[Loc, Any]] = [((where, i), item)]
        for key in ("parallel", "steps"):  # a parallel group's steps, a foreach group's
            if isinstance(item.get(key), list):
                entries += [((where, i, key, j), member) for j, member in enumerate(item[key])]
        for loc, entry in entries:
            step_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(step_id, str):
                continue
            if step_id in first:
                where = lines.get(first[step_id])
                also = f"line {where}" if where else dotted(first[step_id])
                found.append((loc + ("id",), f"duplicate step id {step_id!r} (first used at {also}); step ids must be unique"))
            else:
                first[step_id] = loc + ("id",)
    return found



# -- sub-playbooks across files -----------------------------------------------------------------


def _calls(playbook: Playbook) -> list[tuple[str, Loc]]:
    """Every `playbook.run` step's literal child name, with where `with.name` sits."""
    located: list[tuple[Any, Loc]] = []
    for i, item in enumerate(playbook.steps):
        if isinstance(item, ParallelGroup):
            located += [(step, ("steps", i, "parallel", j)) for j, step in enumerate(item.parallel)]
        elif isinstance(item, ForeachGroup):
            located += [(step, ("steps", i, "steps", j)) for j, step in enumerate(item.steps)]
        else:
            located.append((item, ("steps", i)))
    located += [(step, ("on_failure", i)) for i, step in enumerate(playbook.on_failure)]
    found: list[tuple[str, Loc]] = []
    for step, loc in located:
        name = step.with_.get("name") if step.action == RUN_ACTION else None
        if isinstance(name, str) and not is_template(name):  # a template is refused by the checks already
            found.append((name, loc + ("with", "name")))
    return found


def child_names(playbook: Playbook) -> list[str]:
    """The sub-playbooks `playbook` may call (its `playbook.run` steps' names), each once."""
    return sorted({name for name, _ in _calls(playbook)})


def _call_error(loaded: LoadedPlaybook, loc: Loc, message: str) -> PlaybookError:
    try:
        data, lines, _ = _parse_yaml(loaded.path.read_text(encoding="utf-8"), loaded.path)
    except (OSError, UnicodeDecodeError, PlaybookError):
        return PlaybookError(message, path=loaded.path)
    return _Locator(data if isinstance(data, dict) else {}, lines, loaded.path)(loc, message)


def declared_name(path: Path) -> str | None:
    """The `name:` a playbook file gives, read as far as its YAML goes (None: it gives none)."""
    try:  # (through _parse_yaml: a file refused as too big is not expanded here either)
        data, _, _ = _parse_yaml(path.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, PlaybookError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _broken_names(directory: Path, loaded: Mapping[str, LoadedPlaybook]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for file in sorted(directory.iterdir()):
        if file.suffix in PLAYBOOK_SUFFIXES and not file.name.startswith(".") and file.is_file():
            name = declared_name(file)
            if name and name not in loaded:
                found.setdefault(name, file)
    return found


def _check_calls(
    loaded: Mapping[str, LoadedPlaybook], broken: Mapping[str, Path] | None = None
) -> tuple[list[PlaybookError], set[str]]:
    """Sub-playbooks must exist and must not call back into themselves (directly or through others).
    Returns the errors and the playbooks that cannot run: those, and every playbook calling one."""
    graph = {name: _calls(lp.playbook) for name, lp in loaded.items()}
    errors: list[PlaybookError] = []
    bad: set[str] = set()
    known = sorted(loaded)
    for name, calls in graph.items():
        for child, loc in calls:
            if child not in loaded and child in (broken or {}):
                errors.append(_call_error(loaded[name], loc, f"with.name: playbook {child!r} ({(broken or {})[child]}) "
                                          "does not load (see its errors), so neither can this playbook"))
                bad.add(name)
            elif child not in loaded:
                listed = f" (known: {', '.join(known)})" if known else ""
                errors.append(_call_error(loaded[name], loc, f"with.name: unknown playbook {child!r}"
                                          f"{suggestion(child, known)}{listed}"))
                bad.add(name)
    for cycle in _cycles({name: [child for child, _ in calls if child in loaded] for name, calls in graph.items()}):
        chain = " → ".join([*cycle, cycle[0]])
        for here, there in zip(cycle, [*cycle[1:], cycle[0]]):
            loc = next(loc for child, loc in graph[here] if child == there)
            errors.append(_call_error(loaded[here], loc, f"with.name: {chain} is a cycle of sub-playbooks: each run "
                                      "would start the next without end; break the cycle"))
        bad.update(cycle)
    changed = True
    while changed:
        changed = False
        for name, calls in graph.items():
            failing = next((child for child, _ in calls if child in bad and child in loaded), None)
            if name not in bad and failing is not None:
                loc = next(loc for child, loc in calls if child == failing)
                errors.append(_call_error(loaded[name], loc, f"with.name: {failing!r} cannot run (see its errors), "
                                          "so neither can this playbook"))
                bad.add(name)
                changed = True
    return errors, bad


def _cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Each elementary cycle reachable in a depth-first walk, once (as first met)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    done: set[str] = set()

    def walk(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node):]
            if frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                found.append(cycle)
            return
        if node in done:
            return
        stack.append(node)
        for child in sorted(set(graph.get(node, []))):
            walk(child, stack)
        stack.pop()
        done.add(node)

    for start in sorted(graph):
        walk(start, [])
    return found


def unloaded_names(directory: str | Path, catalog: Catalog) -> set[str]:
    """Names that files in `directory` declare but `catalog` lacks: playbooks there that do not load."""
    directory = Path(directory)
    return set(_broken_names(directory, dict(catalog.items()))) if directory.is_dir() else set()
