"""What the shipped policy should answer: decision fixtures written by hand from its intent.

The intent is the header of policies/playbook/authz/authz.rego and DESIGN.md's "Policy contract"
and "Identity and trust": fail safe everywhere, four-eyes between people, unverified principals
neither approve nor cancel in production, requester-chosen facts only ever make an answer
stricter. Nothing here is computed by, or imported from, the code under test: every expected
answer is spelled out, so the embedded engine (the real Rego) and the OPA backend (talking to the
fake OPA, which answers from these fixtures) are both compared with an oracle of their own.

A case names the data it assumes (`data`): the shipped data.json as it is ("shipped"), an
organisation with people, groups, restrictions and freezes ("org", ORG_DATA), or data with a
typo in a freeze window ("broken", BROKEN_DATA). Expected answers are whole documents, as OPA
would return them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

# --- the data each scenario loads at data.playbook ----------------------------------------

ORG_DATA: dict[str, Any] = {
    "freezes": [
        {"start": "2025-12-20T00:00:00Z", "end": "2026-01-02T00:00:00Z", "reason": "year-end freeze"},
        {
            "start": "2025-06-01T00:00:00Z",
            "end": "2025-06-02T00:00:00Z",
            "reason": "production migration",
            "environments": ["production"],
        },
        {
            "start": "2025-07-01T00:00:00+02:00",
            "end": "2025-07-01T12:00:00+02:00",
            "reason": "staging rebuild",
            "environments": ["staging"],
        },
        # Typos an operator can make: a bare string for the list, and capitals.
        {
            "start": "2025-09-01T00:00:00Z",
            "end": "2025-09-02T00:00:00Z",
            "reason": "datacenter move",
            "environments": "staging",
        },
        {
            "start": "2025-10-01T00:00:00Z",
            "end": "2025-10-02T00:00:00Z",
            "reason": "audit week",
            "environments": ["Production"],
        },
    ],
    "groups": {"sre-oncall": ["api:dave", "erin"], "db-admins": ["slack:U0FRANK"]},
    "people": {
        "alice": ["slack:U0ALICE", "cli:alice", "api:alice-laptop"],
        "bob": ["slack:U0BOB", "api:bob"],
        "erin": ["cli:erin", "api:erin"],
        "mallory": ["slack:U0MALLORY"],
    },
    "non_production_environments": ["staging", "dev"],
    "approval_timeout": "30m",
    "start_restrictions": {"drop-database": ["db-admins"], "wipe-cache": "db-admins"},
    "start_denylist": ["api:ci-bot", "mallory"],
}

INVALID_WINDOW = {"start": "soon", "end": "later", "reason": "typo"}

BROKEN_DATA: dict[str, Any] = {
    "freezes": [INVALID_WINDOW],
    "groups": {},
    "people": {},
    "non_production_environments": ["staging"],
    "approval_timeout": "15m",
    "start_restrictions": {},
    "start_denylist": [],
}

SCENARIOS = ("shipped", "org", "broken")

# --- inputs --------------------------------------------------------------------------------

PLAYBOOK = {"name": "restart-service", "owner": "sre-oncall", "hash": "sha256:abc"}
HIGH = {"id": "restart", "action": "http.request", "impact": "high", "with": {"method": "POST"}}
LOW = {"id": "note", "action": "core.log", "impact": "low", "with": {"message": "hi"}}
SHELL = {"id": "kill", "action": "shell.run", "impact": "high", "with": {"argv": ["true"]}}
NOW = "2025-03-01T10:00:00Z"

ALICE_VERIFIED = {"principal": "slack:U0ALICE", "person": "alice", "verified": True, "verified_by": "slack"}
RUN = {
    "id": "run-1",
    "trigger": "slack",
    "requested_by": "slack:U0ALICE",
    "started_at": "2025-03-01T09:00:00Z",
    "state": "running",
    "requester": ALICE_VERIFIED,
}
ALERT_RUN = {**RUN, "trigger": "alertmanager", "requested_by": "alertmanager", "requester": None}

# The environment is the playbook file's own default: a fact an authenticated source vouches for.
TRUSTED = {"params": {"service": "requester", "environment": "playbook"}, "alert": None}
REQUESTED = {"params": {"service": "requester", "environment": "requester"}, "alert": None}
VERIFIED_ALERT = {"params": {}, "alert": {"source": "alertmanager", "verified": True}}
FORGED_ALERT = {"params": {}, "alert": {"source": "alertmanager", "verified": False}}
CRITICAL = {"labels": {"alertname": "ServiceDown", "severity": "critical"}}

BOB = {"id": "slack:U0BOB", "name": "Bob", "groups": ["sre-oncall"], "verified": True}
CAROL = {"id": "slack:U0CAROL", "name": "Carol", "groups": ["marketing"], "verified": True}
DAVE = {"id": "api:dave", "name": "dave", "groups": [], "verified": True}
ERIN = {"id": "cli:erin", "name": "erin", "groups": [], "verified": True}
FRANK = {"id": "slack:U0FRANK", "name": "Frank", "groups": [], "verified": True}
ALICE = {"id": "slack:U0ALICE", "name": "Alice", "groups": ["sre-oncall"], "verified": True}
ALERTMANAGER = {"id": "alertmanager", "name": "alertmanager", "groups": [], "verified": True}

# The request a run from before proofs sends (no `requester`, a bare name): the shipped
# policy's everyday question in the other policy tests.
BASE_INPUT: dict[str, Any] = {
    "playbook": PLAYBOOK,
    "step": HIGH,
    "run": {"id": "run-1", "trigger": "cli", "requested_by": "alice", "started_at": "2025-03-01T09:00:00Z"},
    "params": {"service": "api", "environment": "production"},
    "alert": None,
    "approvals": [],
    "now": NOW,
    "provenance": TRUSTED,
}


def step_input(**changes: Any) -> dict[str, Any]:
    """The decision/approver input for a high-impact step in production, with fields replaced
    (a value of ... removes the field)."""
    doc = {
        "playbook": PLAYBOOK,
        "step": HIGH,
        "run": RUN,
        "params": {"service": "api", "environment": "production"},
        "alert": None,
        "approvals": [],
        "now": NOW,
        "provenance": TRUSTED,
    }
    return _changed(doc, changes)


def run_input(**changes: Any) -> dict[str, Any]:
    """The start/cancel input (no step)."""
    doc = step_input()
    del doc["step"]
    return _changed(doc, changes)


def _changed(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for key, value in changes.items():
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = copy.deepcopy(value)
    return doc


# --- answers -------------------------------------------------------------------------------


def deny(*reasons: str) -> dict[str, Any]:
    return {
        "allow": False,
        "require_approval": False,
        "min_approvals": 0,
        "approver_groups": [],
        "approval_timeout": None,
        "reasons": list(reasons),
    }


def runs(*reasons: str) -> dict[str, Any]:
    return {**deny(*reasons), "allow": True}


def needs(count: int, *reasons: str, timeout: str = "30m") -> dict[str, Any]:
    return {
        "allow": True,
        "require_approval": True,
        "min_approvals": count,
        "approver_groups": ["sre-oncall"],
        "approval_timeout": timeout,
        "reasons": list(reasons),
    }


def verdict(allow: bool, *reasons: str, person: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"allow": allow, "reasons": list(reasons)}
    if person is not None:
        doc["person"] = person
    return doc


ONE = "high impact step in production needs 1 approval(s) from sre-oncall"
TWO = "shell.run in production needs 2 approval(s) from sre-oncall"
YEAR_END = "change freeze 2025-12-20T00:00:00Z until 2026-01-02T00:00:00Z: year-end freeze"
MIGRATION = "change freeze 2025-06-01T00:00:00Z until 2025-06-02T00:00:00Z: production migration"
REBUILD = "change freeze 2025-07-01T00:00:00+02:00 until 2025-07-01T12:00:00+02:00: staging rebuild"
MOVE = "change freeze 2025-09-01T00:00:00Z until 2025-09-02T00:00:00Z: datacenter move"
AUDIT = "change freeze 2025-10-01T00:00:00Z until 2025-10-02T00:00:00Z: audit week"
TYPO = 'invalid change freeze window (treated as active): {"end": "later", "reason": "typo", "start": "soon"}'
UNVERIFIED_REQUESTER = (
    "high impact step in production: the run's requester slack:U0ALICE is unverified (the run reached Temporal "
    "directly), so no approval could tell them from the approver (four-eyes); start it through Slack, the API or "
    "the dev stack's CLI"
)


def unverified(principal: str, what: str) -> str:
    return (
        f"{principal} is unverified (it reached Temporal directly): in production only a verified principal may "
        f"{what}; use Slack or the API"
    )


def may_not_cancel(principal: str) -> str:
    return f"{principal} may not cancel runs of restart-service: only its requester or members of sre-oncall may"


# --- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    rule: str  # decision | approver | start | cancel
    input: dict[str, Any]
    want: dict[str, Any]
    data: str = "org"

    @property
    def id(self) -> str:
        return f"{self.data}/{self.rule}/{self.name}"


def _requester(**changes: Any) -> dict[str, Any]:
    return {**RUN, "requester": {**ALICE_VERIFIED, **changes}}


DECISIONS = [
    # impact and environment
    Case("low impact runs", "decision", step_input(step=LOW), runs("low impact step")),
    Case("high impact in production needs an owner's approval", "decision", step_input(), needs(1, ONE)),
    Case("shell.run in production needs two", "decision", step_input(step=SHELL), needs(2, TWO)),
    Case("an impact that is not low is high", "decision", step_input(step={**HIGH, "impact": "medium"}), needs(1, ONE)),
    Case(
        "the playbook's staging runs without approval",
        "decision",
        step_input(params={"environment": "staging"}),
        runs("high impact step outside production (staging)"),
    ),
    Case(
        "shell.run in staging runs",
        "decision",
        step_input(step=SHELL, params={"environment": "staging"}),
        runs("high impact step outside production (staging)"),
    ),
    Case(
        "environments are compared in lower case",
        "decision",
        step_input(params={"environment": "STAGING"}),
        runs("high impact step outside production (STAGING)"),
    ),
    Case("no environment is production", "decision", step_input(params={}), needs(1, ONE)),
    Case("an unknown environment is production", "decision", step_input(params={"environment": "prd"}), needs(1, ONE)),
    Case(
        "an environment that is not a string is production",
        "decision",
        step_input(params={"environment": ["staging"]}),
        needs(1, ONE),
    ),
    # provenance
    Case(
        "a requester's staging does not lift production approvals",
        "decision",
        step_input(params={"environment": "staging"}, provenance=REQUESTED),
        needs(1, ONE),
    ),
    Case(
        "an input without provenance counts as requester-chosen",
        "decision",
        step_input(params={"environment": "staging"}, provenance=...),
        needs(1, ONE),
    ),
    Case(
        "a param an authenticated alert's template filled is trusted",
        "decision",
        step_input(
            params={"environment": "staging"},
            alert={"labels": {"environment": "staging"}},
            provenance={"params": {"environment": "alert"}, "alert": {"source": "alertmanager", "verified": True}},
        ),
        runs("high impact step outside production (staging)"),
    ),
    Case(
        "an authenticated alert's environment label counts",
        "decision",
        step_input(params={}, alert={"labels": {"environment": "staging"}}, provenance=VERIFIED_ALERT),
        runs("high impact step outside production (staging)"),
    ),
    Case(
        "an unauthenticated alert's environment label does not",
        "decision",
        step_input(params={}, alert={"labels": {"environment": "staging"}}, provenance=FORGED_ALERT),
        needs(1, ONE),
    ),
    Case(
        "a requester's production puts an authenticated staging alert's step in production",
        "decision",
        step_input(
            params={"environment": "production"},
            alert={"labels": {"environment": "staging"}},
            provenance={"params": {"environment": "requester"}, "alert": {"source": "alertmanager", "verified": True}},
        ),
        needs(1, ONE),
    ),
    Case(
        "a requester's staging agreeing with an authenticated staging alert runs",
        "decision",
        step_input(
            params={"environment": "staging"},
            alert={"labels": {"environment": "staging"}},
            provenance={"params": {"environment": "requester"}, "alert": {"source": "alertmanager", "verified": True}},
        ),
        runs("high impact step outside production (staging)"),
    ),
    # who asked
    Case(
        "an unverified requester's production step is denied",
        "decision",
        step_input(run=_requester(verified=False, verified_by=None)),
        deny(UNVERIFIED_REQUESTER),
    ),
    Case(
        "an unverified requester's shell.run is denied",
        "decision",
        step_input(step=SHELL, run=_requester(verified=False, verified_by=None)),
        deny(UNVERIFIED_REQUESTER.replace("high impact step in production", "shell.run in production")),
    ),
    Case(
        "an unverified requester's staging step runs",
        "decision",
        step_input(params={"environment": "staging"}, run=_requester(verified=False, verified_by=None)),
        runs("high impact step outside production (staging)"),
    ),
    Case(
        "an unverified requester's low impact step runs",
        "decision",
        step_input(step=LOW, run=_requester(verified=False, verified_by=None)),
        runs("low impact step"),
    ),
    Case(
        "a run from before proofs (no requester) is put to a vote",
        "decision",
        step_input(run={k: v for k, v in RUN.items() if k != "requester"}),
        needs(1, ONE),
    ),
    # freezes
    Case("a freeze everywhere denies production", "decision", step_input(now="2025-12-24T12:00:00Z"), deny(YEAR_END)),
    Case(
        "a freeze everywhere denies staging",
        "decision",
        step_input(now="2025-12-24T12:00:00Z", params={"environment": "staging"}),
        deny(YEAR_END),
    ),
    Case(
        "a freeze does not touch low impact",
        "decision",
        step_input(now="2025-12-24T12:00:00Z", step=LOW),
        runs("low impact step"),
    ),
    Case("a freeze starts at its start", "decision", step_input(now="2025-12-20T00:00:00Z"), deny(YEAR_END)),
    Case("a freeze ends at its end", "decision", step_input(now="2026-01-02T00:00:00Z"), needs(1, ONE)),
    Case(
        "an authenticated critical alert overrides a freeze, still with approval",
        "decision",
        step_input(
            now="2025-12-24T12:00:00Z",
            alert=CRITICAL,
            provenance={**TRUSTED, "alert": {"source": "alertmanager", "verified": True}},
        ),
        needs(1, ONE, f"critical alert overrides {YEAR_END}"),
    ),
    Case(
        "an unauthenticated critical alert does not override a freeze",
        "decision",
        step_input(
            now="2025-12-24T12:00:00Z",
            alert=CRITICAL,
            provenance={**TRUSTED, "alert": {"source": "alertmanager", "verified": False}},
        ),
        deny(YEAR_END),
    ),
    Case(
        "a production freeze denies production",
        "decision",
        step_input(now="2025-06-01T12:00:00Z"),
        deny(MIGRATION),
    ),
    Case(
        "a production freeze spares the playbook's staging",
        "decision",
        step_input(now="2025-06-01T12:00:00Z", params={"environment": "staging"}),
        runs("high impact step outside production (staging)"),
    ),
    Case(
        "a production freeze holds a requester's staging (production for the policy)",
        "decision",
        step_input(now="2025-06-01T12:00:00Z", params={"environment": "staging"}, provenance=REQUESTED),
        deny(MIGRATION),
    ),
    Case(
        "a production freeze holds an unknown environment (production for the policy)",
        "decision",
        step_input(now="2025-06-01T12:00:00Z", params={"environment": "prd"}),
        deny(MIGRATION),
    ),
    Case(
        "a production freeze holds a step with no environment",
        "decision",
        step_input(now="2025-06-01T12:00:00Z", params={}),
        deny(MIGRATION),
    ),
    Case(
        "a staging freeze with offsets denies staging inside its window",
        "decision",
        step_input(now="2025-07-01T09:59:59Z", params={"environment": "staging"}),
        deny(REBUILD),
    ),
    Case(
        "a staging freeze with offsets ends at its end",
        "decision",
        step_input(now="2025-07-01T10:00:00Z", params={"environment": "staging"}),
        runs("high impact step outside production (staging)"),
    ),
    Case(
        "a staging freeze spares production",
        "decision",
        step_input(now="2025-07-01T09:00:00Z"),
        needs(1, ONE),
    ),
    Case(
        "a requester's staging is held by a staging freeze too",
        "decision",
        step_input(now="2025-07-01T09:00:00Z", params={"environment": "staging"}, provenance=REQUESTED),
        deny(REBUILD),
    ),
    Case(
        "a freeze whose environments is not a list applies everywhere",
        "decision",
        step_input(now="2025-09-01T12:00:00Z"),
        deny(MOVE),
    ),
    Case(
        "a freeze's environments are compared in lower case",
        "decision",
        step_input(now="2025-10-01T12:00:00Z"),
        deny(AUDIT),
    ),
    Case(
        "a freeze in capitals spares staging",
        "decision",
        step_input(now="2025-10-01T12:00:00Z", params={"environment": "staging"}),
        runs("high impact step outside production (staging)"),
    ),
    # a freeze window that does not parse
    Case("an invalid freeze window is active", "decision", step_input(), deny(TYPO), data="broken"),
    Case(
        "an invalid freeze window is active outside production too",
        "decision",
        step_input(params={"environment": "staging"}),
        deny(TYPO),
        data="broken",
    ),
    Case(
        "a critical alert overrides an invalid window",
        "decision",
        step_input(alert=CRITICAL, provenance={**TRUSTED, "alert": {"source": "alertmanager", "verified": True}}),
        needs(1, ONE, f"critical alert overrides {TYPO}", timeout="15m"),
        data="broken",
    ),
    # bad inputs
    Case(
        "an empty input names every gap",
        "decision",
        {},
        deny("missing input.now", "missing input.playbook", "missing input.run", "missing input.step"),
    ),
    Case("a missing step", "decision", step_input(step=...), deny("missing input.step")),
    Case(
        "a step without action or impact",
        "decision",
        step_input(step={"id": "x"}),
        deny("missing input.step.action", "missing input.step.impact"),
    ),
    Case("an empty impact", "decision", step_input(step={**HIGH, "impact": ""}), deny("missing input.step.impact")),
    Case(
        "a playbook without owner",
        "decision",
        step_input(playbook={"name": "restart-service"}),
        deny("missing input.playbook.owner"),
    ),
    Case(
        "a playbook that is a string", "decision", step_input(playbook="restart-service"), deny("missing input.playbook")
    ),
    Case("a run that is a string", "decision", step_input(run="run-1"), deny("missing input.run")),
    Case("a missing now", "decision", step_input(now=...), deny("missing input.now")),
    Case("a now that is a number", "decision", step_input(now=1740823200), deny("missing input.now")),
    Case(
        "a now that is not a timestamp",
        "decision",
        step_input(now="tomorrow"),
        deny("invalid input.now: expected an RFC3339 timestamp"),
    ),
]

APPROVERS = [
    Case(
        "an owner group member may approve",
        "approver",
        step_input(user=BOB),
        verdict(True, "slack:U0BOB is in approver group sre-oncall", person="bob"),
    ),
    Case(
        "the requester may not approve",
        "approver",
        step_input(user=ALICE),
        verdict(False, "slack:U0ALICE requested this run and cannot approve it", person="alice"),
    ),
    Case(
        "the requester may not approve from another login",
        "approver",
        step_input(user={**ALICE, "id": "cli:alice"}),
        verdict(
            False,
            "cli:alice is alice, who requested this run (as slack:U0ALICE), and cannot approve it",
            person="alice",
        ),
    ),
    Case(
        "someone outside the owner group may not approve",
        "approver",
        step_input(user=CAROL),
        verdict(False, "slack:U0CAROL is not in an approver group (sre-oncall)", person="slack:U0CAROL"),
    ),
    Case(
        "a principal the data puts in the owner group may approve",
        "approver",
        step_input(user=DAVE),
        verdict(True, "api:dave is in approver group sre-oncall", person="api:dave"),
    ),
    Case(
        "a person the data puts in the owner group may approve from any login",
        "approver",
        step_input(user=ERIN),
        verdict(True, "cli:erin is in approver group sre-oncall", person="erin"),
    ),
    Case(
        "an unverified principal may not approve in production",
        "approver",
        step_input(user={**BOB, "verified": False}),
        verdict(False, unverified("slack:U0BOB", "approve"), person="bob"),
    ),
    Case(
        "a principal without `verified` is unverified",
        "approver",
        step_input(user={k: v for k, v in BOB.items() if k != "verified"}),
        verdict(False, unverified("slack:U0BOB", "approve"), person="bob"),
    ),
    Case(
        "an unverified principal may approve outside production",
        "approver",
        step_input(user={**DAVE, "verified": False}, params={"environment": "staging"}),
        verdict(True, "api:dave is in approver group sre-oncall", person="api:dave"),
    ),
    Case(
        "a requester's staging keeps the approver check of production",
        "approver",
        step_input(user={**DAVE, "verified": False}, params={"environment": "staging"}, provenance=REQUESTED),
        verdict(False, unverified("api:dave", "approve"), person="api:dave"),
    ),
    Case(
        "a user without groups is in none",
        "approver",
        step_input(user={"id": "slack:U0GRACE", "verified": True}),
        verdict(False, "slack:U0GRACE is not in an approver group (sre-oncall)", person="slack:U0GRACE"),
    ),
    Case(
        "an empty input names every gap",
        "approver",
        {},
        verdict(False, "missing input.playbook", "missing input.run", "missing input.user"),
    ),
    Case("a missing user", "approver", step_input(), verdict(False, "missing input.user")),
    Case(
        "a user id that is not a string",
        "approver",
        step_input(user={**BOB, "id": 7}),
        verdict(False, "missing input.user.id"),
    ),
    Case(
        "a run without requester",
        "approver",
        step_input(user=BOB, run={"id": "run-1"}),
        verdict(False, "missing input.run.requested_by", person="bob"),
    ),
    Case(
        "a playbook without owner",
        "approver",
        step_input(user=BOB, playbook={"name": "restart-service"}),
        verdict(False, "missing input.playbook.owner", person="bob"),
    ),
]

STARTS = [
    Case(
        "anyone may start an unrestricted playbook", "start", run_input(user=CAROL), verdict(True, person="slack:U0CAROL")
    ),
    Case(
        "an unverified principal may start an unrestricted playbook",
        "start",
        run_input(user={**CAROL, "verified": False}),
        verdict(True, person="slack:U0CAROL"),
    ),
    Case(
        "the answer names the person",
        "start",
        run_input(user={**ALICE, "id": "api:alice-laptop"}),
        verdict(True, person="alice"),
    ),
    Case(
        "a denylisted principal may not start",
        "start",
        run_input(user={**DAVE, "id": "api:ci-bot"}),
        verdict(False, "api:ci-bot may not start playbooks (start_denylist)", person="api:ci-bot"),
    ),
    Case(
        "a denylisted person may not start from any login",
        "start",
        run_input(user={**CAROL, "id": "slack:U0MALLORY"}),
        verdict(False, "slack:U0MALLORY may not start playbooks (start_denylist)", person="mallory"),
    ),
    Case(
        "a member the data names may start a restricted playbook",
        "start",
        run_input(user=FRANK, playbook={**PLAYBOOK, "name": "drop-database"}),
        verdict(True, person="slack:U0FRANK"),
    ),
    Case(
        "a member by Slack group may start a restricted playbook",
        "start",
        run_input(user={**CAROL, "groups": ["db-admins"]}, playbook={**PLAYBOOK, "name": "drop-database"}),
        verdict(True, person="slack:U0CAROL"),
    ),
    Case(
        "an outsider may not start a restricted playbook",
        "start",
        run_input(user=CAROL, playbook={**PLAYBOOK, "name": "drop-database"}),
        verdict(False, "drop-database may only be started by members of db-admins", person="slack:U0CAROL"),
    ),
    Case(
        "an unverified member may not start a restricted playbook",
        "start",
        run_input(user={**FRANK, "verified": False}, playbook={**PLAYBOOK, "name": "drop-database"}),
        verdict(
            False,
            "drop-database may only be started by members of db-admins; slack:U0FRANK is unverified (it reached "
            "Temporal directly), so its membership cannot count: use Slack or the API",
            person="slack:U0FRANK",
        ),
    ),
    Case(
        "a restriction that is not a list still restricts (nobody may start)",
        "start",
        run_input(user=FRANK, playbook={**PLAYBOOK, "name": "wipe-cache"}),
        verdict(
            False,
            "wipe-cache may not be started by anyone: its start_restrictions entry must be a list of groups",
            person="slack:U0FRANK",
        ),
    ),
    Case("an empty input names every gap", "start", {}, verdict(False, "missing input.playbook", "missing input.user")),
    Case(
        "a playbook without name",
        "start",
        run_input(user=BOB, playbook={"owner": "sre-oncall"}),
        verdict(False, "missing input.playbook.name", person="bob"),
    ),
]

CANCELS = [
    Case(
        "the requester may cancel",
        "cancel",
        run_input(user=ALICE),
        verdict(True, "slack:U0ALICE requested this run", person="alice"),
    ),
    Case(
        "the requester may cancel from another login",
        "cancel",
        run_input(user={**ALICE, "id": "cli:alice", "groups": []}),
        verdict(True, "cli:alice requested this run", person="alice"),
    ),
    Case(
        "an owner group member may cancel",
        "cancel",
        run_input(user=BOB),
        verdict(True, "slack:U0BOB is in the owner group sre-oncall", person="bob"),
    ),
    Case(
        "a member the data names may cancel",
        "cancel",
        run_input(user=DAVE),
        verdict(True, "api:dave is in the owner group sre-oncall", person="api:dave"),
    ),
    Case(
        "an outsider may not cancel",
        "cancel",
        run_input(user=CAROL),
        verdict(False, may_not_cancel("slack:U0CAROL"), person="slack:U0CAROL"),
    ),
    Case(
        "an unverified requester may not cancel in production",
        "cancel",
        run_input(user={**ALICE, "verified": False}),
        verdict(False, unverified("slack:U0ALICE", "cancel"), person="alice"),
    ),
    Case(
        "an unverified requester may cancel outside production",
        "cancel",
        run_input(user={**ALICE, "verified": False}, params={"environment": "staging"}),
        verdict(True, "slack:U0ALICE requested this run", person="alice"),
    ),
    Case(
        "a requester's staging keeps the cancel check of production",
        "cancel",
        run_input(user={**ALICE, "verified": False}, params={"environment": "staging"}, provenance=REQUESTED),
        verdict(False, unverified("slack:U0ALICE", "cancel"), person="alice"),
    ),
    Case(
        "a resolved alert cancels the run it started",
        "cancel",
        run_input(user=ALERTMANAGER, run=ALERT_RUN),
        verdict(True, "the alert that started this run resolved", person="alertmanager"),
    ),
    Case(
        "a resolved Grafana alert cancels the run it started",
        "cancel",
        run_input(user={**ALERTMANAGER, "id": "grafana", "name": "grafana"},
                  run={**ALERT_RUN, "trigger": "grafana", "requested_by": "grafana"}),
        verdict(True, "the alert that started this run resolved", person="grafana"),
    ),
    Case(
        "Grafana does not cancel a run Alertmanager started",
        "cancel",
        run_input(user={**ALERTMANAGER, "id": "grafana", "name": "grafana"}, run=ALERT_RUN),
        verdict(False, may_not_cancel("grafana"), person="grafana"),
    ),
    Case(
        "an alert does not cancel a run a person started",
        "cancel",
        run_input(user=ALERTMANAGER),
        verdict(False, may_not_cancel("alertmanager"), person="alertmanager"),
    ),
    Case(
        "an unauthenticated alert does not cancel in production",
        "cancel",
        run_input(user={**ALERTMANAGER, "verified": False}, run=ALERT_RUN),
        verdict(False, unverified("alertmanager", "cancel"), person="alertmanager"),
    ),
    Case(
        "an empty input names every gap",
        "cancel",
        {},
        verdict(False, "missing input.playbook", "missing input.run", "missing input.user"),
    ),
    Case(
        "a playbook without owner",
        "cancel",
        run_input(user=BOB, playbook={"name": "restart-service"}),
        verdict(False, "missing input.playbook.owner", person="bob"),
    ),
]

# The shipped data.json: staging and friends are outside production, approvals wait 15 minutes,
# no freezes, no people (a principal is its own person), anyone may start anything.
SHIPPED = [
    Case("a run from before proofs is put to a vote", "decision", BASE_INPUT, needs(1, ONE, timeout="15m"), "shipped"),
    Case("production needs one approval", "decision", step_input(), needs(1, ONE, timeout="15m"), "shipped"),
    *(
        Case(
            f"{env} is outside production",
            "decision",
            step_input(params={"environment": env}),
            runs(f"high impact step outside production ({env})"),
            "shipped",
        )
        for env in ("staging", "dev", "development", "test", "qa", "sandbox", "local")
    ),
    Case(
        "prod is production",
        "decision",
        step_input(params={"environment": "prod"}),
        needs(1, ONE, timeout="15m"),
        "shipped",
    ),
    Case(
        "no freeze at year end",
        "decision",
        step_input(now="2025-12-24T12:00:00Z"),
        needs(1, ONE, timeout="15m"),
        "shipped",
    ),
    Case(
        "without people a principal is its own person",
        "approver",
        step_input(user={**ALICE, "id": "cli:alice"}),
        verdict(True, "cli:alice is in approver group sre-oncall", person="cli:alice"),
        "shipped",
    ),
    Case(
        "an API user the data does not map may not approve",
        "approver",
        step_input(user=DAVE),
        verdict(False, "api:dave is not in an approver group (sre-oncall)", person="api:dave"),
        "shipped",
    ),
    Case(
        "anyone may start anything",
        "start",
        run_input(user={**CAROL, "verified": False}, playbook={**PLAYBOOK, "name": "drop-database"}),
        verdict(True, person="slack:U0CAROL"),
        "shipped",
    ),
    Case(
        "the requester may cancel",
        "cancel",
        run_input(user=ALICE),
        verdict(True, "slack:U0ALICE requested this run", person="slack:U0ALICE"),
        "shipped",
    ),
]

CASES: list[Case] = [*DECISIONS, *APPROVERS, *STARTS, *CANCELS, *SHIPPED]

# --- looking answers up by the input received -------------------------------------------------


def digest(value: Any) -> str:
    """sha256 of the key-sorted compact JSON: the same document always has the same key."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def rule_path(rule: str) -> str:
    """OPA's REST path of a rule: /v1/data/<this>."""
    return f"playbook/authz/{rule}"


