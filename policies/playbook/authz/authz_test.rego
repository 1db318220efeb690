# Table-driven tests for playbook.authz.
#
# Each case names the input fields it changes from a base input (null means
# "missing"), optional data (freezes, groups, start_restrictions,
# start_denylist) and the result fields it expects (compared key by key).
#
# The tables are evaluated field by field (`with input.step as step`) inside a
# comprehension, because rego-cpp, the embedded engine, crashes on
# `with input as {...}` and returns undefined for `with` inside `every`. Every
# test also checks that no case dropped out of its results, so an undefined
# result fails the test instead of shrinking the table.
package playbook.authz_test

import rego.v1

import data.playbook.authz

_playbook := {"name": "restart-service", "owner": "sre-oncall", "hash": "sha256:abc"}

_run := {"id": "run-1", "trigger": "cli", "requested_by": "cli:alice", "started_at": "2025-03-01T09:00:00Z"}

_high_http := {"id": "restart", "action": "http.request", "impact": "high", "with": {"method": "POST"}}

_low_log := {"id": "note", "action": "core.log", "impact": "low", "with": {"message": "hi"}}

_high_shell := {"id": "kill", "action": "shell.run", "impact": "high", "with": {"argv": ["true"]}}

_critical := {"labels": {"alertname": "ServiceDown", "severity": "critical"}}

# Who vouches for what (see authz.rego): the base input's environment is the
# playbook's own default; `_requested` marks it as chosen by the requester.
_trusted := {"params": {"environment": "playbook"}, "alert": null}

_requested := {"params": {"environment": "requester"}, "alert": null}

_verified_alert := {"params": {}, "alert": {"source": "alertmanager", "verified": true}}

_unverified_alert := {"params": {}, "alert": {"source": "alertmanager", "verified": false}}

_base := {
	"playbook": _playbook,
	"step": _high_http,
	"run": _run,
	"params": {"environment": "production"},
	"alert": null,
	"approvals": [],
	"now": "2025-03-01T10:00:00Z",
	"user": null,
	"provenance": _trusted,
}

_freeze := {"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z", "reason": "quarter close"}

_needs_one := {
	"allow": true, "require_approval": true, "min_approvals": 1,
	"approver_groups": ["sre-oncall"], "approval_timeout": "15m",
}

_runs := {"allow": true, "require_approval": false}

