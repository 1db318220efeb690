"""Resolve `${secret:NAME}` references inside activities only, and mask values on the way out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from bot.actions.base import SecretMissing
from bot.playbook.templating import SECRET_REF

MASK = "***"


class SecretStore:
    """Secrets from a file (KEY=VALUE lines, or a YAML/JSON mapping) first, then the environment."""

    def __init__(self, secrets_file: Path | None = None, environ: dict[str, str] | None = None) -> None:
        self._file = secrets_file
        self._environ = os.environ if environ is None else environ
        self._cache: tuple[float, dict[str, str]] | None = None

    def _from_file(self) -> dict[str, str]:
        if self._file is None or not self._file.exists():
            return {}
        mtime = self._file.stat().st_mtime
        if self._cache and self._cache[0] == mtime:
            return self._cache[1]
        text = self._file.read_text()
        values: dict[str, str] = {}
        if self._file.suffix in (".json", ".yaml", ".yml"):
            loaded = json.loads(text) if self._file.suffix == ".json" else yaml.safe_load(text)
            values = {str(k): str(v) for k, v in (loaded or {}).items()}
        else:
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    key, _, value = line.partition("=")
                    values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
        self._cache = (mtime, values)
        return values

    def lookup(self, name: str) -> str:
        value = self._from_file().get(name, self._environ.get(name))
        if value is None:
            raise SecretMissing(name)
        return value

    def resolve(self, value: Any, used: dict[str, str]) -> Any:
        """Replace references in a nested value; `used` collects what was resolved, for masking."""
        if isinstance(value, str):
            def sub(match: Any) -> str:
                secret = self.lookup(match.group(1))
                used[match.group(1)] = secret
                return secret

            return SECRET_REF.sub(sub, value)
        if isinstance(value, dict):
            return {k: self.resolve(v, used) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, used) for v in value]
        return value


def mask(value: Any, secrets: dict[str, str]) -> Any:
    """Blank out every resolved secret value wherever it shows up (output, error text)."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets.values():
            if secret:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: mask(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, secrets) for v in value]
    return value
