# Authorization for playbook runs: which high-impact steps may run, who may
# approve them, and who may start a playbook. The contract (input and result
# shapes) is the "Policy contract" section of DESIGN.md.
#
# Every decision has a `default`, and an incomplete input is answered with a
# deny whose reasons name the missing fields ("missing input.step"), never
# with an undefined result or an evaluation error.
#
# Identity (DESIGN.md, "Identity and trust"): input.user.id and
# input.run.requested_by are principals (slack:U0ALICE, cli:alice, api:ci,
# alertmanager). data.playbook.people maps people to their principals;
# four-eyes compares people, and every start/approver/cancel answer says which
# person the user is ("person"). input.user.verified says whether a front door
# vouched for the principal (Slack's signature, an API token, the webhook
# token, the embedded dev stack); in production an unverified principal may
# neither approve nor cancel. input.run.requester is the requester as the
# worker verified it (absent for runs from before proofs): a run whose
# requester nobody vouched for may have been started by anyone, its approver
# included, so its high-impact steps in production are denied, not put to a
# vote that four-eyes could not check.
#
# Provenance: input.provenance.params.<name> is "playbook" (the file's default),
# "alert" (a trigger's template over an authenticated alert) or "requester"
# (whoever asked); input.provenance.alert.verified is true only for an alert
# whose sender was authenticated. Requester-chosen facts may only make a
# decision stricter: they can put a step in production, never take it out,
# and only an authenticated alert's own labels can invoke the critical-alert
# exception to a freeze. An input without provenance counts as
# requester-chosen throughout (fail safe).
#
# Environment: what authenticated sources say (a trusted
# `input.params.environment`, else an authenticated alert's `environment`
# label, else "production"), plus a requester-chosen
# `input.params.environment`: the step is in production when either one is.
# Only environments listed in data.playbook.non_production_environments (lower
# case; the input is lower-cased before the lookup) count as outside
# production, so a missing, misspelled or unknown environment is treated as
# production (fail safe).
#
# Data (policies/playbook/data.json, mounted at data.playbook):
#   freezes: [{start, end (RFC3339), reason, environments?}]  change freezes.
#       They deny high-impact steps unless the alert is critical. A window
#       without `environments` (or with one that is not a list of names)
#       applies everywhere; names are compared in lower case, and "production"
#       covers every step the policy treats as production (an unknown or
#       missing environment too); a window whose times do not parse counts as
#       active (fail safe).
#   groups: {"group": ["principal or person", ...]}  extra group membership,
#       for users (CLI, API) who arrive with `groups: []`.
#   people: {"alice": ["slack:U0ALICE", "cli:alice", "api:alice-laptop"]}
#       which principals are one person (four-eyes, one vote per person).
#   non_production_environments: ["staging", ...]
#   approval_timeout: "15m"  how long an approval request waits.
#   start_restrictions: {"playbook-name": ["group", ...]}  playbooks listed
#       here may only be started by verified members of those groups (anyone
#       can claim an unverified principal); unlisted playbooks may be started
#       by anyone; a listed playbook whose entry is not a list may be started
#       by nobody (fail safe).
#   start_denylist: ["principal or person", ...]  may not start any playbook.
#
# The embedded backend evaluates this with rego-cpp, which charges tens of
# microseconds per rule: the common path is kept short (one type check of the
# input, then the first matching branch), and the reasons for a bad input are
# only computed when the check fails.
package playbook.authz

import rego.v1

# --- decision: may this high-impact step run, and with how many approvals? ---

default decision := {
	"allow": false,
	"require_approval": false,
	"min_approvals": 0,
	"approver_groups": [],
	"approval_timeout": null,
	"reasons": ["no policy rule matched"],
}

decision := _deny(_sorted(_decision_problems)) if {
	not _decision_input_complete
} else := _deny(_sorted(_freeze_reasons)) if {
	high_impact
	count(_freeze_reasons) > 0
	not critical_alert
} else := _allow(["low impact step"]) if {
	not high_impact
} else := _allow(_concat([concat("", ["high impact step outside production (", environment, ")"])], _sorted(_freeze_overrides))) if {
	not production
} else := _deny([concat("", [_what, " in production: the run's requester ", input.run.requested_by, " is unverified (the run reached Temporal directly), so no approval could tell them from the approver (four-eyes); start it through Slack, the API or the dev stack's CLI"])]) if {
	input.run.requester.verified == false
} else := {
	"allow": true,
	"require_approval": true,
	"min_approvals": min_approvals,
	"approver_groups": approver_groups,
	"approval_timeout": approval_timeout,
	"reasons": _concat(
		[concat("", [_what, " in production needs ", format_int(min_approvals, 10), " approval(s) from ", concat(", ", approver_groups)])],
		_sorted(_freeze_overrides),
	),
}