decision_cases := [
	{"name": "low impact in production runs", "input": {"step": _low_log}, "want": object.union(_runs, {"reasons": ["low impact step"]})},
	{"name": "high impact in staging runs", "input": {"params": {"environment": "staging"}}, "want": object.union(_runs, {"reasons": ["high impact step outside production (staging)"]})},
	{"name": "environment is case-insensitive", "input": {"params": {"environment": "Staging"}}, "want": _runs},
	{"name": "environment from an authenticated alert's label", "input": {"params": {}, "alert": {"labels": {"environment": "dev"}}, "provenance": _verified_alert}, "want": _runs},
	{"name": "an unauthenticated alert's label does not lift production", "input": {"params": {}, "alert": {"labels": {"environment": "dev"}}, "provenance": _unverified_alert}, "want": _needs_one},
	{"name": "params win over the alert label", "input": {"alert": {"labels": {"environment": "dev"}}}, "want": _needs_one},
	{"name": "a requester's staging does not lift production approvals", "input": {"params": {"environment": "staging"}, "provenance": _requested}, "want": object.union(_needs_one, {"reasons": ["high impact step in production needs 1 approval(s) from sre-oncall"]})},
	{"name": "no provenance counts as the requester's choice", "input": {"params": {"environment": "staging"}, "provenance": null}, "want": _needs_one},
	{"name": "a requester's production makes a staging alert stricter", "input": {"params": {"environment": "production"}, "alert": {"labels": {"environment": "staging"}}, "provenance": {"params": {"environment": "requester"}, "alert": {"source": "alertmanager", "verified": true}}}, "want": _needs_one},
	{"name": "a requester's staging against an authenticated staging alert runs", "input": {"params": {"environment": "staging"}, "alert": {"labels": {"environment": "staging"}}, "provenance": {"params": {"environment": "requester"}, "alert": {"source": "alertmanager", "verified": true}}}, "want": _runs},
	{"name": "no environment means production", "input": {"params": {}}, "want": _needs_one},
	{"name": "unknown environment means production", "input": {"params": {"environment": "prod-eu"}}, "want": _needs_one},
	{"name": "high impact in production needs one owner approval", "input": {}, "want": object.union(_needs_one, {"reasons": ["high impact step in production needs 1 approval(s) from sre-oncall"]})},
	{"name": "unknown impact counts as high", "input": {"step": object.union(_high_http, {"impact": "medium"})}, "want": _needs_one},
	{"name": "shell.run in production needs two approvals", "input": {"step": _high_shell}, "want": object.union(_needs_one, {"min_approvals": 2, "reasons": ["shell.run in production needs 2 approval(s) from sre-oncall"]})},
	{"name": "shell.run in staging runs", "input": {"step": _high_shell, "params": {"environment": "staging"}}, "want": _runs},
	{"name": "approval timeout comes from data", "input": {}, "data": {"approval_timeout": "5m"}, "want": object.union(_needs_one, {"approval_timeout": "5m"})},
	{"name": "freeze denies high impact", "input": {}, "data": {"freezes": [_freeze]}, "want": {"allow": false, "require_approval": false, "reasons": ["change freeze 2025-03-01T00:00:00Z until 2025-03-02T00:00:00Z: quarter close"]}},
	{"name": "freeze denies high impact outside production too", "input": {"params": {"environment": "staging"}}, "data": {"freezes": [_freeze]}, "want": {"allow": false}},
	{"name": "freeze scoped to production spares staging", "input": {"params": {"environment": "staging"}}, "data": {"freezes": [object.union(_freeze, {"environments": ["production"]})]}, "want": _runs},
	{"name": "a production freeze holds an unknown environment", "input": {"params": {"environment": "prd"}}, "data": {"freezes": [object.union(_freeze, {"environments": ["production"]})]}, "want": {"allow": false}},
	{"name": "a production freeze holds a requester's staging", "input": {"params": {"environment": "staging"}, "provenance": _requested}, "data": {"freezes": [object.union(_freeze, {"environments": ["production"]})]}, "want": {"allow": false}},
	{"name": "freeze environments that are not a list apply everywhere", "input": {"params": {"environment": "staging"}}, "data": {"freezes": [object.union(_freeze, {"environments": "production"})]}, "want": {"allow": false}},
	{"name": "freeze environments that are not names apply everywhere", "input": {"params": {"environment": "staging"}}, "data": {"freezes": [object.union(_freeze, {"environments": [1]})]}, "want": {"allow": false}},
	{"name": "freeze environments are compared in lower case", "input": {}, "data": {"freezes": [object.union(_freeze, {"environments": ["Production"]})]}, "want": {"allow": false}},
	{"name": "freeze with a numeric offset", "input": {"now": "2025-03-01T23:30:00+01:00"}, "data": {"freezes": [_freeze]}, "want": {"allow": false}},
	{"name": "freeze does not touch low impact", "input": {"step": _low_log}, "data": {"freezes": [_freeze]}, "want": _runs},
	{"name": "freeze that ended is ignored", "input": {"now": "2025-03-02T00:00:00Z"}, "data": {"freezes": [_freeze]}, "want": _needs_one},
	{"name": "freeze that has not started is ignored", "input": {"now": "2025-02-28T23:59:59Z"}, "data": {"freezes": [_freeze]}, "want": _needs_one},
	{"name": "an unauthenticated critical alert does not override a freeze", "input": {"alert": _critical, "provenance": {"params": {"environment": "playbook"}, "alert": {"source": "alertmanager", "verified": false}}}, "data": {"freezes": [_freeze]}, "want": {"allow": false}},
	{"name": "a requester-chosen frozen environment is frozen too", "input": {"params": {"environment": "production"}, "provenance": {"params": {"environment": "requester"}, "alert": {"source": "alertmanager", "verified": true}}, "alert": {"labels": {"environment": "staging"}}}, "data": {"freezes": [object.union(_freeze, {"environments": ["production"]})]}, "want": {"allow": false}},
	{"name": "critical alert overrides a freeze but still needs approval", "input": {"alert": _critical, "provenance": {"params": {"environment": "playbook"}, "alert": {"source": "alertmanager", "verified": true}}}, "data": {"freezes": [_freeze]}, "want": object.union(_needs_one, {"reasons": [
		"high impact step in production needs 1 approval(s) from sre-oncall",
		"critical alert overrides change freeze 2025-03-01T00:00:00Z until 2025-03-02T00:00:00Z: quarter close",
	]})},
	{"name": "an unverified requester's production step is denied", "input": {"run": object.union(_run, {"requester": {"principal": "cli:alice", "person": "alice", "verified": false}})}, "want": {"allow": false, "require_approval": false, "reasons": ["high impact step in production: the run's requester cli:alice is unverified (the run reached Temporal directly), so no approval could tell them from the approver (four-eyes); start it through Slack, the API or the dev stack's CLI"]}},
	{"name": "an unverified requester's shell.run in production is denied", "input": {"step": _high_shell, "run": object.union(_run, {"requester": {"principal": "cli:alice", "verified": false}})}, "want": {"allow": false, "require_approval": false}},
	{"name": "a verified requester's production step needs approval", "input": {"run": object.union(_run, {"requester": {"principal": "cli:alice", "person": "alice", "verified": true, "verified_by": "dev"}})}, "want": _needs_one},
	{"name": "an unverified requester's staging step runs", "input": {"params": {"environment": "staging"}, "run": object.union(_run, {"requester": {"principal": "cli:alice", "verified": false}})}, "want": _runs},
	{"name": "an unverified requester's low impact step runs", "input": {"step": _low_log, "run": object.union(_run, {"requester": {"principal": "cli:alice", "verified": false}})}, "want": _runs},
	{"name": "unparsable freeze window counts as active", "input": {}, "data": {"freezes": [{"start": "soon", "end": "later", "reason": "typo"}]}, "want": {"allow": false}},
	{"name": "missing step", "input": {"step": null}, "want": {"allow": false, "require_approval": false, "reasons": ["missing input.step"]}},
	{"name": "missing now", "input": {"now": null}, "want": {"allow": false, "reasons": ["missing input.now"]}},
	{"name": "invalid now", "input": {"now": "yesterday"}, "want": {"allow": false, "reasons": ["invalid input.now: expected an RFC3339 timestamp"]}},
	{"name": "missing owner", "input": {"playbook": {"name": "restart-service"}}, "want": {"allow": false, "reasons": ["missing input.playbook.owner"]}},
	{"name": "missing step fields", "input": {"step": {"id": "x"}}, "want": {"allow": false, "reasons": ["missing input.step.action", "missing input.step.impact"]}},
	{"name": "everything missing", "input": {"playbook": null, "step": null, "run": null, "now": null}, "want": {"allow": false, "reasons": ["missing input.now", "missing input.playbook", "missing input.run", "missing input.step"]}},
]

