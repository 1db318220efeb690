"""Proofs: what the front door signs so the worker can check who acted, and how they were verified.

Anyone who can reach Temporal can start a workflow, send an update or cancel one, claiming any
user and any groups. The front door verifies a request at the edge (Slack's signature, an API
token, the webhook token) and signs a proof of it with a key only front doors and workers hold
(PLAYBOOK_BOT_ENVELOPE_KEY, an HMAC-SHA256 key). The worker re-checks the proof before it acts;
without one, the principal is unverified and its groups are dropped. A proof is bound to one
operation on one run (purpose, run id and a digest of what was asked), so it cannot be replayed
onto anything else. A vote, answer or cancel also binds the execution (the run's first execution
run id): a run id can run again (`on_rerun: start`), and the earlier run's history, readable by
anyone who can reach Temporal, holds its proofs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python

from bot.identity.principals import Actor, VerifiedBy
from bot.policy.models import canonical_json
from bot.settings import PLACEHOLDER

Purpose = Literal["start", "vote", "cancel", "confirm", "schedule"]
DEV_KEY_FILE = "envelope.key"
MIN_KEY_BYTES = 32
START_SKEW = timedelta(minutes=10)  # a start proof older than this when Temporal took the start is stale


class ProofError(ValueError):
    """A proof that does not verify; the message says why (never the key)."""


class Proof(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    purpose: Purpose
    run_id: str
    principal: str
    name: str = ""
    groups: list[str] = Field(default_factory=list)
    verified_by: VerifiedBy
    issued_at: datetime
    digest: str = Field(description="sha256 of the canonical JSON of what was asked.")
    key_id: str = Field(description="Which key signed it (a fingerprint, not the key).")
    execution: str | None = Field(
        None, description="The run's first execution run id (votes, answers, cancels); None: not bound to "
        "one (starts and schedules, signed before any execution exists), and left out of the MAC."
    )
    mac: str

    def actor(self) -> Actor:
        return Actor(self.principal, self.name, tuple(self.groups), self.verified_by)


def digest(content: Any) -> str:
    return hashlib.sha256(canonical_json(to_jsonable_python(content)).encode()).hexdigest()


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"playbook-bot envelope key id:" + key).hexdigest()[:12]


def _signed_fields(proof: Proof) -> dict[str, Any]:
    """What the MAC covers: every field but the MAC, and `execution` only when set, so a proof
    signed before that field existed still verifies."""
    return proof.model_dump(exclude={"mac"} if proof.execution is not None else {"mac", "execution"})


def _mac(key: bytes, fields: dict[str, Any]) -> str:
    return hmac.new(key, canonical_json(to_jsonable_python(fields)).encode(), hashlib.sha256).hexdigest()


class Keyring:
    """Signs with one key and verifies with any of the keys it holds (rotation: old keys verify)."""

    def __init__(self, signing: bytes | None = None, verifying: Iterable[bytes] = ()) -> None:
        self._signing = signing
        keys = [signing] if signing else []
        keys += [k for k in verifying if k and k not in keys]
        self._keys = {key_id(k): k for k in keys}

    @property
    def can_sign(self) -> bool:
        return self._signing is not None

    @property
    def can_verify(self) -> bool:
        return bool(self._keys)

    @property
    def vouching_key_id(self) -> str | None:
        """The id of the key `vouch` signs with (None: it cannot)."""
        key = self._signing or next(iter(self._keys.values()), None)
        return key_id(key) if key is not None else None

    def sign(self, purpose: Purpose, run_id: str, actor: Actor, content: Any, now: datetime | None = None, *,
             execution: str | None = None) -> Proof | None:
        """A proof for a verified actor; None for an unverified one or without a key (the worker
        then treats the principal as unverified). `execution`: the run's first execution run id,
        which a vote, answer or cancel must carry."""
        if self._signing is None or actor.verified_by is None:
            return None
        return self._proof(self._signing, purpose, run_id, actor, content, now, execution)

    def vouch(self, purpose: Purpose, run_id: str, actor: Actor, content: Any, now: datetime | None = None) -> Proof | None:
        """A proof a worker makes for itself (a schedule's runs): signed like `seal`, with the
        signing key or else the first key held, since workers may hold only verifying keys."""
        key = self._signing or next(iter(self._keys.values()), None)
        if key is None or actor.verified_by is None:
            return None
        return self._proof(key, purpose, run_id, actor, content, now)

    @staticmethod
    def _proof(key: bytes, purpose: Purpose, run_id: str, actor: Actor, content: Any, now: datetime | None,
               execution: str | None = None) -> Proof:
        fields: dict[str, Any] = {
            "purpose": purpose,
            "run_id": run_id,
            "principal": actor.principal,
            "name": actor.name,
            "groups": sorted(actor.groups),
            "verified_by": actor.verified_by,
            "issued_at": (now or datetime.now(timezone.utc)).astimezone(timezone.utc),
            "digest": digest(content),
            "key_id": key_id(key),
        }
        if execution is not None:
            fields["execution"] = execution
        return Proof(**fields, mac=_mac(key, fields))

    def check(self, proof: Proof, purpose: Purpose, run_id: str, content: Any, *, execution: str | None = None) -> Actor:
        """The verified actor, or ProofError saying why the proof does not hold for this operation.
        With `execution` (the run's first execution run id) the proof must be bound to it: one for
        another execution, or bound to none, may come from an earlier run under this run id."""
        key = self._keys.get(proof.key_id)
        if key is None:
            if not self._keys:
                raise ProofError(
                    "this worker holds no envelope key (PLAYBOOK_BOT_ENVELOPE_KEY), so it cannot check who acted: "
                    "give front doors and workers the same key"
                )
            raise ProofError(
                f"signed with an envelope key this worker does not hold (key id {proof.key_id}): "
                "front doors and workers need the same PLAYBOOK_BOT_ENVELOPE_KEY"
            )
        if not _same(_mac(key, _signed_fields(proof)), proof.mac):
            raise ProofError("its signature does not match: forged or altered")
        if proof.purpose != purpose:
            raise ProofError(f"it proves a {proof.purpose}, not a {purpose}")
        if proof.run_id != run_id:
            raise ProofError(f"it was issued for run {proof.run_id!r}, not this one")
        if proof.digest != digest(content):
            raise ProofError(f"it was issued for a different {purpose} than the one sent")
        if execution is not None and proof.execution != execution:
            if proof.execution is None:
                raise ProofError(
                    f"it is bound to no execution of run {run_id!r}, and a {purpose} must be: it may come from an "
                    "earlier run under this run id (or from a front door older than this worker)"
                )
            raise ProofError(
                f"it was issued for another execution of run {run_id!r} ({proof.execution}, not {execution}): "
                "a proof from an earlier run under this run id"
            )
        return proof.actor()

    def seal(self, label: str, content: Any) -> str:
        """A worker-to-worker seal (lock messages): `key id:HMAC` over a label and the content.
        Signed with the signing key, else the first key held (a worker may hold only verifying keys)."""
        key = self._signing or next(iter(self._keys.values()), None)
        if key is None:
            raise ProofError("this process holds no key to seal with")
        return f"{key_id(key)}:{_mac(key, {'label': label, 'content': content})}"

    def seal_holds(self, label: str, content: Any, seal: str) -> bool:
        """Whether `seal` was made by `seal(label, content)` with a key this keyring holds."""
        kid, _, mac = seal.partition(":")
        key = self._keys.get(kid)
        return key is not None and _same(_mac(key, {"label": label, "content": content}), mac)


def _same(expected: str, given: str) -> bool:
    """hmac.compare_digest of two texts as bytes: given strings, it raises TypeError for a non-ASCII
    one, and a lock message sealed `<key id>:é` made the lock drop every genuine message verified
    with it (red team)."""
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass"))


def start_content(playbook: str, playbook_hash: str, params: dict[str, Any], trigger: dict[str, Any]) -> dict[str, Any]:
    """What a start proof covers: the playbook version, the params and who/what triggered it."""
    return {
        "playbook": playbook,
        "hash": playbook_hash,
        "params": params,
        "trigger": {k: trigger.get(k) for k in ("kind", "requested_by", "alert")},
    }


def schedule_content(schedule_id: str, start: dict[str, Any]) -> dict[str, Any]:
    """What a schedule's proof covers: the schedule, and the start (`start_content`) every firing makes."""
    return {"schedule": schedule_id, **start}


def vote_content(step_id: str, vote: str, reason: str) -> dict[str, Any]:
    return {"step_id": step_id, "vote": vote, "reason": reason}


def confirm_content(step_id: str, answer: str, reason: str) -> dict[str, Any]:
    """What a confirm proof covers: the step and the exact answer (a changed answer fails the proof)."""
    return {"step_id": step_id, "answer": answer, "reason": reason}


def cancel_content(reason: str) -> dict[str, Any]:
    return {"reason": reason}


def read_key(text: str, where: str) -> bytes:
    """A key as configured: at least 32 bytes of text (hex or any random string)."""
    key = text.strip().encode()
    if PLACEHOLDER.search(text):
        raise ProofError(f"{where} is the example's placeholder; generate a key: `openssl rand -hex 32`")
    if len(key) < MIN_KEY_BYTES:
        raise ProofError(f"{where} is {len(key)} bytes; an envelope key needs at least {MIN_KEY_BYTES} (try `openssl rand -hex 32`)")
    return key


def dev_key_path(data_dir: Path) -> Path:
    return data_dir / DEV_KEY_FILE


def ensure_dev_key(data_dir: Path) -> bytes:
    """The embedded stack's key, created once (owner-only) beside the dev server's record: the CLI
    on this machine signs with it, so `--by WHO` counts as verified there and nowhere else."""
    path = dev_key_path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key(path.read_text(), str(path))
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return read_key(path.read_text(), str(path))


def read_dev_key(data_dir: Path) -> bytes | None:
    path = dev_key_path(data_dir)
    try:
        return read_key(path.read_text(), str(path))
    except (FileNotFoundError, PermissionError):
        return None