_decision_input_complete if {
	_nonempty_string(input.playbook.owner)
	_nonempty_string(input.step.action)
	_nonempty_string(input.step.impact)
	is_object(input.run)
	is_number(_now_ns)
}

# Only evaluated when _decision_input_complete fails; names every gap.
_decision_problems contains "missing input.playbook" if not is_object(input.playbook)

_decision_problems contains "missing input.playbook.owner" if {
	is_object(input.playbook)
	not _nonempty_string(input.playbook.owner)
}

_decision_problems contains "missing input.step" if not is_object(input.step)

_decision_problems contains "missing input.step.action" if {
	is_object(input.step)
	not _nonempty_string(input.step.action)
}

_decision_problems contains "missing input.step.impact" if {
	is_object(input.step)
	not _nonempty_string(input.step.impact)
}

_decision_problems contains "missing input.run" if not is_object(input.run)

_decision_problems contains "missing input.now" if not _nonempty_string(input.now)

_decision_problems contains "invalid input.now: expected an RFC3339 timestamp" if {
	_nonempty_string(input.now)
	not _now_ns
}

_now_ns := _rfc3339_ns(input.now)

_what := "shell.run" if {
	input.step.action == "shell.run"
} else := "high impact step"

# shell.run executes arbitrary commands, so production needs a second pair of eyes.
default min_approvals := 1

min_approvals := 2 if input.step.action == "shell.run"

approver_groups := [input.playbook.owner]

default approval_timeout := "15m"

approval_timeout := data.playbook.approval_timeout if _nonempty_string(data.playbook.approval_timeout)

# Anything not declared "low" is high impact (fail safe).
high_impact if input.step.impact != "low"

# Only an authenticated alert's own labels can say it is critical.
critical_alert if {
	input.provenance.alert.verified == true
	input.alert.labels.severity == "critical"
}

_trusted_param(name) if input.provenance.params[name] in {"playbook", "alert"}

_trusted_environment := input.params.environment if {
	_nonempty_string(input.params.environment)
	_trusted_param("environment")
} else := input.alert.labels.environment if {
	_nonempty_string(input.alert.labels.environment)
	input.provenance.alert.verified == true
} else := "production"

# Every environment the step may be in: what trusted sources say, and what the
# requester chose (which can only add production, or a frozen environment).
_environments contains lower(_trusted_environment)

_environments contains lower(input.params.environment) if {
	_nonempty_string(input.params.environment)
	not _trusted_param("environment")
}

production if {
	some env in _environments
	not env in data.playbook.non_production_environments
}

environment := "production" if {
	production
	not lower(_trusted_environment) == "production"
} else := _trusted_environment

# --- change freezes ---

_freeze_reasons contains concat("", ["change freeze ", freeze.start, " until ", freeze.end, ": ", _freeze_label(freeze)]) if {
	some freeze in data.playbook.freezes
	_freeze_applies(freeze)
	_rfc3339_ns(freeze.start) <= _now_ns
	_now_ns < _rfc3339_ns(freeze.end)
}

_freeze_reasons contains sprintf("invalid change freeze window (treated as active): %v", [freeze]) if {
	some freeze in data.playbook.freezes
	not _valid_window(freeze)
}

_valid_window(freeze) if {
	is_number(_rfc3339_ns(freeze.start))
	is_number(_rfc3339_ns(freeze.end))
}

# Everywhere: no `environments`, an empty list, or one that is not a list of names (fail safe).
_freeze_applies(freeze) if {
	environments := object.get(freeze, "environments", [])
	not is_array(environments)
}

_freeze_applies(freeze) if count(object.get(freeze, "environments", [])) == 0

_freeze_applies(freeze) if {
	some env in object.get(freeze, "environments", [])
	not is_string(env)
}

_freeze_applies(freeze) if {
	some env in _environments
	env in _freeze_environments(freeze)
}

# A window for production holds every step the policy treats as production, whatever name
# (unknown, misspelled, none) put it there.
_freeze_applies(freeze) if {
	production
	"production" in _freeze_environments(freeze)
}

_freeze_environments(freeze) := {lower(env) | some env in freeze.environments; is_string(env)}