decision_results := [result |
	some case in decision_cases
	i := _merge(_base, case.input)
	playbook := i.playbook
	step := i.step
	run := i.run
	params := i.params
	alert := i.alert
	now := i.now
	provenance := i.provenance
	d := _merge(_data, object.get(case, "data", {}))
	freezes := d.freezes
	timeout := d.approval_timeout
	got := authz.decision with input.playbook as playbook
		with input.step as step
		with input.run as run
		with input.params as params
		with input.alert as alert
		with input.now as now
		with input.provenance as provenance
		with data.playbook.freezes as freezes
		with data.playbook.approval_timeout as timeout
	wrong := _mismatches(got, case.want)
	result := {"name": case.name, "ok": wrong == [], "wrong": wrong, "got": got}
]

test_decision_table if {
	count(decision_results) == count(decision_cases)
	failures := [r | some r in decision_results; not r.ok]
	failures == []
}

test_decision_has_every_field if {
	keys := {"allow", "require_approval", "min_approvals", "approver_groups", "approval_timeout", "reasons"}
	count(decision_results) == count(decision_cases)
	every r in decision_results {
		object.keys(r.got) == keys
	}
}

test_decision_with_no_input_denies if {
	authz.decision.allow == false
	authz.decision.reasons == ["missing input.now", "missing input.playbook", "missing input.run", "missing input.step"]
}

