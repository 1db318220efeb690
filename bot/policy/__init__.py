"""Policy gate for high-impact steps: an OPA server or the same policies/ evaluated locally.

Exports are resolved lazily so that the embedded engine's child process, which imports
bot.policy.wire, does not pay for pydantic, aiohttp and the OPA client at start-up.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Decision": "bot.policy.models",
    "Verdict": "bot.policy.models",
    "Failure": "bot.policy.models",
    "Provenance": "bot.policy.models",
    "PolicyLoadError": "bot.policy.errors",
    "PolicyEngine": "bot.policy.engine",
    "make_engine": "bot.policy.engine",
    "EmbeddedEngine": "bot.policy.embedded",
    "load_policies": "bot.policy.embedded",
    "OpaEngine": "bot.policy.opa",
    "run_tests": "bot.policy.testing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bot.policy' has no attribute {name!r}")
    return getattr(import_module(module), name)
