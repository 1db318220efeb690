"""What every action shares: its input/result models, its errors, and the registry.

An action is a method on a class that receives its clients, decorated with `@action(name,
ParamsModel)`. The registry reads names and params models from the code, so `validate`, the JSON
Schema and the worker never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field
from temporalio.exceptions import ApplicationError

from bot.audit.events import ID_BYTES_MAX, AuditEvent
from bot.audit.recorder import AuditMode
from bot.playbook.outputs import OutputNeeds


class ActionInput(BaseModel):
    """One argument in: the rendered params (secrets as markers, resolved only here) plus the
    correlation ids every log line carries."""

    run_id: str
    step_id: str
    playbook: str
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    compensation: bool = False
    audit: list[AuditEvent] = Field(default_factory=list, description="Queued events to write first.")
    audit_after: list[AuditEvent] = Field(
        default_factory=list, description="Written after success, behind this step's own success event."
    )
    secrets: list[str] = Field(
        default_factory=list, description="The secrets the playbook declares; a marker naming any other is refused."
    )
    execution: str | None = Field(
        None, description="This execution's part of its event ids: the first execution run id, `~` a reset's (None: a run from before)."
    )
    audit_mode: AuditMode = Field(
        "write", description="write: recorded before it acts; try: acts if the store is down; defer: writes nothing."
    )
    keep: OutputNeeds | None = Field(
        None, description="What templates read of this output: a large one keeps only that (None: a run from before).",
    )


# What a real OutputRef holds at most: an audit event id (ID_BYTES_MAX), a preview of at most
# PLAYBOOK_BOT_OUTPUT_PREVIEW_BYTES (16 KiB, its setting's bound), a refusal the run keeps as a
# step's failure (bot/engine/state.py ERROR_MAX's 2,000: state imports this module, not the reverse).
REF_ID_MAX, REF_PREVIEW_MAX, REF_REFUSED_MAX = ID_BYTES_MAX, 16 * 1024, 2000


class OutputRef(BaseModel):
    """A large output kept out of the run's state: the `step_output` audit event holding all of it."""

    event_id: str
    sha256: str = Field(description="Of the output's canonical JSON, as the event stores it.")
    size: int = Field(description="Bytes of that JSON.")
    preview: str = Field("", description="Its first bytes.")
    refused: str | None = Field(
        None, description="Why the run cannot keep what its templates read of it: the step fails with this."
    )

    def bounded(self) -> OutputRef:
        """At most what a real reference holds (engine-v14): a client that completes the action by id
        writes any, and a 2 MB `refused` rode on the undo's input (red team, stop 54)."""
        cut = {
            "event_id": self.event_id[:REF_ID_MAX], "sha256": self.sha256[:64], "preview": self.preview[:REF_PREVIEW_MAX],
            "refused": None if self.refused is None else self.refused[:REF_REFUSED_MAX],
        }
        return self if all(getattr(self, k) == v for k, v in cut.items()) else self.model_copy(update=cut)


class ActionResult(BaseModel):
    output: dict[str, Any] = Field(default_factory=dict)
    attempt: int = 1
    audited: bool = Field(False, description="The success events are written; else the workflow queues them.")
    stored: OutputRef | None = Field(None, description="Set when the output was too large to return whole.")
    unrecorded: list[AuditEvent] | None = Field(
        None, description="It acted unrecorded: nothing handed to it was written; these are its own events to keep."
    )


class ActionParams(BaseModel):
    """Base of every action's params model: unknown keys are errors, as in the playbook."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def whole_number_as_text(value: Any) -> Any:
    """YAML reads `3` as an int where an action wants text (a header, an argv item): accept it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def http_url(value: str | None) -> str | None:
    """Validator: an absolute http(s) URL (or None, where a setting supplies the default)."""
    if value is None:
        return value
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


def positive(name: str) -> Callable[[timedelta], timedelta]:
    """Validator factory: a duration that must be over zero (`name` goes in the message)."""

    def check(value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"{name} must be positive")
        return value

    return check