_member := {"id": "slack:U0BOB", "name": "Bob", "groups": ["sre-oncall"], "verified": true}

_outsider := {"id": "slack:U0CAROL", "name": "Carol", "groups": ["marketing"], "verified": true}

_cli_user := {"id": "api:dave", "name": "dave", "groups": [], "verified": true}

_unverified_cli := {"id": "cli:dave", "name": "dave", "groups": [], "verified": false}

# A scheduled run (bot/engine/schedules.py): the worker verified its schedule proof.
_schedule := {"id": "schedule", "name": "schedule", "groups": [], "verified": true, "verified_by": "schedule"}

_schedule_run := object.union(_run, {"trigger": "schedule", "requested_by": "schedule"})

# alice has a Slack login and a CLI login: one person.
_people := {"alice": ["slack:U0ALICE", "cli:alice"], "bob": ["slack:U0BOB", "api:bob"]}

approver_cases := [
	{"name": "owner group member may approve", "input": {"user": _member}, "want": {"allow": true, "person": "slack:U0BOB", "reasons": ["slack:U0BOB is in approver group sre-oncall"]}},
	{"name": "the answer names the person", "input": {"user": _member}, "data": {"people": _people}, "want": {"allow": true, "person": "bob"}},
	{"name": "requester may not approve", "input": {"user": object.union(_member, {"id": "cli:alice"})}, "want": {"allow": false, "reasons": ["cli:alice requested this run and cannot approve it"]}},
	{"name": "requester may not approve from another login", "input": {"user": object.union(_member, {"id": "slack:U0ALICE"})}, "data": {"people": _people}, "want": {"allow": false, "person": "alice", "reasons": ["slack:U0ALICE is alice, who requested this run (as cli:alice), and cannot approve it"]}},
	{"name": "user outside the owner group may not approve", "input": {"user": _outsider}, "want": {"allow": false, "reasons": ["slack:U0CAROL is not in an approver group (sre-oncall)"]}},
	{"name": "API user mapped to the owner group in data", "input": {"user": _cli_user}, "data": {"groups": {"sre-oncall": ["api:dave"]}}, "want": {"allow": true}},
	{"name": "user's person mapped to the owner group in data", "input": {"user": object.union(_cli_user, {"id": "api:bob"})}, "data": {"groups": {"sre-oncall": ["bob"]}, "people": _people}, "want": {"allow": true, "person": "bob"}},
	{"name": "API user mapped to another group", "input": {"user": _cli_user}, "data": {"groups": {"marketing": ["api:dave"]}}, "want": {"allow": false}},
	{"name": "API user with no mapping", "input": {"user": _cli_user}, "want": {"allow": false}},
	{"name": "unverified principal may not approve in production", "input": {"user": _unverified_cli}, "data": {"groups": {"sre-oncall": ["cli:dave"]}}, "want": {"allow": false, "reasons": ["cli:dave is unverified (it reached Temporal directly): in production only a verified principal may approve; use Slack or the API"]}},
	{"name": "verified field missing counts as unverified", "input": {"user": object.remove(_member, ["verified"])}, "want": {"allow": false}},
	{"name": "unverified principal may approve outside production", "input": {"user": _unverified_cli, "params": {"environment": "staging"}}, "data": {"groups": {"sre-oncall": ["cli:dave"]}}, "want": {"allow": true}},
	{"name": "user without groups field", "input": {"user": {"id": "slack:U0ERIN", "verified": true}}, "want": {"allow": false}},
	{"name": "missing user", "input": {}, "want": {"allow": false, "reasons": ["missing input.user"]}},
	{"name": "missing user id", "input": {"user": {"groups": ["sre-oncall"]}}, "want": {"allow": false, "reasons": ["missing input.user.id"]}},
	{"name": "missing requester", "input": {"user": _member, "run": {"id": "run-1"}}, "want": {"allow": false, "reasons": ["missing input.run.requested_by"]}},
]

