"""Approval votes on a waiting step: the four-eyes and one-vote-per-person rules live here.

Workflow-side code (deterministic): the validator refuses what it can before a vote enters
history (a principal that requested the run or already voted); the handler asks the `approver`
rule about the voter as the worker verified it, then compares people, not logins: policy maps
principals to people (`slack:U0ALICE` and `cli:alice` are both alice), so alice can neither
approve her own run from another login nor meet a quorum of two alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterator, Union

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from bot.engine.state import ConfirmRequest, RunStatus, StepStatus, Vote, VoteRequest, VoteResult
    from bot.identity import principals
    from bot.identity.proofs import Keyring, ProofError, confirm_content, vote_content
    from bot.metrics import VOTES_REFUSED_EARLY
    from bot.policy.models import ActorVerdict
    from bot.engine.verdicts import seal_holds

VOTE_REFUSED = "VoteRefused"
CONFIRM_ACTION = "core.confirm"  # its answers are confirm updates; a vote on it can only reject
POLICY_FAILED = "policy could not be evaluated"  # how the workflow's fail-closed deny begins
UNVERIFIED_REFUSED_MAX = 20  # per step: past this many refused votes nobody vouched for, only verified ones are heard
REASON_MAX, NAME_MAX, GROUPS_MAX = 1000, 200, 100  # a vote's free text, as a front door would send it
VOTE_BYTES_MAX = 64 * 1024  # a whole vote, proof included (its principal, name and each group are NAME_MAX)

# The envelope keyrings of the workers in this process, so a validator can refuse a forged proof
# before the update enters history. Validators never run on replay, so reading this is safe.
_VALIDATOR_KEYRINGS: list[Keyring] = []


def register_keyring(keyring: Keyring) -> Callable[[], None]:
    """Let this process's update validators check proofs with `keyring`; returns the undo."""
    _VALIDATOR_KEYRINGS.append(keyring)
    return lambda: _VALIDATOR_KEYRINGS.remove(keyring) if keyring in _VALIDATOR_KEYRINGS else None


def _keyrings() -> Iterator[Keyring]:
    return (k for k in list(_VALIDATOR_KEYRINGS) if k.can_verify)


# The policy engines of the workers in this process, so a validator takes a front door's verdict
# only when it was asked of the policy (and data) this worker would ask: a front door whose
# policy lags, or leads, a rollout sends its votes again without one.
_VALIDATOR_POLICIES: list[Any] = []


def register_policy(engine: Any) -> Callable[[], None]:
    """Let this process's vote validators compare a verdict's policy hash with `engine`'s; returns the undo."""
    _VALIDATOR_POLICIES.append(engine)
    return lambda: _VALIDATOR_POLICIES.remove(engine) if engine in _VALIDATOR_POLICIES else None


def _policy_hashes() -> set[str]:
    return {h for e in list(_VALIDATOR_POLICIES) if (h := getattr(e, "verdict_hash", None))}


def proof_holds(proof: Any, purpose: str, run_id: str, content: Any, principal: str,
                not_before: datetime | None = None, execution: str | None = None) -> bool:
    """Whether a worker keyring of this process verifies `proof` for `principal` (issued no earlier
    than `not_before`, bound to `execution`). For validators only: the worker's activity checks
    again and decides."""
    if proof is None or (not_before is not None and proof.issued_at < not_before):
        return False
    for keyring in _keyrings():
        try:
            actor = keyring.check(proof, purpose, run_id, content, execution=execution)  # type: ignore[arg-type]
        except ProofError:
            continue
        if actor.principal == principal:
            return True
    return False


def policy_failed(verdict: ActorVerdict) -> bool:
    """A deny because policy could not answer (fail closed), not because a rule said no: the
    voter (or canceller) is not remembered as refused, so asking again after the outage works."""
    return verdict.failure is not None or any(r.startswith(POLICY_FAILED) for r in verdict.reasons)