_freeze_label(freeze) := freeze.reason if {
	_nonempty_string(freeze.reason)
} else := "no reason given"

_freeze_overrides contains concat("", ["critical alert overrides ", reason]) if {
	critical_alert
	high_impact
	some reason in _freeze_reasons
}

# --- approver: may input.user approve this step? ---

default approver := {"allow": false, "reasons": ["no policy rule matched"]}

approver := _verdict(false, _sorted(_approver_problems)) if {
	not _approver_input_complete
} else := _verdict(false, [concat("", [input.user.id, " requested this run and cannot approve it"])]) if {
	input.user.id == input.run.requested_by
} else := _verdict(false, [concat("", [input.user.id, " is ", _user_person, ", who requested this run (as ", input.run.requested_by, "), and cannot approve it"])]) if {
	_user_person == _requester_person
} else := _verdict(false, [concat("", [input.user.id, " is unverified (it reached Temporal directly): in production only a verified principal may approve; use Slack or the API"])]) if {
	production
	not input.user.verified == true
} else := _verdict(true, [concat("", [input.user.id, " is in approver group ", concat(", ", _sorted(_approving_groups))])]) if {
	count(_approving_groups) > 0
} else := _verdict(false, [concat("", [input.user.id, " is not in an approver group (", concat(", ", approver_groups), ")"])])

_approver_input_complete if {
	_nonempty_string(input.playbook.owner)
	_nonempty_string(input.run.requested_by)
	_nonempty_string(input.user.id)
}

_approver_problems contains "missing input.playbook" if not is_object(input.playbook)

_approver_problems contains "missing input.playbook.owner" if {
	is_object(input.playbook)
	not _nonempty_string(input.playbook.owner)
}

_approver_problems contains "missing input.run" if not is_object(input.run)

_approver_problems contains "missing input.run.requested_by" if {
	is_object(input.run)
	not _nonempty_string(input.run.requested_by)
}

_approver_problems contains "missing input.user" if not is_object(input.user)

_approver_problems contains "missing input.user.id" if {
	is_object(input.user)
	not _nonempty_string(input.user.id)
}

_approving_groups contains group if {
	some group in approver_groups
	_in_group(group)
}

# A user is in a group when a verified source says so (Slack user groups,
# input.user.groups; the worker drops the groups of an unverified principal) or
# when data.playbook.groups lists their principal or their person (how CLI and
# API users, who send no groups, get admitted).
_in_group(group) if group in input.user.groups

_in_group(group) if input.user.id in data.playbook.groups[group]

_in_group(group) if _user_person in data.playbook.groups[group]

# --- people: which principals are one person ---

_user_person := _person_of(input.user.id)

_requester_person := _person_of(input.run.requested_by)

_person_of(principal) := person if {
	# (Not `principal in ids`: rego-cpp finds nothing with it here.)
	persons := [name | some name; ids := data.playbook.people[name]; some id in ids; id == principal]
	count(persons) > 0
	person := _sorted(persons)[0]
} else := principal

# --- start: may input.user start this playbook? ---

default start := {"allow": false, "reasons": ["no policy rule matched"]}

start := _verdict(false, _sorted(_start_problems)) if {
	not _start_input_complete
} else := _verdict(false, [concat("", [input.user.id, " may not start playbooks (start_denylist)"])]) if {
	_denylisted
} else := _verdict(false, [concat("", [input.playbook.name, " may not be started by anyone: its start_restrictions entry must be a list of groups"])]) if {
	_start_groups_invalid
} else := _verdict(false, [concat("", [input.playbook.name, " may only be started by members of ", concat(", ", _start_groups), "; ", input.user.id, " is unverified (it reached Temporal directly), so its membership cannot count: use Slack or the API"])]) if {
	is_array(_start_groups)
	not input.user.verified == true
} else := _verdict(false, [concat("", [input.playbook.name, " may only be started by members of ", concat(", ", _start_groups)])]) if {
	is_array(_start_groups)
	not _in_any_group(_start_groups)
} else := _verdict(true, [])

_denylisted if input.user.id in data.playbook.start_denylist

_denylisted if _user_person in data.playbook.start_denylist

_start_input_complete if {
	_nonempty_string(input.playbook.name)
	_nonempty_string(input.user.id)
}

_start_problems contains "missing input.playbook" if not is_object(input.playbook)

_start_problems contains "missing input.playbook.name" if {
	is_object(input.playbook)
	not _nonempty_string(input.playbook.name)
}