def fixtures(scenario: str) -> dict[tuple[str, str], Any]:
    """(REST path, input digest) -> the document OPA answers, for one data scenario."""
    table: dict[tuple[str, str], Any] = {}
    for case in CASES:
        if case.data != scenario:
            continue
        key = (rule_path(case.rule), digest(case.input))
        if key in table and table[key] != case.want:
            raise ValueError(f"two fixtures for one input disagree: {case.id}")
        table[key] = case.want
    return table


# --- OPA's own API authorization (deploy/opa/system_authz.rego) ----------------------------
#
# docker-compose runs OPA with --authentication=token --authorization=basic: every request is
# put to data.system.authz.allow. The file means: the container runtime's health check needs no
# token; the bot, holding the token OPA has in its environment (OPA_API_TOKEN), may ask
# playbook.authz for decisions; nobody, the token's holder included, may change or read OPA's
# data and policies, query anything else, or read its configuration: the token sits in the
# bot's environment, and a leaked token must not be able to rewrite the policy it is checked by.

OPA_API_TOKEN = "s3cret-opa-token"
BEARER = f"Bearer {OPA_API_TOKEN}"


@dataclass(frozen=True)
class ApiRequest:
    name: str
    method: str
    target: str  # path and query, as sent
    authorization: str | None
    allowed: bool
    body: Any = None


