"""Resolve secret markers inside activities only, and mask every known value on the way out.

Values come from `PLAYBOOK_BOT_SECRETS_FILE` or from `PLAYBOOK_BOT_SECRET_<NAME>` variables, and
from nowhere else: the worker's other variables (the bot's own Slack, OPA, Temporal and
Alertmanager credentials) are never readable as playbook secrets. Only markers that the
playbook's own `secret()` calls rendered resolve (see bot/playbook/templating.py); the text
`${secret:NAME}` is display text and means nothing here.
"""

from __future__ import annotations

import base64
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping

import yaml

from bot.actions.base import ActionFailed, InvalidParams, SecretMissing, SecretNotDeclared
from bot.playbook.templating import MARK_CLOSE, MARK_OPEN, MARKER

MASK = "***"
ENV_PREFIX = "PLAYBOOK_BOT_SECRET_"
_B64_MIN = 8  # shortest base64 fragment masked on its own (shorter ones would blank ordinary text)


class SecretStore:
    """Secrets from a file (KEY=VALUE lines, or a YAML/JSON mapping) first, then PLAYBOOK_BOT_SECRET_<NAME>."""

    def __init__(self, secrets_file: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._file = secrets_file
        # Read once: a process's environment cannot change from outside it, and the worker never
        # changes its own. Scanning (and decoding) the whole environment for every action's masker
        # was about a sixth of a core.log step's CPU in the worker.
        environ = os.environ if environ is None else environ
        self._env = {key[len(ENV_PREFIX):]: value for key, value in environ.items() if key.startswith(ENV_PREFIX)}
        self._cache: tuple[float, dict[str, str]] | None = None

    def _from_file(self) -> dict[str, str]:
        if self._file is None or not self._file.exists():
            return {}
        mtime = self._file.stat().st_mtime
        if self._cache and self._cache[0] == mtime:
            return self._cache[1]
        values: dict[str, str] = {}
        try:
            text = self._file.read_text()
            if self._file.suffix in (".json", ".yaml", ".yml"):
                loaded = json.loads(text) if self._file.suffix == ".json" else yaml.safe_load(text)
                values = {str(k): str(v) for k, v in (loaded or {}).items()}
        except (OSError, ValueError, AttributeError, yaml.YAMLError) as exc:
            # The parser's message may quote the file, i.e. a secret: name only the kind of problem.
            raise ActionFailed(f"PLAYBOOK_BOT_SECRETS_FILE ({self._file}) cannot be read: {type(exc).__name__}") from None
        if self._file.suffix not in (".json", ".yaml", ".yml"):
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    key, _, value = line.partition("=")
                    values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
        self._cache = (mtime, values)
        return values

    def lookup(self, name: str) -> str:
        value = self._from_file().get(name)
        if value is None:
            value = self._env.get(name)
        if value is None:
            raise SecretMissing(name, self._file_note())
        return value

    def _file_note(self) -> str:
        if self._file is None:
            return "PLAYBOOK_BOT_SECRETS_FILE is not set"
        if not self._file.exists():
            return f"PLAYBOOK_BOT_SECRETS_FILE names {self._file}, which does not exist"
        return f"not in PLAYBOOK_BOT_SECRETS_FILE ({self._file})"

    def known(self) -> list[str]:
        """Every value the store holds, whichever step uses it: all of them are masked everywhere."""
        return [value for value in {**self._env, **self._from_file()}.values() if value]

    def masker(self) -> Callable[[Any], Any]:
        """A function that masks every known value (in its encoded forms) in a nested value."""
        pattern = _pattern(tuple(sorted(set(self.known()))))
        return lambda value: _mask(value, pattern)

    def mask(self, value: Any) -> Any:
        return self.masker()(value)

    def resolve(self, value: Any, declared: Collection[str]) -> Any:
        """Replace each secret marker in a nested value with its value; only declared names resolve.

        A marker naming an undeclared secret is refused (SecretNotDeclared), and so is a stray
        reserved code point that forms no marker (InvalidParams): neither can come from a
        playbook the loader accepted.
        """
        if isinstance(value, str):
            if MARK_OPEN not in value and MARK_CLOSE not in value:
                return value

            def sub(match: re.Match[str]) -> str:
                name = match.group(2)
                if name not in declared:
                    raise SecretNotDeclared(name)
                return self.lookup(name)

            resolved = MARKER.sub(sub, value)
            if MARK_OPEN in MARKER.sub("", value) or MARK_CLOSE in MARKER.sub("", value):
                raise InvalidParams("a secret reference in the arguments is malformed; it was not resolved")
            return resolved
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str) and (MARK_OPEN in key or MARK_CLOSE in key):
                    raise InvalidParams("a secret reference cannot be an argument's key")
            return {k: self.resolve(v, declared) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, declared) for v in value]
        return value