approver_results := [result |
	some case in approver_cases
	i := _merge(_base, case.input)
	playbook := i.playbook
	step := i.step
	run := i.run
	user := i.user
	params := i.params
	provenance := i.provenance
	d := _merge(_data, object.get(case, "data", {}))
	groups := d.groups
	people := d.people
	got := authz.approver with input.playbook as playbook
		with input.step as step
		with input.run as run
		with input.user as user
		with input.params as params
		with input.provenance as provenance
		with data.playbook.groups as groups
		with data.playbook.people as people
	wrong := _mismatches(got, case.want)
	result := {"name": case.name, "ok": wrong == [], "wrong": wrong, "got": got}
]

test_approver_table if {
	count(approver_results) == count(approver_cases)
	failures := [r | some r in approver_results; not r.ok]
	failures == []
}

start_cases := [
	{"name": "unrestricted playbook, anyone may start", "input": {"user": _outsider}, "want": {"allow": true, "reasons": []}},
	{"name": "denylisted user may not start", "input": {"user": _member}, "data": {"start_denylist": ["slack:U0BOB"]}, "want": {"allow": false, "reasons": ["slack:U0BOB may not start playbooks (start_denylist)"]}},
	{"name": "denylisted person may not start from any login", "input": {"user": object.union(_member, {"id": "api:bob"})}, "data": {"start_denylist": ["bob"], "people": _people}, "want": {"allow": false, "person": "bob"}},
	{"name": "the answer names the person", "input": {"user": object.union(_member, {"id": "cli:alice"})}, "data": {"people": _people}, "want": {"allow": true, "person": "alice"}},
	{"name": "restricted playbook, member may start", "input": {"user": _member}, "data": {"start_restrictions": {"restart-service": ["sre-oncall"]}}, "want": {"allow": true}},
	{"name": "restricted playbook, mapped API user may start", "input": {"user": _cli_user}, "data": {"start_restrictions": {"restart-service": ["sre-oncall"]}, "groups": {"sre-oncall": ["api:dave"]}}, "want": {"allow": true}},
	{"name": "restricted playbook, outsider may not start", "input": {"user": _outsider}, "data": {"start_restrictions": {"restart-service": ["sre-oncall"]}}, "want": {"allow": false, "reasons": ["restart-service may only be started by members of sre-oncall"]}},
	{"name": "restricted playbook, an unverified principal may not start however it is mapped", "input": {"user": _unverified_cli}, "data": {"start_restrictions": {"restart-service": ["sre-oncall"]}, "groups": {"sre-oncall": ["cli:dave"]}}, "want": {"allow": false, "reasons": ["restart-service may only be started by members of sre-oncall; cli:dave is unverified (it reached Temporal directly), so its membership cannot count: use Slack or the API"]}},
	{"name": "restricted playbook, verified field missing counts as unverified", "input": {"user": object.remove(_member, ["verified"])}, "data": {"start_restrictions": {"restart-service": ["sre-oncall"]}}, "want": {"allow": false}},
	{"name": "unrestricted playbook, an unverified principal may start", "input": {"user": _unverified_cli}, "want": {"allow": true}},
	{"name": "a schedule may start an unrestricted playbook", "input": {"user": _schedule, "run": _schedule_run}, "want": {"allow": true, "person": "schedule"}},
	{"name": "a schedule may start a restricted playbook only when data.playbook.groups maps it", "input": {"user": _schedule, "run": _schedule_run}, "data": {"start_restrictions": {"restart-service": ["sre-oncall"]}, "groups": {"sre-oncall": ["schedule"]}}, "want": {"allow": true}},
	{"name": "a schedule is no member of a restricted playbook's groups by itself", "input": {"user": _schedule, "run": _schedule_run}, "data": {"start_restrictions": {"restart-service": ["sre-oncall"]}}, "want": {"allow": false, "reasons": ["restart-service may only be started by members of sre-oncall"]}},
	{"name": "an unverified schedule (a worker without a key) may not start a restricted playbook", "input": {"user": object.union(_schedule, {"verified": false}), "run": _schedule_run}, "data": {"start_restrictions": {"restart-service": ["sre-oncall"]}, "groups": {"sre-oncall": ["schedule"]}}, "want": {"allow": false}},
	{"name": "restricted playbook, an entry that is not a list lets nobody start", "input": {"user": _member}, "data": {"start_restrictions": {"restart-service": "sre-oncall"}}, "want": {"allow": false, "reasons": ["restart-service may not be started by anyone: its start_restrictions entry must be a list of groups"]}},
	{"name": "restriction on another playbook does not apply", "input": {"user": _outsider}, "data": {"start_restrictions": {"other": ["sre-oncall"]}}, "want": {"allow": true}},
	{"name": "missing user", "input": {}, "want": {"allow": false, "reasons": ["missing input.user"]}},
	{"name": "missing playbook name", "input": {"user": _member, "playbook": {"owner": "sre-oncall"}}, "want": {"allow": false, "reasons": ["missing input.playbook.name"]}},
]

