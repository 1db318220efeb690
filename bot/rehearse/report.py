"""Running a path of rehearsal files, and saying how it went: text for people, JUnit XML for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bot.playbook.loader import Catalog, PlaybookLoadErrors, load_directory
from bot.rehearse.cases import LoadedCase, LoadedFile, RehearsalFileError, load_rehearsal, rehearsal_files
from bot.rehearse.runner import REFUSALS, CaseResult, Rehearsal, ServerRefusedTask, start_env

from temporalio.testing import WorkflowEnvironment

RERUNS = 2  # times a case runs again on a fresh server after the server refused one of its tasks


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)
    bad_files: list[RehearsalFileError] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """2: a test file is bad; 1: a case failed; 0: every case passed."""
        if self.bad_files:
            return 2
        return 1 if any(not r.passed for r in self.results) else 0


def playbooks_beside(target: Path) -> tuple[Path, Catalog, list[RehearsalFileError]]:
    """The playbooks in the test files' directory (the ones that load; the rest are bad files' business)."""
    directory = target if target.is_dir() else target.parent
    try:
        return directory, load_directory(directory), []
    except PlaybookLoadErrors as exc:
        problems = [RehearsalFileError(e.message, e.path or directory, e.line) for e in exc.errors]
        return directory, exc.catalog, problems


async def rehearse(
    target: Path, policies_dir: Path, *, env: WorkflowEnvironment | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Report:
    """Every case of every test file at `target` (a directory or one file); `env` shared in tests."""
    report = Report()
    if not target.exists():
        report.bad_files.append(RehearsalFileError("no such file or directory", target))
        return report
    _, catalog, problems = playbooks_beside(target)
    report.bad_files += problems  # a playbook that does not load fails the rehearsal of its directory
    loaded = []
    for path in rehearsal_files(target):
        try:
            loaded.append(load_rehearsal(path, catalog))
        except RehearsalFileError as exc:
            report.bad_files.append(exc)
            say(f"ERROR {exc}")
    if not loaded and not report.bad_files:
        report.bad_files.append(RehearsalFileError("no *.test.yaml rehearsal files here", target))
        return report
    if not loaded:
        return report
    own = env is None
    env = env or await start_env()
    pending = [(file, case) for file in loaded for case in file.cases]
    reruns = 0  # of the case at pending[0]
    try:
        while pending:
            async with Rehearsal(env, catalog, policies_dir) as session:
                while pending:
                    file, case = pending[0]
                    result, stopped = await _run_one(session, file, case)
                    if stopped and reruns < RERUNS:
                        reruns += 1
                        say(f"note  {file.playbook.name}: {case.case.name}: the time-skipping server {stopped}; "
                            "running the case again on a fresh server")
                        break
                    if result is None:
                        result = CaseResult(file.path, file.playbook.name, case.case.name, case.line, failures=[
                            f"the time-skipping server {stopped} on each of {RERUNS + 1} tries"])
                    pending.pop(0)
                    reruns = 0
                    report.results.append(result)
                    say(describe(result))
                    if stopped:
                        break  # the next case on a fresh server
            if pending:  # a fresh server for the rest
                if own:
                    await env.shutdown()
                env, own = await start_env(), True
    finally:
        if own:
            await env.shutdown()
    return report


async def _run_one(session: Rehearsal, file: LoadedFile, case: LoadedCase) -> tuple[CaseResult | None, str | None]:
    """The case's result (None: the server refused one of its tasks, so it has none), and why this
    server's clock may have stopped for good during it (None: it still skips)."""
    since = REFUSALS.count
    try:
        result: CaseResult | None = await session.run_case(file, case)
    except ServerRefusedTask:
        result = None
    if REFUSALS.count > since:
        return result, "refused a workflow task (temporalio/sdk-java#2606)"
    if not await session.clock_skips():
        return result, "stopped skipping time (temporalio/sdk-java#1138)"
    return result, None


def describe(result: CaseResult) -> str:
    where = f"{result.path}:{result.line}" if result.line else str(result.path)
    head = f"{'ok  ' if result.passed else 'FAIL'}  {result.playbook}: {result.name}  ({where}, {result.seconds:.1f}s)"
    lines = [head]
    for failure in result.failures:
        first, *rest = failure.splitlines()
        lines.append(f"      {first}")
        lines += [f"      {line}" for line in rest]
    if not result.passed:
        lines += [f"      note: {note}" for note in result.notes]
    return "\n".join(lines)


def summary(report: Report) -> str:
    passed = sum(1 for r in report.results if r.passed)
    failed = len(report.results) - passed
    text = f"{passed} passed, {failed} failed"
    if report.bad_files:
        text += f", {len(report.bad_files)} bad test file(s)"
    return text


def junit_xml(report: Report) -> str:
    """JUnit XML: a testsuite per test file, a testcase per case; a bad file is an <error>."""
    suites = ET.Element("testsuites", name="playbook-bot rehearsals")
    by_file: dict[Path, list[CaseResult]] = {}
    for result in report.results:
        by_file.setdefault(result.path, []).append(result)
    for path, results in by_file.items():
        failures = sum(1 for r in results if not r.passed)
        suite = ET.SubElement(
            suites, "testsuite", name=str(path), tests=str(len(results)), failures=str(failures), errors="0",
            time=f"{sum(r.seconds for r in results):.3f}",
        )
        for r in results:
            case = ET.SubElement(suite, "testcase", classname=r.playbook, name=r.name, time=f"{r.seconds:.3f}")
            if r.failures:
                failure = ET.SubElement(case, "failure", message=r.failures[0].splitlines()[0])
                failure.text = "\n".join([*r.failures, *(f"note: {n}" for n in r.notes)])
    for bad in report.bad_files:
        suite = ET.SubElement(suites, "testsuite", name=str(bad.path), tests="1", failures="0", errors="1", time="0")
        case = ET.SubElement(suite, "testcase", classname="rehearsal-file", name=bad.path.name, time="0")
        error = ET.SubElement(case, "error", message=str(bad))
        error.text = str(bad)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
