"""`playbook-bot test` as users and CI run it: the shipped playbooks' rehearsals pass (this is how
`make test` runs them), a failing case exits 1 with its diff, a bad test file exits 2 naming file
and line, and --junit writes a report CI can read."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bot.playbook.loader import is_rehearsal_file, load_directory
from tests.e2e.support import ROOT, base_env, cli
from tests.rehearse.support import directory

PLAYBOOKS = ROOT / "playbooks"


def env(tmp_path):
    return base_env(data_dir=tmp_path / "data", policies_dir=ROOT / "policies")


def test_every_shipped_playbook_has_rehearsals_and_they_pass(tmp_path):
    shipped = load_directory(PLAYBOOKS)
    tests = {p.name for p in PLAYBOOKS.iterdir() if is_rehearsal_file(p)}
    assert tests == {f"{name}.test.yaml" for name in shipped.names()}
    junit = tmp_path / "rehearsals.xml"
    result = cli(["test", str(PLAYBOOKS), "--junit", str(junit)], env(tmp_path), timeout=600)
    assert result.code == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and " 0 failed" in result.stdout
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert {s.get("name") for s in suites} == {str(PLAYBOOKS / t) for t in tests}
    for suite in suites:
        assert int(suite.get("tests") or 0) >= 3 and suite.get("failures") == "0", suite.get("name")


def test_a_failing_case_exits_1_with_its_diff(tmp_path):
    text = """\
playbook: tiny
cases:
  - name: staging is still production for a requester's param
    params: {service: a, environment: staging}
    expect: {state: completed, steps: {restart: succeeded}}
"""
    junit = tmp_path / "out.xml"
    result = cli(["test", str(directory(tmp_path / "pb", text)), "--junit", str(junit)], env(tmp_path), timeout=300)
    assert result.code == 1, result.stdout + result.stderr
    assert "FAIL  tiny: staging is still production for a requester's param" in result.stdout
    assert "state: expected completed, got compensated (error: step restart: approval timed out)" in result.stdout
    assert "steps.restart: expected succeeded, got rejected" in result.stdout
    assert "0 passed, 1 failed" in result.stdout
    [case] = ET.parse(junit).getroot().iter("testcase")
    assert case.find("failure") is not None


def test_a_bad_test_file_exits_2_naming_file_and_line(tmp_path):
    text = "playbook: tiny\ncases:\n  - name: x\n    mocks: {restrat: {output: {}}}\n    expect: {}\n"
    path = directory(tmp_path / "pb", text)
    result = cli(["test", str(path)], env(tmp_path), timeout=120)
    assert result.code == 2, result.stdout + result.stderr
    assert f"{path / 'tiny.test.yaml'}:4: cases[0].mocks.restrat: no step 'restrat'" in result.stderr
    assert "did you mean 'restart'" in result.stderr


def test_nothing_to_rehearse_is_an_error(tmp_path):
    (tmp_path / "pb").mkdir()
    result = cli(["test", str(tmp_path / "pb")], env(tmp_path), timeout=120)
    assert result.code == 2 and "no *.test.yaml rehearsal files here" in result.stderr


def test_run_dry_run_shows_the_plan_and_starts_nothing(tmp_path):
    # No Temporal anywhere: a dry run that tried to start the run would fail to connect.
    settings = base_env(data_dir=tmp_path / "data", policies_dir=ROOT / "policies", playbooks_dir=PLAYBOOKS,
                        temporal_address="127.0.0.1:1")
    result = cli(["run", "restart-service", "-p", "service=checkout", "--dry-run", "--by", "alice"], settings)
    assert result.code == 0, result.stderr
    out = result.stdout
    assert out.startswith("Dry run of restart-service (sha256:")
    assert '"url": "https://deploy.internal/v1/services/checkout/restart"' in out
    assert "policy needs 1 approval(s) from sre-oncall" in out
    assert "undo: alertmanager.expire_silence (rendered at run time" in out  # needs the silence's output
    assert "5.3 errors  prometheus.query  when {{ params.environment == 'production' }} → runs" in out
    bad = cli(["run", "restart-service", "-p", "service=Bad!", "--dry-run"], settings)
    assert bad.code == 1 and "service" in bad.error_line()


def test_a_dry_run_expands_foreach_items_and_lists_the_failure_path(tmp_path):
    settings = base_env(data_dir=tmp_path / "data", policies_dir=ROOT / "policies", playbooks_dir=PLAYBOOKS,
                        temporal_address="127.0.0.1:1")
    result = cli(["run", "rolling-restart", "-p", "service=checkout", "-p", "hosts=web-1,web-2", "--dry-run",
                  "--by", "alice"], settings)
    assert result.code == 0, result.stderr
    out = result.stdout
    assert "1. roll  (foreach as host, 2 items, concurrency 1, max_failures 1)" in out
    assert '   [0] host = "web-1"' in out and '   [1] host = "web-2"' in out
    for host, n in (("web-1", 1), ("web-2", 2)):  # each item's steps rendered with its own host
        assert f'"url": "https://lb.internal/v1/pools/production/members/{host}/drain"' in out
        assert f'"reason": "rolling-restart run dry-run, host {n} of 2"' in out
    assert out.count("policy needs 1 approval(s) from sre-oncall") == 2  # asked per item
    assert "on failure (after the rollback):\n   - tell  slack.post" in out
    assert "rolling-restart of checkout stopped: (the run's error)" in out