start_results := [result |
	some case in start_cases
	i := _merge(_base, case.input)
	playbook := i.playbook
	run := i.run
	user := i.user
	d := _merge(_data, object.get(case, "data", {}))
	groups := d.groups
	people := d.people
	restrictions := d.start_restrictions
	denylist := d.start_denylist
	got := authz.start with input.playbook as playbook
		with input.run as run
		with input.user as user
		with data.playbook.groups as groups
		with data.playbook.people as people
		with data.playbook.start_restrictions as restrictions
		with data.playbook.start_denylist as denylist
	wrong := _mismatches(got, case.want)
	result := {"name": case.name, "ok": wrong == [], "wrong": wrong, "got": got}
]

test_start_table if {
	count(start_results) == count(start_cases)
	failures := [r | some r in start_results; not r.ok]
	failures == []
}

_alert_run := object.union(_run, {"trigger": "alertmanager", "requested_by": "alertmanager"})

cancel_cases := [
	{"name": "the requester may cancel", "input": {"user": object.union(_member, {"id": "cli:alice"})}, "want": {"allow": true, "person": "cli:alice", "reasons": ["cli:alice requested this run"]}},
	{"name": "the requester may cancel from another login", "input": {"user": object.union(_member, {"id": "slack:U0ALICE", "groups": []})}, "data": {"people": _people}, "want": {"allow": true, "person": "alice"}},
	{"name": "an owner group member may cancel", "input": {"user": _member}, "want": {"allow": true, "reasons": ["slack:U0BOB is in the owner group sre-oncall"]}},
	{"name": "an outsider may not cancel", "input": {"user": _outsider}, "want": {"allow": false, "person": "slack:U0CAROL", "reasons": ["slack:U0CAROL may not cancel runs of restart-service: only its requester or members of sre-oncall may"]}},
	{"name": "an unverified requester may not cancel in production", "input": {"user": {"id": "cli:alice", "groups": [], "verified": false}}, "want": {"allow": false, "reasons": ["cli:alice is unverified (it reached Temporal directly): in production only a verified principal may cancel; use Slack or the API"]}},
	{"name": "an unverified requester may cancel outside production", "input": {"user": {"id": "cli:alice", "groups": [], "verified": false}, "params": {"environment": "staging"}}, "want": {"allow": true}},
	{"name": "a resolved alert cancels the run it started", "input": {"user": {"id": "alertmanager", "groups": [], "verified": true}, "run": _alert_run}, "want": {"allow": true, "reasons": ["the alert that started this run resolved"]}},
	{"name": "an alert does not cancel a run a person started", "input": {"user": {"id": "alertmanager", "groups": [], "verified": true}}, "want": {"allow": false}},
	{"name": "a resolved Grafana alert cancels the run it started", "input": {"user": {"id": "grafana", "groups": [], "verified": true}, "run": object.union(_run, {"trigger": "grafana", "requested_by": "grafana"})}, "want": {"allow": true, "reasons": ["the alert that started this run resolved"]}},
	{"name": "a resolved PagerDuty incident cancels the run it started", "input": {"user": {"id": "pagerduty", "groups": [], "verified": true}, "run": object.union(_run, {"trigger": "pagerduty", "requested_by": "pagerduty"})}, "want": {"allow": true, "reasons": ["the alert that started this run resolved"]}},
	{"name": "an unverified opsgenie does not cancel in production", "input": {"user": {"id": "opsgenie", "groups": [], "verified": false}, "run": object.union(_run, {"trigger": "opsgenie", "requested_by": "opsgenie"})}, "want": {"allow": false}},
	{"name": "Grafana does not cancel a run Alertmanager started", "input": {"user": {"id": "grafana", "groups": [], "verified": true}, "run": _alert_run}, "want": {"allow": false}},
	{"name": "missing user", "input": {}, "want": {"allow": false, "reasons": ["missing input.user"]}},
	{"name": "missing requester", "input": {"user": _member, "run": {"id": "run-1"}}, "want": {"allow": false, "reasons": ["missing input.run.requested_by"]}},
]