# Error types are fixed strings: the workflow decides on `type`, never on message text.
INVALID_PARAMS = "InvalidParams"
ACTION_REFUSED = "ActionRefused"
ACTION_FAILED = "ActionFailed"
SECRET_MISSING = "SecretMissing"
EGRESS_REFUSED = "EgressRefused"
SECRET_NOT_DECLARED = "SecretNotDeclared"


class InvalidParams(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, type=INVALID_PARAMS, non_retryable=True)


class ActionRefused(ApplicationError):
    """The action will not run this input, ever (not allowed, not configured)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type=ACTION_REFUSED, non_retryable=True)


class ActionFailed(ApplicationError):
    """The action ran and failed; retried per the step's retry policy unless `retryable=False`."""

    def __init__(self, message: str, *, retryable: bool = True, output: dict[str, Any] | None = None) -> None:
        super().__init__(message, output or {}, type=ACTION_FAILED, non_retryable=not retryable)


class EgressRefused(ApplicationError):
    """A URL-taking action was about to connect where playbooks may never go (bot.actions.egress)."""

    def __init__(self, reason: str, where: str = "") -> None:
        self.reason = reason
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}egress refused: {reason}", type=EGRESS_REFUSED, non_retryable=True)

    def at(self, where: str) -> EgressRefused:
        """The same refusal, saying which action and request it stopped."""
        return EgressRefused(self.reason, where)


class SecretMissing(ApplicationError):
    def __init__(self, name: str, note: str = "") -> None:
        super().__init__(
            f"secret {name!r} is not set: add {name}=... to the file PLAYBOOK_BOT_SECRETS_FILE names, or set "
            f"PLAYBOOK_BOT_SECRET_{name} in the worker's environment" + (f" ({note})" if note else ""),
            type=SECRET_MISSING,
            non_retryable=True,
        )


class SecretNotDeclared(ApplicationError):
    """A reference to a secret the playbook does not list under `secrets:`: never resolved."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"secret {name!r} is not declared by this playbook (its secrets: list), so it is not resolved",
            type=SECRET_NOT_DECLARED,
            non_retryable=True,
        )


# A param's schema mark: only a compensation may leave it out (the action then reads what its step
# recorded); anywhere else a playbook that leaves it out does not load.
COMPENSATION_DEFAULT = "x-compensation-default"


@dataclass(frozen=True)
class ActionContext:
    """What an action may know about the step it serves."""

    run_id: str
    step_id: str
    playbook: str
    idempotency_key: str
    attempt: int
    compensation: bool
    mask: Callable[[Any], Any] = lambda value: value  # blanks every known secret value: use it before logging
    # What an earlier attempt of this step noted (None: nothing, or this is the first), and how to
    # note something for a later one: what it acted on, so that a retry after a lost answer acts on
    # that and not on what has taken its place (carried by Temporal's heartbeat details).
    noted: Any = None
    note: Callable[[Any], None] = lambda value: None



P = TypeVar("P", bound=ActionParams)
ActionMethod = Callable[[Any, P, ActionContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ActionSpec:
    name: str
    params: type[ActionParams]
    summary: str
    method_name: str
    heartbeat: bool = True


ACTIONS: dict[str, ActionSpec] = {}
_SPEC_ATTR = "__playbook_action__"


def action(name: str, params: type[P], *, summary: str | None = None) -> Callable[[ActionMethod], ActionMethod]:
    """Register a method as the action `name`; its first docstring line is its summary."""

    def decorate(method: ActionMethod) -> ActionMethod:
        if name in ACTIONS and ACTIONS[name].method_name != method.__qualname__:
            raise ValueError(f"action {name!r} is registered twice")
        doc = (method.__doc__ or "").strip().splitlines()
        spec = ActionSpec(name, params, summary or (doc[0] if doc else ""), method.__qualname__)
        ACTIONS[name] = spec
        setattr(method, _SPEC_ATTR, spec)
        return method

    return decorate


def spec_of(method: Any) -> ActionSpec | None:
    return getattr(method, _SPEC_ATTR, None)