@dataclass
class RefusedVoters:
    """Who a step's `approver` check (or proof check) refused, so their next votes are refused in
    the validator, before they enter history. Keyed by (principal, verified): a vote nobody vouched
    for, refused, does not shut out the real principal, whose votes come with a proof."""

    voters: dict[tuple[str, bool], tuple[str, str]] = field(default_factory=dict)  # -> (why, rule)
    unverified: int = 0
    audited: int = 0

    def remember(self, user: str, verified: bool, proofless: bool, why: str, rule: str, outage: bool) -> None:
        """A refusal by a rule: a verified principal, or one that sent no proof (for its proof-less
        tries only), is refused by the validator from now on; an outage's deny is not held against
        anyone; every unverified refusal counts toward UNVERIFIED_REFUSED_MAX."""
        if (verified or proofless) and not outage:
            self.voters[(user, verified)] = (why[:300], rule)
        if not verified:
            self.unverified += 1

    def earlier(self, user: str, verified: bool, proofless: bool) -> tuple[str, str] | None:
        """(why, rule) of this actor's earlier refusal, if the validator must refuse them again."""
        return self.voters.get((user, verified)) if verified or proofless else None

    def closed_to(self, verified: bool) -> bool:
        """Past UNVERIFIED_REFUSED_MAX unverified refusals only verified actors are heard."""
        return not verified and self.unverified >= UNVERIFIED_REFUSED_MAX


class VoteRefused(ApplicationError):
    """`code` says what kind of refusal (refused: a rule said no; conflict: the step is not in a
    state to vote on; not_found; invalid) and `rule` which check; both travel as the error's
    details, so a front door can answer 403/404/409 without reading the message."""

    def __init__(self, message: str, code: str = "refused", rule: str = "approver") -> None:
        super().__init__(message, {"code": code, "rule": rule}, type=VOTE_REFUSED, non_retryable=True)


Ask = Union[VoteRequest, ConfirmRequest]
ApproverCheck = Callable[[Any], Awaitable[ActorVerdict]]