cancel_results := [result |
	some case in cancel_cases
	i := _merge(_base, case.input)
	playbook := i.playbook
	run := i.run
	user := i.user
	params := i.params
	provenance := i.provenance
	d := _merge(_data, object.get(case, "data", {}))
	groups := d.groups
	people := d.people
	got := authz.cancel with input.playbook as playbook
		with input.run as run
		with input.user as user
		with input.params as params
		with input.provenance as provenance
		with data.playbook.groups as groups
		with data.playbook.people as people
	wrong := _mismatches(got, case.want)
	result := {"name": case.name, "ok": wrong == [], "wrong": wrong, "got": got}
]

test_cancel_table if {
	count(cancel_results) == count(cancel_cases)
	failures := [r | some r in cancel_results; not r.ok]
	failures == []
}

# Defaults the tables start from, whatever the shipped data.json says.
_data := {
	"freezes": [],
	"groups": {},
	"people": {},
	"approval_timeout": "15m",
	"start_restrictions": {},
	"start_denylist": [],
}

# Shallow merge: fields of b replace those of a whole (object.union would merge
# nested objects, and a case that replaces `step` must replace all of it).
_merge(a, b) := object.union(object.remove(a, object.keys(b)), b)

# The keys of `want` whose values `got` does not match (missing keys included).
_mismatches(got, want) := [key |
	some key in object.keys(want)
	not _has(got, key, want[key])
]

_has(obj, key, value) if obj[key] == value