_start_problems contains "missing input.user" if not is_object(input.user)

_start_problems contains "missing input.user.id" if {
	is_object(input.user)
	not _nonempty_string(input.user.id)
}

_start_groups := data.playbook.start_restrictions[input.playbook.name]

# Listed, but not with a list: still restricted, to nobody (fail safe).
_start_groups_invalid if {
	groups := data.playbook.start_restrictions[input.playbook.name]
	not is_array(groups)
}

_in_any_group(groups) if {
	some group in groups
	_in_group(group)
}

# Services that post alerts; each starts runs as itself (trigger and principal alike).
_alert_senders := {"alertmanager", "grafana", "pagerduty", "opsgenie"}

# --- cancel: may input.user cancel this run (input.run)? ---
#
# Cancelling rolls back a remediation mid-incident, so it is an operation of its
# own: the run's requester (the same person), the alert that started it once it
# resolved, and members of the playbook's owner group may; in production only
# verified principals.

default cancel := {"allow": false, "reasons": ["no policy rule matched"]}

cancel := _verdict(false, _sorted(_cancel_problems)) if {
	not _cancel_input_complete
} else := _verdict(false, [concat("", [input.user.id, " is unverified (it reached Temporal directly): in production only a verified principal may cancel; use Slack or the API"])]) if {
	production
	not input.user.verified == true
} else := _verdict(true, ["the alert that started this run resolved"]) if {
	input.user.id in _alert_senders
	input.run.trigger == input.user.id
} else := _verdict(true, [concat("", [input.user.id, " requested this run"])]) if {
	_user_person == _requester_person
} else := _verdict(true, [concat("", [input.user.id, " is in the owner group ", input.playbook.owner])]) if {
	_in_group(input.playbook.owner)
} else := _verdict(false, [concat("", [input.user.id, " may not cancel runs of ", input.playbook.name, ": only its requester or members of ", input.playbook.owner, " may"])])

_cancel_input_complete if {
	_nonempty_string(input.playbook.name)
	_nonempty_string(input.playbook.owner)
	_nonempty_string(input.run.requested_by)
	_nonempty_string(input.user.id)
}

_cancel_problems contains problem if some problem in _start_problems

_cancel_problems contains "missing input.playbook.owner" if {
	is_object(input.playbook)
	not _nonempty_string(input.playbook.owner)
}

_cancel_problems contains "missing input.run" if not is_object(input.run)

_cancel_problems contains "missing input.run.requested_by" if {
	is_object(input.run)
	not _nonempty_string(input.run.requested_by)
}

# --- helpers ---
#
# Messages that include a concat() result are built with concat(), not
# sprintf(): rego-cpp (the embedded backend) quotes concat() results inside
# sprintf("%s").

_allow(reasons) := {
	"allow": true,
	"require_approval": false,
	"min_approvals": 0,
	"approver_groups": [],
	"approval_timeout": null,
	"reasons": reasons,
}

_deny(reasons) := {
	"allow": false,
	"require_approval": false,
	"min_approvals": 0,
	"approver_groups": [],
	"approval_timeout": null,
	"reasons": reasons,
}

_verdict(allow, reasons) := {"allow": allow, "reasons": reasons, "person": _user_person} if {
	_nonempty_string(input.user.id)
} else := {"allow": allow, "reasons": reasons}

_nonempty_string(value) if {
	is_string(value)
	value != ""
}

# Not array.concat: rego-cpp returns undefined when one side comes from sort().
_concat(a, b) := [x | some part in [a, b]; some x in part]

# Not sort() alone: rego-cpp's sort() of a set does not compare equal to the
# same array literal, which breaks callers (and tests) that compare reasons.
_sorted(values) := [x | some x in sort(values)]

# RFC3339 to nanoseconds. A trailing "Z" is rewritten as "+00:00" because
# rego-cpp (the embedded backend) only parses numeric offsets. The cheap shape
# check keeps obvious garbage away from time.parse_rfc3339_ns, whose failure is
# an evaluation error (not just undefined) under strict builtin errors.
_rfc3339_ns(ts) := time.parse_rfc3339_ns(_numeric_offset(ts)) if {
	is_string(ts)
	count(ts) >= 20
	upper(substring(ts, 10, 1)) == "T"
}

_numeric_offset(ts) := concat("", [trim_suffix(upper(ts), "Z"), "+00:00"]) if {
	endswith(upper(ts), "Z")
} else := ts
