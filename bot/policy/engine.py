"""The PolicyEngine protocol the worker and CLI use, and the backend choice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bot.policy.models import Decision, Verdict

if TYPE_CHECKING:
    from bot.settings import Settings

# Where the answers live (DESIGN.md, "Policy contract").
PACKAGE = "playbook.authz"
RULES = ("decision", "approver", "start")


def rule_path(rule: str) -> str:
    """'decision' -> 'data.playbook.authz.decision', the name used in reasons and logs."""
    return f"data.{PACKAGE}.{rule}"


def entrypoint(rule: str) -> str:
    """'decision' -> 'playbook/authz/decision', as rego-cpp and OPA's REST path spell it."""
    return f"{PACKAGE.replace('.', '/')}/{rule}"


@runtime_checkable
class PolicyEngine(Protocol):
    """Answers policy questions; every failure is a deny with its reason, never an exception.

    The one exception is `load()`, which raises PolicyLoadError for policies that cannot be
    loaded, so `dev` and `worker` can refuse to start on them.
    """

    name: str

    @property
    def policy_hash(self) -> str | None: ...

    async def load(self) -> None: ...

    async def ready(self) -> bool: ...

    async def decide(self, input: dict[str, Any]) -> Decision: ...

    async def approver(self, input: dict[str, Any]) -> Verdict: ...

    async def start(self, input: dict[str, Any]) -> Verdict: ...

    async def close(self) -> None: ...


def make_engine(settings: Settings) -> PolicyEngine:
    """OPA server when PLAYBOOK_BOT_OPA_URL is set; otherwise policies_dir evaluated locally."""
    if settings.opa_url:
        from bot.policy.opa import OpaEngine

        token = settings.opa_token.get_secret_value() if settings.opa_token else None
        return OpaEngine(settings.opa_url, token=token, timeout=settings.opa_timeout)
    from bot.policy.embedded import EmbeddedEngine

    return EmbeddedEngine(settings.policies_dir, timeout=settings.opa_timeout)
