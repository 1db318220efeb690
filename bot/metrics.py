"""Prometheus metrics: what operators put on dashboards.

Run, policy and approval counters are derived from audit events as they are first written, so
they count exactly what the record holds (a retried write counts once). Step durations are
observed where the step runs, in the action wrapper.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from bot.audit.events import AuditEvent, EventKind

RUNS_STARTED = Counter("playbook_bot_runs_started", "Runs started.", ["playbook", "trigger"])
RUNS_FINISHED = Counter("playbook_bot_runs_finished", "Runs finished, by final state.", ["playbook", "trigger", "state"])
STEP_DURATION = Histogram(
    "playbook_bot_step_duration_seconds",
    "One attempt of a step or compensation, by action and outcome.",
    ["action", "state"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900),
)
APPROVAL_WAIT = Histogram(
    "playbook_bot_approval_wait_seconds",
    "From approval request to the deciding vote or the timeout.",
    ["outcome"],
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200),
)
POLICY_DECISIONS = Counter("playbook_bot_policy_decisions", "Policy decisions on high-impact steps.", ["result"])
ALERTS = Counter("playbook_bot_alerts", "Alertmanager alerts, by outcome.", ["outcome"])
SLACK_API_ERRORS = Counter("playbook_bot_slack_api_errors", "Failed Slack Web API calls.", ["method"])
VOTES_REFUSED_EARLY = Counter(
    "playbook_bot_votes_refused_early",
    "Votes and answers a worker's update validator refused before they reached history, by rule.",
    ["rule"],
)


def observe_events(events: Iterable[AuditEvent]) -> None:
    """Count newly recorded events (call with what the store wrote, not with retries)."""
    for event in events:
        details = event.details
        if event.kind == EventKind.run_started:
            RUNS_STARTED.labels(details.get("playbook", "?"), details.get("trigger", "?")).inc()
        elif event.kind == EventKind.run_finished:
            RUNS_FINISHED.labels(details.get("playbook", "?"), details.get("trigger", "?"), details.get("state", "?")).inc()
        elif event.kind == EventKind.policy_decision:
            result = "deny" if not details.get("allow") else "approval" if details.get("require_approval") else "allow"
            POLICY_DECISIONS.labels(result).inc()
        elif event.kind in (EventKind.approval_vote, EventKind.approval_timeout) and "waited_seconds" in details:
            outcome = details.get("vote") or f"timeout_{details.get('stage')}"
            APPROVAL_WAIT.labels(outcome).observe(float(details["waited_seconds"]))
        elif event.kind == EventKind.alert_outcome:
            ALERTS.labels(details.get("outcome", "?")).inc()


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
