"""`policy test` and `policy eval` through typer's runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from bot.policy.cli import app
from tests.policy.conftest import BASE_INPUT, POLICIES

runner = CliRunner()


def invoke(*args: str):
    """Run the CLI with structlog captured: unconfigured, it would print to stdout."""
    with capture_logs():
        return runner.invoke(app, list(args))


def test_policy_test_passes_on_the_shipped_policies() -> None:
    result = invoke("test", "--dir", str(POLICIES))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "PASS playbook.authz_test.test_decision_table" in lines[0]
    assert lines[-1] == f"{len(lines) - 1} passed, 0 failed"
    assert len(lines) - 1 >= 5


def test_policy_test_fails_when_no_test_ran(tmp_path: Path) -> None:
    shutil.copy(POLICIES / "playbook" / "authz" / "authz.rego", tmp_path / "authz.rego")

    result = invoke("test", "--dir", str(tmp_path))

    assert result.exit_code == 1
    assert result.output.strip() == f"error: no test ran: no test_* rules in *_test.rego files under {tmp_path}"


def test_policy_test_reports_a_failing_test(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n\nanswer := 41\n")
    (tmp_path / "p_test.rego").write_text(
        "package p_test\n\nimport data.p\n\ntest_right if p.answer == 41\n\ntest_wrong if p.answer == 42\n"
    )

    result = invoke("test", "--dir", str(tmp_path))

    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"PASS p_test.test_right ({tmp_path / 'p_test.rego'}:5)",
        f"FAIL p_test.test_wrong ({tmp_path / 'p_test.rego'}:7): undefined",
        "1 passed, 1 failed",
    ]


def test_policy_test_survives_a_test_file_that_crashes_the_engine(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n\nsmall if input.v < 3\n")
    (tmp_path / "good_test.rego").write_text(
        "package good_test\n\nimport data.p\n\ntest_small if p.small with input.v as 1\n"
    )
    (tmp_path / "crash_test.rego").write_text(
        'package crash_test\n\nimport data.p\n\ntest_small if p.small with input as {"v": 1}\n'
    )

    result = invoke("test", "--dir", str(tmp_path))

    assert result.exit_code == 1
    assert f"PASS good_test.test_small ({tmp_path / 'good_test.rego'}:5)" in result.output
    assert f"FAIL crash_test.test_small ({tmp_path / 'crash_test.rego'}:5): policy engine crashed" in result.output
    assert result.output.splitlines()[-1] == "1 passed, 1 failed"


def test_policy_test_reports_a_syntax_error_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "p_test.rego").write_text("package p_test\n\ntest_x if {\n  1 ==\n}\n")

    result = invoke("test", "--dir", str(tmp_path))

    assert result.exit_code == 1
    assert result.output.strip() == f"error: {tmp_path / 'p_test.rego'}:4:5: Invalid boolean operator"


@pytest.fixture
def embedded_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLAYBOOK_BOT_OPA_URL", raising=False)
    monkeypatch.setenv("PLAYBOOK_BOT_POLICIES_DIR", str(POLICIES))


def test_policy_eval_prints_the_decision(tmp_path: Path, embedded_settings: None) -> None:
    source = tmp_path / "input.json"
    source.write_text(json.dumps(BASE_INPUT))

    result = invoke("eval", "--input", str(source))

    assert result.exit_code == 0, result.output
    decision = json.loads(result.output)
    assert decision["allow"] is True and decision["min_approvals"] == 1
    assert decision["engine"] == "embedded"


def test_policy_eval_approver_rule(tmp_path: Path, embedded_settings: None) -> None:
    source = tmp_path / "input.json"
    source.write_text(json.dumps({**BASE_INPUT, "user": {"id": "alice", "groups": ["sre-oncall"]}}))

    result = invoke("eval", "--input", str(source), "--rule", "approver")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["reasons"] == ["alice requested this run and cannot approve it"]


def test_policy_eval_rejects_bad_json_in_one_line(tmp_path: Path, embedded_settings: None) -> None:
    source = tmp_path / "input.json"
    source.write_text('{"step": }')

    result = invoke("eval", "--input", str(source))

    assert result.exit_code == 1
    assert result.output.strip() == f"error: {source}:1:10: invalid JSON: Expecting value"


def test_policy_eval_exits_non_zero_when_it_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("PLAYBOOK_BOT_OPA_URL", f"http://127.0.0.1:{closed_port}")
    source = tmp_path / "input.json"
    source.write_text(json.dumps(BASE_INPUT))

    result = invoke("eval", "--input", str(source))

    assert result.exit_code == 1
    expected = f"error: policy failed closed (unreachable): OPA unreachable at http://127.0.0.1:{closed_port}"
    assert expected in result.output
