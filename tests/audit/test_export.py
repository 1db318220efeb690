"""JSON for machines (checkable offline), Markdown for the postmortem."""

from __future__ import annotations

import json

from bot.audit.events import canonical_json, chain_hash
from bot.audit.export import summary, to_json, to_markdown
from bot.audit.store import SqliteAuditStore
from tests.audit.support import event, incident


def test_json_is_a_list_oldest_first_with_the_design_fields(store: SqliteAuditStore) -> None:
    stored = store.append(incident())

    records = json.loads(to_json(list(reversed(stored))))

    assert [r["seq"] for r in records] == [e.seq for e in stored]
    first = records[0]
    assert set(first) >= {"seq", "ts", "run_id", "step_id", "kind", "actor", "details", "prev_hash", "hash"}
    assert first["ts"] == "2025-03-14T09:26:53.589000Z"
    assert (first["run_id"], first["step_id"], first["kind"], first["actor"]) == ("run-7", None, "run_started", "carol")
    assert first["details"]["params"] == {"service": "api", "environment": "production"}


def test_the_json_export_can_be_checked_without_the_database(store: SqliteAuditStore) -> None:
    records = json.loads(to_json(store.append(incident())))

    prev = "0" * 64
    for r in records:
        assert r["prev_hash"] == prev
        fields = {k: r[k] for k in ("seq", "event_id", "ts", "run_id", "step_id", "kind", "actor", "prev_hash")}
        assert chain_hash(**fields, details=canonical_json(r["details"])) == r["hash"]
        prev = r["hash"]


def test_markdown_is_a_timeline_with_heading_and_one_row_per_event(store: SqliteAuditStore) -> None:
    store.append([event(1, run_id="other-run")])
    events = store.append(incident())

    text = to_markdown(store.events(), "run-7")
    lines = text.splitlines()

    assert lines[0] == "# Run `run-7`"
    assert "- **Playbook:** restart-service (hash ab12cd34ef56)" in lines
    assert "- **Requested by:** carol via slack" in lines
    assert "- **Final state:** compensated at 2025-03-14 09:27:03.589 UTC" in lines
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(events)  # the other run's event is not in this timeline
    assert rows[0] == (
        f"| {events[0].seq} | 09:26:53.589 | run_started |  | carol | run started: restart-service by carol via slack "
        "(environment=production, service=api) |"
    )
    expected = [
        "alertmanager.silence started",
        "alertmanager.silence succeeded",
        "policy: require approval (1 of sre-oncall) — restart in production needs a human",
        "approval requested: 1 of sre-oncall, deadline 2025-03-14T09:42:00Z",
        "approved by dana",
        "http.request started",
        "http.request failed after 3 attempts — HTTP 503 from deploy",
        "compensation of silence started (alertmanager.expire_silence)",
        "compensation of silence succeeded",
        "run finished: compensated",
    ]
    assert [row.split(" | ")[-1].removesuffix(" |") for row in rows[1:]] == expected
    assert "| 09:26:58.589 | approval_vote | restart | dana |" in rows[5]


def test_an_unfinished_run_says_so() -> None:
    text = to_markdown([], "run-x")
    assert "- **Final state:** not finished (no run_finished event)" in text


def test_summaries_of_other_kinds(store: SqliteAuditStore) -> None:
    def line(kind: str, **details: object) -> str:
        [stored] = store.append([event(len(store.events()), kind=kind, details=details, actor="dana")])
        return summary(stored)

    assert line("policy_decision", allow=False, reasons=["off hours"]) == "policy: deny — off hours"
    assert line("policy_decision", allow=True) == "policy: allow"
    assert line("approval_vote", vote="reject", reason="not now") == "rejected by dana — not now"
    assert line("approval_timeout", stage="escalated") == "approval deadline passed: escalated"
    assert line("approval_timeout", stage="rejected") == "approval timed out: step rejected"
    assert line("compensation_failed", error="410 Gone") == "compensation of step-5 failed — 410 Gone"
    assert line("run_finished", state="failed", not_undone=["restart"]) == "run finished: failed (not undone: restart)"
    assert line("alert_outcome", outcome="attached", playbook="restart") == "alert outcome: attached (restart)"
    assert line("step_skipped", reason="when was false") == "skipped — when was false"
    assert line("alert_received", alertname="ServiceDown", status="firing", fingerprint="f00d") == (
        "alert ServiceDown (firing) fingerprint f00d"
    )
    assert line("policy_decision", allow=True, require_approval=True, min_approvals="two") == (
        "policy: require approval (1 of any approver)"
    )  # a malformed detail still renders


def test_markdown_never_shows_secret_values_but_keeps_references(store: SqliteAuditStore) -> None:
    details = {
        "params": {
            "token": "${secret:DEPLOY_TOKEN}",
            "password": "hunter2hunter2",
            "url": "https://deploy:s3cr3t@deploy.internal/x",
            "note": "Bearer abcdefghijklmnop",
        },
        "playbook": "p",
    }
    store.append([event(1, run_id="r", kind="run_started", details=details)])

    text = to_markdown(store.events(), "r")

    assert "${secret:DEPLOY_TOKEN}" in text
    for value in ("hunter2", "s3cr3t", "abcdefghijklmnop"):
        assert value not in text
    assert "[redacted]" in text


def test_cells_stay_one_short_line_and_pipes_cannot_break_the_table(store: SqliteAuditStore) -> None:
    store.append([event(1, kind="step_failed", details={"action": "shell.run", "error": "a|b\n" + "x" * 500})])

    row = [line for line in to_markdown(store.events(), "run-1").splitlines() if line.startswith("| 1 |")][0]

    assert "a\\|b x" in row and "…" in row
    assert len(row) < 400
    assert row.count(" | ") == 5