class ApprovalBook:
    """Counts votes for the steps of one run; `needed` is set when a step starts waiting."""

    def __init__(self, status: RunStatus, requester: str) -> None:
        self._status = status
        self._requester = requester
        self.requester_person = requester  # the worker's admission says who that is
        self._needed: dict[str, int] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self.refused: dict[str, RefusedVoters] = {}
        self._verified: dict[tuple[str, str], bool] = {}  # (step, user) -> the worker verified them (last check)
        self.front_asked: set[tuple[str, str]] = set()  # (step, user) whose check was the front door's verdict

    def open(self, step_id: str, needed: int) -> None:
        self._needed[step_id] = max(1, needed)

    def needed(self, step_id: str) -> int:
        return self._needed.get(step_id, 1)

    def approvals(self, st: StepStatus) -> int:
        return sum(1 for v in st.approvals if v.vote == "approve")

    def decided(self, step_id: str) -> bool:
        st = self._status.step(step_id)
        return any(v.vote == "reject" for v in st.approvals) or self.approvals(st) >= self.needed(step_id)

    def rejected_by(self, step_id: str) -> Vote | None:
        return next((v for v in self._status.step(step_id).approvals if v.vote == "reject"), None)

    def validate(self, request: Ask) -> None:
        """Refuse what can be refused without asking policy; nothing is recorded on refusal."""
        try:
            st = self._status.step(request.step_id)
        except KeyError:
            raise VoteRefused(
                f"run {self._status.run_id} has no step {request.step_id!r}", "not_found", "unknown_step"
            ) from None
        answering = isinstance(request, ConfirmRequest)
        if self._status.finished:  # still open a moment (its last record, Slack), but over
            raise VoteRefused(
                f"run {self._status.run_id!r} has already ended ({self._status.state}): nothing to "
                f"{'answer' if answering else 'vote on'}", "conflict", "run_state",
            )
        if answering and st.action != CONFIRM_ACTION:
            raise VoteRefused(
                f"step {request.step_id!r} is a {st.action} step, not core.confirm: approve or reject it instead",
                "conflict", "step_kind",
            )
        if not answering and st.action == CONFIRM_ACTION and request.vote == "approve":
            raise VoteRefused(
                f"step {request.step_id!r} asks for an answer, not an approval: answer it with "
                f"`playbook-bot confirm RUN {request.step_id} CHOICE` (or reject it)",
                "invalid", "step_kind",
            )
        if st.state != "waiting_approval":
            waiting = "an answer" if st.action == CONFIRM_ACTION else "approval"
            raise VoteRefused(
                f"step {request.step_id!r} is not waiting for {waiting} (it is {st.state})", "conflict", "step_state"
            )
        if self.decided(request.step_id):  # decided by a vote in this same moment: later ones are refused
            raise VoteRefused(f"step {request.step_id!r} has already been decided", "conflict", "step_state")
        if not request.user:
            raise VoteRefused("a vote needs a user id", "invalid", "principal")
        if request.user == self._requester:
            raise VoteRefused(f"{request.user} requested this run and cannot vote on it (four-eyes)", rule="four_eyes")
        if any(v.user == request.user for v in st.approvals):
            raise VoteRefused(
                f"{request.user} has already voted on step {request.step_id!r}", rule="one_vote_per_person"
            )
        if (request.step_id, request.user) in self._in_flight:  # (a click repeated while the first is checked)
            raise VoteRefused(
                f"{request.user} has already voted on step {request.step_id!r} (that vote is being checked; "
                "nothing changed)", rule="one_vote_per_person",
            )

    def screen(self, request: Ask, not_before: datetime | None = None) -> None:
        """The validator's second pass (runs from refused-votes-v1 on): bounded free text; a voter
        this step already refused (a verified one by principal; one who sent no proof, for their
        proof-less votes only, so that nobody can shut the real principal out by voting in their
        name); and, once a step has refused UNVERIFIED_REFUSED_MAX votes nobody vouched for (no
        proof, or one that does not hold), every such vote. A refusal here adds nothing to history
        and changes no state (validators do not run on replay): it is counted in the worker's
        `playbook_bot_votes_refused_early` metric, by rule."""
        if (len(request.reason) > REASON_MAX or len(request.name) > NAME_MAX or len(request.groups) > GROUPS_MAX
                or len(request.user) > NAME_MAX or any(len(g) > NAME_MAX for g in request.groups)
                or len(request.model_dump_json()) > VOTE_BYTES_MAX):  # (each field: it would sit in history)
            VOTES_REFUSED_EARLY.labels("size").inc()
            raise VoteRefused(
                f"a vote's reason is at most {REASON_MAX} characters, its name, principal and each group {NAME_MAX}, "
                f"its groups {GROUPS_MAX}, and the whole vote with its proof {VOTE_BYTES_MAX} bytes",
                "invalid", "size",
            )
        # Anyone who reaches Temporal can put any text here; it would be the refusal's recorded actor.
        if not principals.is_principal(request.user):
            VOTES_REFUSED_EARLY.labels("principal").inc()
            raise VoteRefused(f"a voter is a principal ({principals.FORMS}); nothing changed", "invalid", "principal")
        book = self.refused.get(request.step_id)
        if book is None:
            return
        verified = self._proof_holds(request, not_before)
        earlier = book.earlier(request.user, verified, request.proof is None)
        if earlier is not None:
            why, rule = earlier
            VOTES_REFUSED_EARLY.labels(rule).inc()
            raise VoteRefused(f"{request.user} was already refused on step {request.step_id!r} ({why}); nothing changed",
                              rule=rule)
        if book.closed_to(verified):
            VOTES_REFUSED_EARLY.labels("unverified").inc()
            raise VoteRefused(
                f"step {request.step_id!r} has refused {book.unverified} votes nobody vouched for; it now hears only "
                "verified votes (Slack, the API, or the CLI with the envelope key); nothing changed",
                rule="unverified",
            )

    def check_verdict(self, request: VoteRequest, not_before: datetime | None = None) -> None:
        """The validator's check of a front door's `approver` verdict (engine-v8): the vote's proof
        and the verdict's seal must hold with a key of this worker, and the verdict must have been
        asked of this worker's policy (its hash), or the vote is refused before it is history (rule
        `verdict`; the front door sends it again without one). What the handler trusts on replay,
        where no validator runs, is only what passed here."""
        verdict = request.verdict
        if verdict is None:
            return
        if not (self._proof_holds(request, not_before) and seal_holds(
            verdict, self._status.run_id, self._status.execution, request.step_id, request.proof, _keyrings()
        )):
            VOTES_REFUSED_EARLY.labels("verdict").inc()
            raise VoteRefused(
                "the vote's approver verdict is not sealed to its proof by an envelope key this worker holds; "
                "nothing changed (send the vote without it)", "invalid", "verdict",
            )
        if verdict.policy_hash is None or verdict.policy_hash not in _policy_hashes():
            VOTES_REFUSED_EARLY.labels("verdict").inc()
            raise VoteRefused(
                f"the vote's approver verdict was asked of policy {verdict.policy_hash or '(no hash)'}, not this "
                "worker's; nothing changed (send the vote without it)", "invalid", "verdict",
            )

    def _proof_holds(self, request: Ask, not_before: datetime | None = None) -> bool:
        """Whether a worker keyring of this process verifies the vote's proof for its principal
        (issued no earlier than `not_before`, see the workflow's `_asked_since`, for this execution)."""
        if isinstance(request, ConfirmRequest):
            purpose, content = "confirm", confirm_content(request.step_id, request.answer, request.reason)
        else:
            purpose, content = "vote", vote_content(request.step_id, request.vote, request.reason)
        return proof_holds(request.proof, purpose, self._status.run_id, content, request.user, not_before,
                           self._status.execution)

    def refusal(self, request: Ask, exc: VoteRefused) -> bool:
        """Count a refusal the handler made and, when a rule refused the voter (not a conflict),
        remember them for the validator (see `screen`). True while the step's refusals are still
        audited (each remembered voter's first, and up to the unverified bound)."""
        st = self._status.step(request.step_id)
        st.refused_votes += 1
        info = exc.details[0] if exc.details and isinstance(exc.details[0], dict) else {}
        if info.get("code") != "refused":
            return True  # a conflict (decided meanwhile): on the record as before, and bounded by the step
        verified = self._verified.pop((request.step_id, request.user), False)
        book = self.refused.setdefault(request.step_id, RefusedVoters())
        rule = str(info.get("rule") or "approver")
        book.remember(request.user, verified, request.proof is None, exc.message, rule, rule == "policy_unavailable")
        book.audited += 1
        return book.audited <= UNVERIFIED_REFUSED_MAX + 10

    def verdict_seen(self, request: Ask, verdict: ActorVerdict, front: bool = False) -> None:
        """Whether the worker verified the voter, as its approver check answered (history), and
        whether that check was the front door's verdict."""
        key = (request.step_id, request.user)
        self._verified[key] = bool((verdict.user or {}).get("verified"))
        (self.front_asked.add if front else self.front_asked.discard)(key)

    def asked_front(self, request: Ask) -> bool:
        """Whether this vote's check was its front door's verdict (asked once, as it is recorded)."""
        key = (request.step_id, request.user)
        front = key in self.front_asked
        self.front_asked.discard(key)
        return front

    async def cast(self, request: VoteRequest, check: ApproverCheck) -> tuple[VoteResult, Vote]:
        vote = await self._admit(request, request.vote, check)
        st = self._status.step(request.step_id)
        count, needed = self.approvals(st), self.needed(request.step_id)
        verb = "rejected" if request.vote == "reject" else f"approved ({count}/{needed})"
        result = VoteResult(
            step_id=st.id, step_state=st.state, approvals=count, needed=needed, message=f"{request.user} {verb}"
        )
        return result, vote

    async def answer(self, request: ConfirmRequest, answer: str | int | float, check: ApproverCheck) -> Vote:
        """A core.confirm answer (already checked against the step's choices or input): the same
        four-eyes, one-per-person and `approver` rule as a vote; it decides the step."""
        return await self._admit(request, "approve", check, answer)

    async def _admit(
        self, request: Ask, verdict_vote: str, check: ApproverCheck, answer: str | int | float | None = None
    ) -> Vote:
        self.validate(request)
        key = (request.step_id, request.user)
        self._in_flight.add(key)
        try:
            verdict = await check(request)
        finally:
            self._in_flight.discard(key)
        if not verdict.allow:
            reasons = "; ".join(verdict.reasons) or "the approver policy refused"
            verb = "answer" if isinstance(request, ConfirmRequest) else "approve"
            rule = "policy_unavailable" if policy_failed(verdict) else "approver"
            raise VoteRefused(f"{request.user} may not {verb} step {request.step_id!r}: {reasons}", rule=rule)
        person = verdict.person or request.user
        self.validate(request)  # the step may have been decided while policy was asked
        if person == self.requester_person:
            raise VoteRefused(
                f"{request.user} is {person}, who requested this run ({self._requester}), "
                "and cannot vote on it (four-eyes)",
                rule="four_eyes",
            )
        st = self._status.step(request.step_id)
        earlier = next((v for v in st.approvals if (v.person or v.user) == person), None)
        if earlier is not None:
            raise VoteRefused(
                f"{person} has already voted on step {request.step_id!r} (as {earlier.user}): one vote per person",
                rule="one_vote_per_person",
            )
        user = verdict.user or {}
        vote = Vote(
            user=request.user,
            name=request.name or str(user.get("name") or ""),
            vote=verdict_vote,  # type: ignore[arg-type]
            at=workflow.now(),
            reason=request.reason,
            groups=list(user.get("groups") or []),
            person=person,
            verified=bool(user.get("verified")),
            answer=answer,
        )
        st.approvals.append(vote)
        return vote
