"""The PolicyEngine protocol the worker and CLI use, and the backend choice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog

from bot.policy.models import Decision, Failure, Provenance, Verdict

if TYPE_CHECKING:
    from bot.settings import Settings

# Where the answers live (DESIGN.md, "Policy contract").
PACKAGE = "playbook.authz"
RULES = ("decision", "approver", "start", "cancel")


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

    @property
    def verdict_hash(self) -> str | None:
        """The version this engine answers with now, when it knows it for certain (a vote's
        verdict asked elsewhere counts only on a match, bot/engine/verdicts.py); None: unknown."""
        ...

    async def current_verdict_hash(self) -> str | None:
        """`verdict_hash` once the engine has looked for a changed policy as a question would."""
        ...

    async def load(self) -> None: ...

    async def ready(self) -> bool: ...

    async def decide(self, input: dict[str, Any]) -> Decision: ...

    async def approver(self, input: dict[str, Any]) -> Verdict: ...

    async def start(self, input: dict[str, Any]) -> Verdict: ...

    async def cancel(self, input: dict[str, Any]) -> Verdict: ...

    async def close(self) -> None: ...


log = structlog.get_logger("bot.policy")

QueryResult = tuple[Any, Provenance, "tuple[Failure, str] | None"]


class FailClosed:
    """What both backends share: every question answered, every failure a deny with its reason.

    A backend implements `_query(rule, input) -> (raw result, provenance, failure or None)`.
    """

    name: str

    @property
    def verdict_hash(self) -> str | None:
        """None: a backend that cannot say which version it answers with now. OPA's revision is
        the one its last answer named, which may be stale (and an unrevised bundle names none)."""
        return None

    async def current_verdict_hash(self) -> str | None:
        return self.verdict_hash

    async def decide(self, input: dict[str, Any]) -> Decision:
        raw, provenance, failure = await self._guarded_query("decision", input)
        if failure is not None:
            return Decision.deny(failure[1], failure[0], provenance)
        return Decision.from_result(raw, rule_path("decision"), provenance)

    async def approver(self, input: dict[str, Any]) -> Verdict:
        return await self._verdict("approver", input)

    async def start(self, input: dict[str, Any]) -> Verdict:
        return await self._verdict("start", input)

    async def cancel(self, input: dict[str, Any]) -> Verdict:
        return await self._verdict("cancel", input)

    async def close(self) -> None:
        """Release what the backend holds."""

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _verdict(self, rule: str, input: dict[str, Any]) -> Verdict:
        raw, provenance, failure = await self._guarded_query(rule, input)
        if failure is not None:
            return Verdict.deny(failure[1], failure[0], provenance)
        return Verdict.from_result(raw, rule_path(rule), provenance)

    async def _guarded_query(self, rule: str, input: dict[str, Any]) -> QueryResult:
        """_query, with a bug of ours turned into a deny too: callers are never raised at."""
        try:
            return await self._query(rule, input)
        except Exception as exc:
            log.exception("policy.internal_error", engine=self.name, rule=rule)
            reason = f"policy engine error: {type(exc).__name__}: {exc}"
            return None, Provenance(engine=self.name), self._fail_closed(rule, Failure.INTERNAL, reason)

    async def _query(self, rule: str, input: dict[str, Any]) -> QueryResult:
        raise NotImplementedError

    def _fail_closed(self, rule: str, failure: Failure, reason: str) -> tuple[Failure, str]:
        log.error("policy.fail_closed", engine=self.name, rule=rule, failure=failure.value, reason=reason)
        return failure, reason


def make_engine(settings: Settings) -> PolicyEngine:
    """OPA server when PLAYBOOK_BOT_OPA_URL is set; otherwise policies_dir evaluated locally."""
    if settings.opa_url:
        from bot.policy.opa import OpaEngine

        token = settings.opa_token.get_secret_value() if settings.opa_token else None
        return OpaEngine(settings.opa_url, token=token, timeout=settings.opa_timeout)
    from bot.policy.embedded import EmbeddedEngine

    return EmbeddedEngine(settings.policies_dir, timeout=settings.opa_timeout)
