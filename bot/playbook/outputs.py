"""Which parts of each step's output a playbook's templates read, found statically.

A large output is kept out of the run's state (bot/actions/outputs.py); what later templates read
of it must stay. Every template of the playbook is parsed once, and each `steps.<id>.output.<path>`
it reads is noted. A read this cannot follow (the whole output, a computed key, `steps` itself)
needs the whole output, which a large one cannot give: the step then fails, saying so.

What a playbook's templates read is worked out once per playbook per worker (`shared_playbook`),
which also keeps the one parsed copy of the playbook its runs share.
"""

from __future__ import annotations

import hashlib
import json
import threading
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

from jinja2 import TemplateSyntaxError, nodes
from pydantic import BaseModel, Field

from bot.playbook.model import ForeachGroup, Playbook
from bot.playbook.templating import ENV, strings_in

RUN_OUTPUT_BUDGET = 1024 * 1024  # bytes of JSON a run keeps of all its outputs (state, status, its result)
Key = str | int | None  # None: a key computed at render time (`output[params.k]`, a slice)


class OutputNeeds(BaseModel):
    """What templates read of one step's output: `whole`, or only the values at `paths`."""

    whole: bool = False
    paths: list[list[str]] = Field(default_factory=list)

    def merged(self, other: OutputNeeds) -> OutputNeeds:
        if self.whole or other.whole:
            return OutputNeeds(whole=True)
        return OutputNeeds(paths=_unique([*self.paths, *other.paths]))


NOTHING = OutputNeeds()
WHOLE = OutputNeeds(whole=True)
# A mapping's attributes (items, keys, values, get, copy, ...): Jinja's `x.items` is the method even when
# x has a key "items" (attributes come before keys), and a method may read all of x.
DICT_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))


Needs = Mapping[str, OutputNeeds]
_MEMO: dict[str, tuple[Playbook | None, Needs | None, int]] = {}  # digest -> (kept playbook, needs, its JSON size)
_MEMO_LOCK = threading.Lock()  # workflow tasks of one worker run in several threads
MEMO_SIZE = 128
MEMO_TEXT_MAX = 256 * 1024  # a bigger playbook's needs are worked out each time, never kept
MEMO_KEYS_MAX = 1024  # path keys kept for one playbook (the shipped ones read 0-10): one that reads more is worked out each time
MEMO_PLAYBOOK_MAX = 16 * 1024  # JSON characters of a playbook whose parsed copy is kept (a bigger one: its needs only)
MEMO_PLAYBOOK_BYTES = 256 * 1024  # JSON characters of all the kept copies together (parsed, a few times that)


def output_needs(playbook: Playbook) -> Needs | None:
    """Step id (a foreach item's inner id) -> what is read of its output; None when a template
    reads `steps` as a whole (or by a computed id), so every output is needed whole."""
    return shared_playbook(playbook)[1]


def shared_playbook(playbook: Playbook) -> tuple[Playbook, Needs | None]:
    """This worker's one parsed copy of `playbook` (the same JSON, so the same playbook) and its
    output needs, remembered for every run that starts with it.

    Every run works out its needs as it starts (in workflow code), and parsing each template again
    was a third of a one-step run's workflow time in the alert storm (issue 15); each run's own
    parsed snapshot was most of what a run waiting on approval holds (11 of 76 KiB). Playbook
    models are frozen, and the needs are a mapping that refuses writes, so runs share them
    safely. The key is the digest of the playbook's whole JSON, never a name or hash a starter
    supplies. This runs before admission, for whatever snapshot anyone who can reach Temporal
    sends, so the memory is bounded by what it holds: digests, needs of few keys (a long chain of
    reads spelled in a small text still takes a string per key), and parsed copies up to a total
    JSON size. A kept copy is handed out only to a playbook equal to it: JSON does not tell every
    playbook apart (NaN dumps as null, a duration rounds to the millisecond), and the first
    start of a text, admitted or not, must not decide what later runs of it do."""
    text = playbook.model_dump_json(by_alias=True)
    if len(text) > MEMO_TEXT_MAX:
        return playbook, _output_needs(playbook, json.loads(text))
    key = hashlib.sha256(text.encode()).hexdigest()
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
    if hit is not None:
        kept = hit[0]
        return (kept if kept is not None and kept == playbook else playbook), hit[1]
    needs = _output_needs(playbook, json.loads(text))
    if needs is None or sum(len(path) + 1 for n in needs.values() for path in n.paths) <= MEMO_KEYS_MAX:
        kept, size = (playbook, len(text)) if len(text) <= MEMO_PLAYBOOK_MAX else (None, 0)
        with _MEMO_LOCK:
            if key not in _MEMO:  # (another thread may have just kept it)
                held = sum(entry[2] for entry in _MEMO.values())  # JSON size of the copies kept
                while _MEMO and (len(_MEMO) >= MEMO_SIZE or held + size > MEMO_PLAYBOOK_BYTES):
                    held -= _MEMO.pop(next(iter(_MEMO)))[2]  # the oldest go
                _MEMO[key] = (kept, needs, size)
    return playbook, needs


