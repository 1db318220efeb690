"""Per-target locks (format v1.1 `concurrency:`): the rendered key, the lock's workflow id, and
what runs and their lock workflow say to each other. Pure: the worker, the front doors and the
lock workflow all import it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from bot.playbook.model import LOCK_KEY_MAX, Playbook
from bot.playbook.templating import TemplateError, inert, render

LOCK_WORKFLOW = "KeyLock"
ACQUIRE_SIGNAL = "acquire"
RELEASE_SIGNAL = "release"
NOTICE_SIGNAL = "lock_notice"  # lock → run: granted, queued (with the holders) or busy

OnBusy = Literal["queue", "refuse", "attach"]


class LockKeyError(ValueError):
    """The key template could not give a usable key for these params and alert."""


def render_lock_key(playbook: Playbook, params: dict[str, Any], alert: dict[str, Any] | None) -> str | None:
    """The run's concurrency key, or None when the playbook has no `concurrency:`.

    Rendered from params, vars and alert only (all data, made inert): it exists before the run does.
    """
    lock = playbook.concurrency
    if lock is None:
        return None
    context = inert({"params": params, "vars": playbook.vars, "alert": alert})
    try:
        value = render(lock.key, context)
    except TemplateError as exc:
        raise LockKeyError(f"concurrency.key cannot be rendered: {exc}") from None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise LockKeyError(f"concurrency.key must render to text, not a {type(value).__name__}")
    key = str(value).strip()
    if not key:
        raise LockKeyError("concurrency.key renders empty: every run would share one lock by accident")
    if len(key) > LOCK_KEY_MAX:
        raise LockKeyError(f"concurrency.key renders {len(key)} characters; at most {LOCK_KEY_MAX}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise LockKeyError("concurrency.key renders control characters")
    return key


def lock_workflow_id(key: str) -> str:
    """One lock workflow per key, whoever asks: hashed, so any key is a valid, fixed-size id."""
    return "lock-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


class LockRequest(BaseModel):
    """A run asks for a slot of `key`. `root_run_id`: the root of a run tree (sub-playbooks): a run
    whose root already holds the key is granted at once, outside the limit."""

    kind: Literal["acquire"] = "acquire"
    key: str
    run_id: str
    root_run_id: str | None = None
    playbook: str = ""
    limit: int = Field(1, ge=1)
    on_busy: OnBusy = "queue"
    seal: str = ""  # set by the worker's `lock.request` activity; the lock drops a request without a valid one


class LockRelease(BaseModel):
    kind: Literal["release"] = "release"
    key: str
    run_id: str
    seal: str = ""  # set by the worker's `lock.release` activity


LockMessage = Annotated[LockRequest | LockRelease, Field(discriminator="kind")]


ID_MAX = 1000  # characters of a workflow id (Temporal's default limit.maxIDLength)


class LockNotice(BaseModel):
    """What the lock tells a run: `granted`; `queued` (behind `holders`, at `position`); `busy`
    (refuse/attach: not queued)."""

    key: str
    outcome: Literal["granted", "queued", "busy"]
    holders: list[str] = Field(default_factory=list)
    position: int = 0


class Holder(BaseModel):
    run_id: str
    root_run_id: str | None = None
    since: datetime
    nested: bool = False  # granted through its root run: not counted against the limit


class LockState(BaseModel):
    """The lock workflow's whole state: its input, and what it carries over a continue-as-new."""

    key: str
    holders: list[Holder] = Field(default_factory=list)
    waiters: list[LockRequest] = Field(default_factory=list)
    inbox: list[LockMessage] = Field(default_factory=list)
    check_seconds: float = 5.0  # how often holders and waiters are checked for runs that ended
    idle_seconds: float = 60.0  # no holder, no waiter this long: the lock workflow ends
    seal: str = ""  # over key, holders and the execution that continued as new (see holders_content)
    rejected: int = 0  # messages dropped because their seal did not verify (forged or altered)


def message_label(message: LockRequest | LockRelease) -> str:
    return f"lock.{message.kind}"


def message_content(message: LockRequest | LockRelease) -> dict[str, Any]:
    """What a lock message's seal covers: every field but the seal."""
    return message.model_dump(mode="json", exclude={"seal"})


HOLDERS_LABEL = "lock.holders"


def holders_content(key: str, holders: list[Holder], from_run: str) -> dict[str, Any]:
    """What a continued lock state's seal covers: its holders, bound to the execution that sealed
    them (the next one checks it against Temporal's `continued_run_id`, which no client can set)."""
    return {"key": key, "holders": [h.model_dump(mode="json") for h in holders], "from_run": from_run}


class VerifyRequest(BaseModel):
    messages: list[LockMessage]


class VerifyResult(BaseModel):
    valid: list[bool]


class SealRequest(BaseModel):
    key: str
    holders: list[Holder]
    from_run: str


class AdoptRequest(BaseModel):
    """The holders a lock execution starts with, as its input claims them."""

    key: str
    holders: list[Holder]
    seal: str = ""
    from_run: str | None = None  # Temporal's continued_run_id: None when a client started it


class AdoptResult(BaseModel):
    holders: list[Holder]
    sealed: bool  # the seal held: kept as they were; else only those found holding the key, all counted


class LockView(BaseModel):
    """What the key's lock says of the asking run, read by the run itself (`lock.confirm`)."""

    genuine: bool  # the bot's own KeyLock, on the bot's task queue, running
    holding: bool = False
    waiting: bool = False
    holders: list[str] = Field(default_factory=list)
    reason: str = ""


class LiveRequest(BaseModel):
    run_ids: list[str]


class LiveResult(BaseModel):
    ended: list[str] = Field(default_factory=list)
