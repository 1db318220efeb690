"""Reading a policies directory the way OPA does: Rego modules, plus JSON data at its directory path."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.policy.errors import PolicyLoadError

_PACKAGE = re.compile(r"^[ \t]*package[ \t]+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.MULTILINE)


@dataclass(frozen=True)
class TestRule:
    """One `test_*` rule of a `*_test.rego` file."""

    __test__ = False  # not a pytest test class


    file: str
    package: str
    name: str
    line: int

    @property
    def entrypoint(self) -> str:
        return f"{self.package.replace('.', '/')}/{self.name}"


@dataclass(frozen=True)
class PolicySources:
    """Everything the engine compiles, keyed by the path shown in error messages."""

    root: Path
    modules: dict[str, str]
    data: dict[str, Any]
    hash: str
    tests: dict[str, str] = field(default_factory=dict)

    def test_rules(self) -> list[TestRule]:
        rules = []
        for file, source in self.tests.items():
            package = _PACKAGE.search(source)
            if package is None:
                continue  # the compiler reports the missing package with its location
            seen: set[str] = set()
            for match in _TEST_RULE.finditer(source):
                name = match.group(1)
                if name in seen:  # a test may be defined in several bodies; it is one rule
                    continue
                seen.add(name)
                rules.append(TestRule(file, package.group(1), name, source.count("\n", 0, match.start()) + 1))
        return rules


def _policy_files(root: Path) -> list[Path]:
    """*.rego and *.json under root, skipping hidden files and directories (.git, editors' files)."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.endswith((".rego", ".json")):
                found.append(Path(directory) / name)
    return found


def tree_signature(root: Path) -> tuple[tuple[str, int, int, int, int], ...]:
    """Cheap change detection: (path, mtime_ns, size, inode, ctime_ns) of every policy file, no
    reads. The inode and ctime because an mtime can be kept or set back (`cp -p`, `rsync -a`, a
    tar of a reproducible build): an edit of the same size then went unseen (red team), while a
    process started afterwards loaded it. Neither of those two can be set by a writer."""
    signature = []
    for path in _policy_files(root):
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed while walking; the next check sees the new tree
            continue
        signature.append((str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns))
    return tuple(signature)


def read_sources(root: Path, *, include_tests: bool = False) -> PolicySources:
    """Read modules and data; PolicyLoadError names the file (and line) of unreadable JSON."""
    if not root.is_dir():
        raise PolicyLoadError(f"policies directory {root} does not exist")
    modules: dict[str, str] = {}
    tests: dict[str, str] = {}
    data: dict[str, Any] = {}
    digest = hashlib.sha256()
    for path in _policy_files(root):
        shown = str(path)
        raw = path.read_bytes()
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise PolicyLoadError(f"not UTF-8: {exc}", file=shown) from exc
        is_test = path.name.endswith("_test.rego")
        if is_test:
            if include_tests:
                tests[shown] = text
            continue
        # Tests do not change decisions, so they stay out of the policy hash.
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(raw)}\0".encode())
        digest.update(raw)
        if path.suffix == ".rego":
            modules[shown] = text
        else:
            _mount(data, path.parent.relative_to(root).parts, _parse_json(text, shown), shown)
    return PolicySources(root=root, modules=modules, data=data, hash=digest.hexdigest(), tests=tests)


def _parse_json(text: str, shown: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyLoadError(f"invalid JSON: {exc.msg}", file=shown, line=exc.lineno, column=exc.colno) from exc
    except (ValueError, RecursionError) as exc:  # a number past 4,300 digits; nesting past the parser
        raise PolicyLoadError(f"JSON this engine cannot read: {type(exc).__name__}: {exc}", file=shown) from None


def _mount(data: dict[str, Any], parts: tuple[str, ...], value: Any, shown: str) -> None:
    """Place a data file's value at data.<its directory path>, merging objects like OPA does."""
    if not parts:
        if not isinstance(value, dict):
            raise PolicyLoadError("data at the policies root must be a JSON object", file=shown)
        _merge(data, value, (), shown)
        return
    node = data
    for index, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PolicyLoadError(f"data.{'.'.join(parts[: index + 1])} is set twice", file=shown)
        node = child
    last = parts[-1]
    if last not in node:
        node[last] = value
    elif isinstance(node[last], dict) and isinstance(value, dict):
        _merge(node[last], value, parts, shown)
    else:
        raise PolicyLoadError(f"data.{'.'.join(parts)} is set twice", file=shown)


def _merge(target: dict[str, Any], value: dict[str, Any], path: tuple[str, ...], shown: str) -> None:
    for key, item in value.items():
        if key not in target:
            target[key] = item
        elif isinstance(target[key], dict) and isinstance(item, dict):
            _merge(target[key], item, (*path, key), shown)
        else:
            raise PolicyLoadError(f"data.{'.'.join((*path, key))} is set twice", file=shown)