def _output_needs(playbook: Playbook, doc: Any) -> Needs | None:
    groups = {g.id: [s.id for s in g.steps] for g in playbook.steps if isinstance(g, ForeachGroup)}
    needs: dict[str, OutputNeeds] = {}

    def add(step_id: str, need: OutputNeeds) -> None:
        needs[step_id] = needs.get(step_id, NOTHING).merged(need)

    for source in strings_in(doc):
        try:
            tree = ENV.parse(source)
        except (TemplateSyntaxError, RecursionError):
            continue  # cannot render either: the playbook's checks report it
        for step_id, path in _reads(tree):
            if step_id is None:
                return None
            if step_id not in groups:
                add(step_id, _need(path))
            elif path is not None and len(path) >= 2 and not isinstance(path[0], str) and isinstance(path[1], str):
                # `steps.<group>.output[i].<inner>.<path>`: what is read of that inner step, in every item
                if path[1] in groups[step_id]:
                    add(path[1], _need(path[2:] or None))
            else:
                for inner in groups[step_id]:
                    add(inner, WHOLE)
    return MappingProxyType(needs)


def needs_of(needs: Needs | None, step_id: str) -> OutputNeeds:
    """A step's needs; a foreach item's step (`roll[2].drain`) reads as its inner id."""
    if needs is None:
        return WHOLE
    return needs.get(step_id.rpartition(".")[2] if "[" in step_id else step_id, NOTHING)


def kept(output: dict[str, Any], needs: OutputNeeds) -> dict[str, Any]:
    """The output with only what `needs` reads. A key the output lacks stays missing (a template
    reading it fails or tests `is defined` as it would have); a path that goes on past a value
    into its methods (`.items()`, `.upper()`, `[0]`) keeps that value whole."""
    if needs.whole:
        return output
    wholes: set[tuple[str, ...]] = set()
    shells: set[tuple[str, ...]] = set()  # mappings that must exist (a key under them is missing)
    for path in needs.paths:
        value: Any = output
        reached: list[str] = []
        for key in path:
            if isinstance(value, dict) and key in value:
                value = value[key]
                reached.append(key)
                continue
            if not isinstance(value, dict) or key in DICT_METHODS:
                wholes.add(tuple(reached))
            else:
                shells.add(tuple(reached))
            break
        else:
            wholes.add(tuple(reached))
    if () in wholes:
        return output
    wholes = {w for w in wholes if not any(w[: len(o)] == o for o in wholes if o != w)}
    out: dict[str, Any] = {}
    for shell in shells:
        if not any(shell[: len(w)] == w for w in wholes):
            _at(out, shell)
    for whole in wholes:
        value = output
        for key in whole:
            value = value[key]
        _at(out, whole[:-1])[whole[-1]] = value
    return out


def _at(out: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = out
    for key in path:
        node = node.setdefault(key, {})
    return node


def json_size(value: Any) -> int:
    """Bytes of canonical JSON, as the audit trail and Temporal's payloads measure it (near enough)."""
    return len(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def _need(path: list[Key] | None) -> OutputNeeds:
    """`None`: the whole output; else the literal keys up to the first index or computed key."""
    if path is None:
        return WHOLE
    literal: list[str] = []
    for key in path:
        if not isinstance(key, str):
            break
        literal.append(key)
    return OutputNeeds(paths=[literal]) if literal else WHOLE


def _reads(tree: nodes.Node) -> Iterator[tuple[str | None, list[Key] | None]]:
    """(step id, path under its output) for each `steps...` read: path None is the whole output;
    step id None is `steps` itself. Reads of a step's state or id only need no output."""
    if isinstance(tree, (nodes.Getattr, nodes.Getitem)):
        keys, root = _chain(tree)
        if isinstance(root, nodes.Name) and root.name == "steps":
            yield from _classify(keys)
            node: nodes.Node = tree
            while isinstance(node, (nodes.Getattr, nodes.Getitem)):
                if isinstance(node, nodes.Getitem):
                    yield from _reads(node.arg)
                node = node.node
            return
    if isinstance(tree, nodes.Name) and tree.name == "steps":
        yield None, None
        return
    for child in tree.iter_child_nodes():
        yield from _reads(child)


def _classify(keys: list[Key]) -> Iterator[tuple[str | None, list[Key] | None]]:
    if not keys or not isinstance(keys[0], str):
        yield None, None  # steps[<computed>]
        return
    step = keys[0]
    if len(keys) == 1 or keys[1] is None:
        yield step, None  # the step itself, e.g. `{% set s = steps.x %}`: anything of it may be read
    elif keys[1] == "output":
        yield step, keys[2:] if len(keys) > 2 else None


def _chain(node: nodes.Node) -> tuple[list[Key], nodes.Node]:
    """`steps.x.output['a'].b` -> (['x', 'output', 'a', 'b'], Name steps)."""
    keys: list[Key] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            # `.items` of a mapping is its method, which may read all of it: like a computed key
            keys.append(None if node.attr in DICT_METHODS else node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, (str, int)) \
                and not isinstance(node.arg.value, bool):
            keys.append(node.arg.value)
        else:
            keys.append(None)
        node = node.node
    keys.reverse()
    return keys, node


def _unique(paths: Iterable[list[str]]) -> list[list[str]]:
    """Sorted, without duplicates or paths another (shorter) one already covers."""
    out: list[list[str]] = []
    for path in sorted({tuple(p) for p in paths}, key=lambda p: (len(p), p)):
        if not any(list(path[: len(have)]) == have for have in out):
            out.append(list(path))
    return out
