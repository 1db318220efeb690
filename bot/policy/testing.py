"""Running the `test_*` rules of `*_test.rego` files, like `opa test` (a run with no test fails)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.policy.errors import PolicyLoadError
from bot.policy.rego_process import ChildCrashed, ChildTimeout, run_once
from bot.policy.sources import PolicySources, TestRule, read_sources

TEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest test class

    name: str  # package.rule, e.g. playbook.authz_test.test_decision_table
    file: str
    line: int
    passed: bool
    error: str | None = None


@dataclass
class TestReport:
    __test__ = False  # not a pytest test class

    results: list[TestResult] = field(default_factory=list)
    error: PolicyLoadError | None = None  # the policies or tests did not compile
    seconds: float = 0.0

    @property
    def passed_count(self) -> int:
        return sum(result.passed for result in self.results)

    @property
    def failed_count(self) -> int:
        return len(self.results) - self.passed_count

    @property
    def ok(self) -> bool:
        """True only when tests ran and all passed: "no test ran" is a failure."""
        return self.error is None and bool(self.results) and self.failed_count == 0


def run_tests(policies_dir: Path | str) -> TestReport:
    started = time.monotonic()
    report = _run(Path(policies_dir))
    report.seconds = time.monotonic() - started
    return report


def _run(root: Path) -> TestReport:
    try:
        sources = read_sources(root, include_tests=True)
    except PolicyLoadError as exc:
        return TestReport(error=exc)
    rules = sources.test_rules()
    if not rules:
        return TestReport()
    try:
        return _report(rules, _run_child(sources, sources.tests, rules))
    except (ChildCrashed, ChildTimeout) as exc:
        # rego-cpp took the process down; run each test file alone to pin it on files.
        results: list[TestResult] = []
        for file, source in sources.tests.items():
            file_rules = [rule for rule in rules if rule.file == file]
            try:
                report = _report(file_rules, _run_child(sources, {file: source}, file_rules))
            except (ChildCrashed, ChildTimeout) as file_exc:
                note = f"policy engine crashed running this file ({file_exc})"
                results.extend(_result(rule, False, note) for rule in file_rules)
                continue
            if report.error is not None:
                return TestReport(results=results, error=report.error)
            results.extend(report.results)
        if not results:
            return TestReport(error=PolicyLoadError(f"policy engine crashed ({exc})"))
        return TestReport(results=results)


def _run_child(sources: PolicySources, tests: dict[str, str], rules: list[TestRule]) -> dict[str, Any]:
    entrypoints = list(dict.fromkeys(rule.entrypoint for rule in rules))
    request = {"op": "test", "modules": {**sources.modules, **tests}, "data": sources.data, "entrypoints": entrypoints}
    [answer] = run_once([request], timeout=TEST_TIMEOUT)
    return answer


def _report(rules: list[TestRule], answer: dict[str, Any]) -> TestReport:
    if not answer.get("ok"):
        return TestReport(error=PolicyLoadError.from_wire(answer.get("error") or {}))
    by_entrypoint = {result["entrypoint"]: result for result in answer.get("results", [])}
    results = []
    for rule in rules:
        outcome = by_entrypoint.get(rule.entrypoint)
        if outcome is None:
            results.append(_result(rule, False, "not evaluated"))
        else:
            results.append(_result(rule, bool(outcome.get("passed")), outcome.get("error")))
    return TestReport(results=results)


def _result(rule: TestRule, passed: bool, error: str | None) -> TestResult:
    return TestResult(f"{rule.package}.{rule.name}", rule.file, rule.line, passed, None if passed else error)