def _api(
    name: str, method: str, target: str, authorization: str | None, allowed: bool, body: Any = None
) -> ApiRequest:
    return ApiRequest(name, method, target, authorization, allowed, body)


_DECISION_BODY = {"input": {"playbook": {"name": "restart-service"}}}

SYSTEM_AUTHZ = [
    _api("health without a token", "GET", "/health", None, True),
    _api("health with a wrong token", "GET", "/health", "Bearer nope", True),
    _api("health with the bundle check", "GET", "/health?bundles", None, True),
    _api("the bot asks for a decision", "POST", "/v1/data/playbook/authz/decision", BEARER, True, _DECISION_BODY),
    _api("the bot asks approver", "POST", "/v1/data/playbook/authz/approver", BEARER, True, _DECISION_BODY),
    _api("the bot asks start", "POST", "/v1/data/playbook/authz/start?provenance=true", BEARER, True, _DECISION_BODY),
    _api("the bot asks cancel", "POST", "/v1/data/playbook/authz/cancel", BEARER, True, _DECISION_BODY),
    _api("extra spaces after Bearer", "POST", "/v1/data/playbook/authz/decision", f"Bearer   {OPA_API_TOKEN}", True),
    _api("a decision without a token", "POST", "/v1/data/playbook/authz/decision", None, False, _DECISION_BODY),
    _api("a decision with a wrong token", "POST", "/v1/data/playbook/authz/decision", "Bearer nope", False),
    _api("a token with a suffix", "POST", "/v1/data/playbook/authz/decision", f"{BEARER}x", False),
    _api("a token that is a prefix", "POST", "/v1/data/playbook/authz/decision", BEARER[:-1], False),
    _api("bearer in lower case", "POST", "/v1/data/playbook/authz/decision", f"bearer {OPA_API_TOKEN}", False),
    _api("the token as basic auth", "POST", "/v1/data/playbook/authz/decision", f"Basic {OPA_API_TOKEN}", False),
    _api("the token and more", "POST", "/v1/data/playbook/authz/decision", f"{BEARER} extra", False),
    _api("a bare Bearer", "POST", "/v1/data/playbook/authz/decision", "Bearer", False),
    _api("health by POST", "POST", "/health", BEARER, False),
    _api("other health checks", "GET", "/health/live", None, False),
    _api("a decision by GET", "GET", "/v1/data/playbook/authz/decision", BEARER, False),
    _api("the whole package", "POST", "/v1/data/playbook/authz", BEARER, False),
    _api("the policy's tests", "POST", "/v1/data/playbook/authz_test/test_decision_table", BEARER, False),
    _api("the policy's data", "POST", "/v1/data/playbook/people", BEARER, False),
    _api("the authorization policy itself", "POST", "/v1/data/system/authz/allow", BEARER, False),
    _api("all data", "GET", "/v1/data", BEARER, False),
    _api("the v0 data API", "POST", "/v0/data/playbook/authz/decision", BEARER, False),
    _api("the default decision", "POST", "/", BEARER, False),
    _api("overwriting a decision", "PUT", "/v1/data/playbook/authz/decision", BEARER, False, {"allow": True}),
    _api("adding to a group", "PUT", "/v1/data/playbook/groups", BEARER, False, {"sre-oncall": ["api:mallory"]}),
    _api(
        "dropping the freezes",
        "PATCH",
        "/v1/data/playbook",
        BEARER,
        False,
        [{"op": "replace", "path": "/freezes", "value": []}],
    ),
    _api("deleting the denylist", "DELETE", "/v1/data/playbook/start_denylist", BEARER, False),
    _api("replacing the policy", "PUT", "/v1/policies/evil", BEARER, False, "package playbook.authz"),
    _api("deleting the policy", "DELETE", "/v1/policies/policies/playbook/authz/authz.rego", BEARER, False),
    _api("reading the policies", "GET", "/v1/policies", BEARER, False),
    _api("an ad-hoc query", "POST", "/v1/query", BEARER, False, {"query": "data"}),
    _api("an ad-hoc query by GET", "GET", "/v1/query?q=data", BEARER, False),
    _api("partial evaluation", "POST", "/v1/compile", BEARER, False, {"query": "data.playbook.authz.decision"}),
    _api("the configuration", "GET", "/v1/config", BEARER, False),
    _api("the status", "GET", "/v1/status", BEARER, False),
    _api("the metrics", "GET", "/metrics", BEARER, False),
    _api("writing data without a token", "PUT", "/v1/data/playbook/groups", None, False, {}),
]
