"""API bearer tokens: one per principal (`api:<name>`), stored hashed, shown once when issued.

The file (PLAYBOOK_BOT_API_TOKENS_FILE, default DATA_DIR/api-tokens.json) holds sha256 digests
only: a token is 256 random bits, so a fast hash is enough and a stolen file grants nothing.
Front doors read it when it changes, so a revoked token stops working without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from bot.identity.principals import PrincipalError, api

PREFIX = "pbt_"  # so a leaked token is recognisable (secret scanners, logs)
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


class TokenError(ValueError):
    """A tokens file that cannot be read or written; the message names the file and the fix."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    created_at: str

    @property
    def principal(self) -> str:
        return f"api:{self.name}"


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[tuple[int, ...], dict[str, TokenEntry]] | None = None

    def entries(self) -> dict[str, TokenEntry]:
        """Name -> entry; an absent file has none. Re-read whenever the file was replaced: every
        write is a new inode, so a rotation within one clock tick and of the same size is seen too."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        try:
            raw = json.loads(self.path.read_text())
            entries = {}
            for item in raw.get("tokens", []):
                entry = TokenEntry(str(item["name"]), str(item["sha256"]), str(item.get("created_at", "")))
                api(entry.name)
                if not _SHA256.match(entry.sha256):
                    raise ValueError(f"token {entry.name!r} has no sha256 digest")
                entries[entry.name] = entry
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenError(f"{self.path}: not a tokens file ({type(exc).__name__}: {exc})") from None
        self._cache = (key, entries)
        return entries

    def principal_for(self, token: str) -> str | None:
        """The principal a presented token belongs to, or None. Compares every digest in constant time."""
        if not token:
            return None
        presented = digest(token)
        found = None
        for entry in self.entries().values():
            if hmac.compare_digest(presented, entry.sha256):
                found = entry.principal
        return found

    def issue(self, name: str) -> str:
        """A new token for `api:<name>`, replacing any earlier one; returned once, stored hashed."""
        try:
            api(name)
        except PrincipalError as exc:
            raise TokenError(str(exc)) from None
        token = PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            entries = dict(self.entries())
            entries[name] = TokenEntry(name, digest(token), datetime.now(timezone.utc).isoformat(timespec="seconds"))
            self._write(entries)
        return token

    def revoke(self, name: str) -> bool:
        with self._locked():
            entries = dict(self.entries())
            if entries.pop(name, None) is None:
                return False
            self._write(entries)
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (two `token issue` at once must not lose one), reading afresh."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._cache = None
            yield
        finally:
            os.close(fd)

    def _write(self, entries: dict[str, TokenEntry]) -> None:
        """Atomically, owner-only: a reader never sees half a file."""
        body = {"tokens": [e.__dict__ for e in sorted(entries.values(), key=lambda e: e.name)]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".api-tokens.")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(body, handle, indent=2)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._cache = None
