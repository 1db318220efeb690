"""ApprovalBook on its own: four-eyes, one vote per person and quorum, without a workflow.

The workflow tests prove the same rules end to end; these pin each rule and its refusal code to
the line that enforces it (mutation testing found rules the end-to-end tests only crossed once).
`workflow.now()` is the only workflow call the book makes; it is pinned to a fixed instant.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.engine import approvals
from bot.engine.approvals import VOTE_REFUSED, ApprovalBook, VoteRefused
from bot.engine.state import ConfirmRequest, RunStatus, StepStatus, Vote, VoteRequest
from bot.policy.models import ActorVerdict

NOW = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(approvals.workflow, "now", lambda: NOW)


def _book(state: str = "waiting_approval", needed: int = 1, requester: str = "slack:UREQ") -> ApprovalBook:
    status = RunStatus(
        run_id="run-1",
        playbook="restart",
        playbook_hash="h",
        requested_by=requester,
        trigger="slack",
        steps=[StepStatus(id="restart", action="shell.run", state=state), StepStatus(id="prep", action="core.log")],
    )
    book = ApprovalBook(status, requester)
    book.open("restart", needed)
    return book


def _allow(person: str = "", **user: object):
    async def check(request: VoteRequest) -> ActorVerdict:
        return ActorVerdict(allow=True, person=person, user={"verified": True, **user})

    return check


def _deny(*reasons: str):
    async def check(request: VoteRequest) -> ActorVerdict:
        return ActorVerdict(allow=False, reasons=list(reasons))

    return check


def _refusal(excinfo: pytest.ExceptionInfo[VoteRefused]) -> tuple[str, str]:
    err = excinfo.value
    assert err.type == VOTE_REFUSED == "VoteRefused"
    assert err.non_retryable
    code, rule = err.details[0]["code"], err.details[0]["rule"]
    return code, rule


def test_a_refusal_says_its_code_and_rule_and_defaults_to_the_approver_rule() -> None:
    err = VoteRefused("no")
    assert (err.details[0], err.type, err.non_retryable) == ({"code": "refused", "rule": "approver"}, "VoteRefused", True)


def test_quorum_is_at_least_one_and_unopened_steps_need_one() -> None:
    book = _book(needed=0)
    assert book.needed("restart") == 1
    book.open("restart", 3)
    assert book.needed("restart") == 3
    assert book.needed("prep") == 1


def test_decided_by_quorum_or_by_one_reject() -> None:
    book = _book(needed=2)
    st = book._status.step("restart")
    assert not book.decided("restart")
    st.approvals.append(Vote(user="slack:UA", vote="approve", at=NOW))
    assert not book.decided("restart") and book.approvals(st) == 1
    st.approvals.append(Vote(user="slack:UB", vote="approve", at=NOW))
    assert book.decided("restart") and book.approvals(st) == 2
    assert book.rejected_by("restart") is None

    other = _book(needed=5)
    rejection = Vote(user="slack:UC", vote="reject", at=NOW)
    other._status.step("restart").approvals += [Vote(user="slack:UA", vote="approve", at=NOW), rejection]
    assert other.decided("restart")
    assert other.rejected_by("restart") is rejection
    assert other.approvals(other._status.step("restart")) == 1


@pytest.mark.parametrize(
    ("request_", "state", "expected"),
    [
        (VoteRequest(step_id="nope", user="slack:UA"), "waiting_approval", ("not_found", "unknown_step")),
        (VoteRequest(step_id="restart", user="slack:UA"), "running", ("conflict", "step_state")),
        (VoteRequest(step_id="restart", user=""), "waiting_approval", ("invalid", "principal")),
        (VoteRequest(step_id="restart", user="slack:UREQ"), "waiting_approval", ("refused", "four_eyes")),
    ],
    ids=["unknown step", "step not waiting", "no user", "requester"],
)
def test_validate_refuses_with_the_rule_that_applies(request_: VoteRequest, state: str, expected: tuple[str, str]) -> None:
    with pytest.raises(VoteRefused) as excinfo:
        _book(state=state).validate(request_)
    assert _refusal(excinfo) == expected


def test_validate_refuses_a_second_vote_and_a_vote_on_a_decided_step() -> None:
    book = _book(needed=2)
    book._status.step("restart").approvals.append(Vote(user="slack:UA", vote="approve", at=NOW))
    with pytest.raises(VoteRefused) as excinfo:
        book.validate(VoteRequest(step_id="restart", user="slack:UA"))
    assert _refusal(excinfo) == ("refused", "one_vote_per_person")
    book.validate(VoteRequest(step_id="restart", user="slack:UB"))  # a different principal may still vote

    book._status.step("restart").approvals.append(Vote(user="slack:UB", vote="approve", at=NOW))
    with pytest.raises(VoteRefused) as excinfo:
        book.validate(VoteRequest(step_id="restart", user="slack:UC"))
    assert _refusal(excinfo) == ("conflict", "step_state")


async def test_cast_records_the_vote_as_the_worker_verified_it() -> None:
    book = _book(needed=2)
    result, vote = await book.cast(
        VoteRequest(step_id="restart", user="slack:UA", reason="looks right", groups=["claimed"]),
        _allow(person="alice", name="Alice", groups=["sre"]),
    )
    assert vote == Vote(
        user="slack:UA", name="Alice", vote="approve", at=NOW, reason="looks right", groups=["sre"], person="alice",
        verified=True,
    )
    assert (result.step_id, result.step_state, result.approvals, result.needed) == ("restart", "waiting_approval", 1, 2)
    assert result.message == "slack:UA approved (1/2)"
    assert book._status.step("restart").approvals == [vote]


async def test_cast_keeps_the_voters_own_name_and_falls_back_to_the_principal_as_person() -> None:
    book = _book()
    result, vote = await book.cast(
        VoteRequest(step_id="restart", user="cli:bob", name="Bob B", vote="reject"),
        _allow(name="ignored"),
    )
    assert (vote.name, vote.person, vote.vote, vote.groups) == ("Bob B", "cli:bob", "reject", [])
    assert result.message == "cli:bob rejected"
    assert vote.verified is True

    _, unverified = await _book().cast(VoteRequest(step_id="restart", user="cli:eve"), _allow_bare())
    assert (unverified.verified, unverified.name) == (False, "")


def _allow_bare():
    async def check(request: VoteRequest) -> ActorVerdict:
        return ActorVerdict(allow=True)

    return check


async def test_cast_refuses_what_policy_refuses_with_its_reasons() -> None:
    book = _book()
    with pytest.raises(VoteRefused) as excinfo:
        await book.cast(VoteRequest(step_id="restart", user="slack:UA"), _deny("not on call", "not in sre"))
    assert _refusal(excinfo) == ("refused", "approver")
    assert "not on call; not in sre" in str(excinfo.value)
    with pytest.raises(VoteRefused) as excinfo:
        await book.cast(VoteRequest(step_id="restart", user="slack:UA"), _deny())
    assert "the approver policy refused" in str(excinfo.value)
    assert book._status.step("restart").approvals == []


async def test_cast_compares_people_not_logins() -> None:
    book = _book(needed=2)
    book.requester_person = "alice"
    with pytest.raises(VoteRefused) as excinfo:  # alice requested from Slack and approves from the CLI
        await book.cast(VoteRequest(step_id="restart", user="cli:alice"), _allow(person="alice"))
    assert _refusal(excinfo) == ("refused", "four_eyes")

    await book.cast(VoteRequest(step_id="restart", user="slack:UBOB"), _allow(person="bob"))
    with pytest.raises(VoteRefused) as excinfo:  # bob again, from another login: one vote per person
        await book.cast(VoteRequest(step_id="restart", user="cli:bob"), _allow(person="bob"))
    assert _refusal(excinfo) == ("refused", "one_vote_per_person")
    assert len(book._status.step("restart").approvals) == 1


async def test_a_vote_in_flight_blocks_a_second_vote_by_the_same_principal_until_policy_answers() -> None:
    book = _book(needed=2)
    seen: list[str] = []

    async def check(request: VoteRequest) -> ActorVerdict:
        with pytest.raises(VoteRefused) as excinfo:
            book.validate(VoteRequest(step_id="restart", user="slack:UA"))
        seen.append(_refusal(excinfo)[1])
        book.validate(VoteRequest(step_id="restart", user="slack:UB"))
        return ActorVerdict(allow=True)

    await book.cast(VoteRequest(step_id="restart", user="slack:UA"), check)
    assert seen == ["one_vote_per_person"]
    assert book._in_flight == set()

    async def failing(request: VoteRequest) -> ActorVerdict:
        raise RuntimeError("policy down")

    with pytest.raises(RuntimeError):
        await book.cast(VoteRequest(step_id="restart", user="slack:UC"), failing)
    assert book._in_flight == set()  # a failed policy call does not lock the voter out


async def test_cast_revalidates_after_policy_answers() -> None:
    book = _book()

    async def decided_meanwhile(request: VoteRequest) -> ActorVerdict:
        book._status.step("restart").approvals.append(Vote(user="slack:UB", vote="approve", at=NOW))
        return ActorVerdict(allow=True)

    with pytest.raises(VoteRefused) as excinfo:
        await book.cast(VoteRequest(step_id="restart", user="slack:UA"), decided_meanwhile)
    assert _refusal(excinfo) == ("conflict", "step_state")
    assert [v.user for v in book._status.step("restart").approvals] == ["slack:UB"]


async def test_without_admissions_answer_the_requester_is_their_own_person() -> None:
    book = _book(requester="cli:alice")
    with pytest.raises(VoteRefused) as excinfo:  # policy says this Slack login is the person "cli:alice"
        await book.cast(VoteRequest(step_id="restart", user="slack:UALICE"), _allow(person="cli:alice"))
    assert _refusal(excinfo) == ("refused", "four_eyes")
    assert "who requested this run (cli:alice)" in str(excinfo.value)


async def test_refusals_say_what_was_wrong() -> None:
    """The voter reads these in Slack or the CLI: each says which rule and who."""

    async def refused(book: ApprovalBook, request: VoteRequest, check=None) -> str:
        with pytest.raises(VoteRefused) as excinfo:
            if check is None:
                book.validate(request)
            else:
                await book.cast(request, check)
        return excinfo.value.message

    book = _book(needed=2)
    vote = VoteRequest(step_id="restart", user="slack:UA")
    assert await refused(book, VoteRequest(step_id="nope", user="slack:UA")) == "run run-1 has no step 'nope'"
    assert await refused(_book(state="running"), vote) == "step 'restart' is not waiting for approval (it is running)"
    assert await refused(book, VoteRequest(step_id="restart", user="")) == "a vote needs a user id"
    assert await refused(book, VoteRequest(step_id="restart", user="slack:UREQ")) == (
        "slack:UREQ requested this run and cannot vote on it (four-eyes)"
    )
    assert await refused(book, vote, _deny("not on call")) == "slack:UA may not approve step 'restart': not on call"
    assert await refused(book, vote, _deny()) == "slack:UA may not approve step 'restart': the approver policy refused"
    book.requester_person = "alice"
    assert await refused(book, VoteRequest(step_id="restart", user="cli:alice"), _allow(person="alice")) == (
        "cli:alice is alice, who requested this run (slack:UREQ), and cannot vote on it (four-eyes)"
    )
    await book.cast(VoteRequest(step_id="restart", user="slack:UB"), _allow(person="bob"))
    assert await refused(book, VoteRequest(step_id="restart", user="slack:UB")) == (
        "slack:UB has already voted on step 'restart'"
    )
    assert await refused(book, VoteRequest(step_id="restart", user="cli:bob"), _allow(person="bob")) == (
        "bob has already voted on step 'restart' (as slack:UB): one vote per person"
    )
    await book.cast(VoteRequest(step_id="restart", user="slack:UC"), _allow(person="carol"))
    assert await refused(book, VoteRequest(step_id="restart", user="slack:UD")) == "step 'restart' has already been decided"


def _confirm_book(state: str = "waiting_approval") -> ApprovalBook:
    book = _book(state=state)
    book._status.steps.append(StepStatus(id="pick", action="core.confirm", state=state))
    book.open("pick", 1)
    return book


async def test_answers_go_to_confirm_steps_and_votes_to_the_others() -> None:
    """A core.confirm step takes answers (and rejections); an approval step takes votes only."""
    async def refused(book: ApprovalBook, request) -> tuple[str, str, str]:
        with pytest.raises(VoteRefused) as excinfo:
            book.validate(request)
        return (*_refusal(excinfo), excinfo.value.message)

    book = _confirm_book()
    assert await refused(book, ConfirmRequest(step_id="restart", user="slack:UA", answer="go")) == (
        "conflict", "step_kind",
        "step 'restart' is a shell.run step, not core.confirm: approve or reject it instead",
    )
    assert await refused(book, VoteRequest(step_id="pick", user="slack:UA")) == (
        "invalid", "step_kind",
        "step 'pick' asks for an answer, not an approval: answer it with `playbook-bot confirm RUN pick CHOICE` "
        "(or reject it)",
    )
    book.validate(VoteRequest(step_id="pick", user="slack:UA", vote="reject"))  # declining is a vote
    book.validate(ConfirmRequest(step_id="pick", user="slack:UA", answer="go"))
    book.validate(VoteRequest(step_id="restart", user="slack:UA"))

    done = _confirm_book(state="succeeded")
    assert await refused(done, ConfirmRequest(step_id="pick", user="slack:UA", answer="go")) == (
        "conflict", "step_state", "step 'pick' is not waiting for an answer (it is succeeded)",
    )


async def test_an_answer_is_recorded_as_an_approving_vote_carrying_the_answer() -> None:
    book = _confirm_book()
    vote = await book.answer(ConfirmRequest(step_id="pick", user="slack:UA", answer="scale", reason="cheaper"),
                             "scale", _allow(person="alice"))
    assert (vote.vote, vote.answer, vote.person, vote.reason) == ("approve", "scale", "alice", "cheaper")
    assert book.decided("pick")
    with pytest.raises(VoteRefused) as excinfo:
        await _confirm_book().answer(ConfirmRequest(step_id="pick", user="slack:UB", answer="go"), "go", _deny())
    assert excinfo.value.message == "slack:UB may not answer step 'pick': the approver policy refused"


@pytest.mark.parametrize("verdict", [
    ActorVerdict(allow=False, reasons=["policy could not be evaluated: activity timed out"]),  # the workflow's fail-closed
    ActorVerdict(allow=False, reasons=["opa unreachable"], failure="unreachable"),  # the engine's, last attempt
])
async def test_a_voter_denied_because_policy_could_not_answer_is_not_shut_out(verdict: ActorVerdict) -> None:
    """Fail closed is a deny for now, not a verdict on the voter: the validator must not refuse
    their next vote as 'already refused' (red team: an approver who clicked during an OPA outage
    could never approve that step; an attacker who can slow the policy engine picks who)."""
    book = _book()
    request = VoteRequest(step_id="restart", user="slack:UBOB")

    async def outage(request: VoteRequest) -> ActorVerdict:
        return verdict

    with pytest.raises(VoteRefused) as refused:
        await book.cast(request, outage)
    assert book.refusal(request, refused.value)
    book.screen(request)  # heard again
    result, vote = await book.cast(request, _allow())
    assert vote.user == "slack:UBOB" and result.approvals == 1