def encoded_forms(value: str) -> list[str]:
    """Base64 spellings of a value (standard and URL-safe, padded or not), plus the fragments that
    stay the same wherever the value sits inside a longer encoded text (`user:token` in Basic auth)."""
    raw = value.encode()
    out: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        out.update({whole, whole.rstrip("=")})
        for skip in range(3):  # the value starting at each offset within a 3-byte group
            body = raw[skip:]
            body = body[: len(body) - len(body) % 3]
            fragment = encode(body).decode()
            if len(fragment) >= _B64_MIN:
                out.add(fragment)
    return sorted(out - {""}, key=len, reverse=True)


def _char_pattern(ch: str) -> str:
    """One character as it may appear: itself, percent-encoded (any hex case), `+` for a space, or
    JSON-escaped. Per character, so the partial encodings URL libraries make are caught too."""
    alternatives = [re.escape(ch)]
    alternatives.append("".join(f"%(?i:{byte:02x})" for byte in ch.encode()))
    if ch == " ":
        alternatives.append(r"\+")
    code = ord(ch)
    if code > 0xFFFF:
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        alternatives.append(f"(?i:\\\\u{high:04x}\\\\u{low:04x})")
    else:
        alternatives.append(f"(?i:\\\\u{code:04x})")
    short = {'"': '"', "\\": "\\", "/": "/", "\n": "n", "\r": "r", "\t": "t", "\b": "b", "\f": "f"}
    if ch in short:
        alternatives.append("\\\\" + re.escape(short[ch]))
    return "(?:" + "|".join(alternatives) + ")"


@lru_cache(maxsize=16)
def _pattern(values: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for every known value in every form; longer first, so no piece of one is left over."""
    parts: list[tuple[int, str]] = []
    for value in values:
        parts.append((len(value), "".join(_char_pattern(ch) for ch in value)))
        parts.extend((len(form), re.escape(form)) for form in encoded_forms(value))
    if not parts:
        return None
    parts.sort(key=lambda part: part[0], reverse=True)
    return re.compile("|".join(pattern for _, pattern in parts))


def _mask(value: Any, pattern: re.Pattern[str] | None) -> Any:
    if pattern is None:
        return value
    if isinstance(value, str):
        return pattern.sub(MASK, value)
    if isinstance(value, dict):
        return {_mask(k, pattern): _mask(v, pattern) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v, pattern) for v in value]
    return value


MASK_MARGIN = 16 * 1024  # bytes an action reads past its output's limit, for cut_masked


def cut_masked(text: str, limit: int, keep: str, mask: Callable[[Any], Any]) -> str:
    """`text` masked, then cut to its first (`keep="head"`) or last (`"tail"`) `limit` bytes of
    UTF-8. Masked first: a secret the cut falls inside would otherwise keep the half no mask knows
    (a target that echoes a request, an annotation's length placing the cut). The caller reads
    MASK_MARGIN bytes past `limit`, so a value of up to that length across the cut is whole here."""
    masked = mask(text)
    data = masked.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return masked
    kept = data[:limit] if keep == "head" else data[len(data) - limit:]
    return kept.decode("utf-8", "ignore")  # (a character the cut split is left out)


def mask(value: Any, secrets: Iterable[str]) -> Any:
    """Blank out the given secret values, in every form, wherever they show up."""
    return _mask(value, _pattern(tuple(sorted({s for s in secrets if s}))))
