"""`make mutate`: mutation testing of the code whose mistakes cost most, with the tests that guard it.

mutmut (2.x) changes one thing at a time in a module (a comparison, a constant, a boolean, a
return value) and runs that module's tests; a mutant the tests still pass "survived": a place
where the code could be wrong and no test would say so. Each target names the tests that guard
it, so a run takes tens of minutes, not hours. Results: a table on stdout and in
bench/mutation.md, the survivors listed per module (`mutmut show ID` in the run's cache prints the
diff). Not part of `make test`: it is slow, and a survivor is a question, not a failure.

    python -m bench.mutate                 # every target
    python -m bench.mutate approvals       # the targets whose name contains "approvals"
"""

from __future__ import annotations

import argparse
import ast
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "bench" / "mutation.md"
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider"


@dataclass(frozen=True)
class Target:
    """`fast` tests run first, in one process, and kill most mutants in seconds; `slow` ones (the
    real Temporal worker) run only for a mutant the fast ones missed. `functions` narrows a large
    module to the functions named (mutmut's patch-file filter), so a run fits an afternoon."""

    name: str
    module: str
    fast: tuple[str, ...] = ()
    slow: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()

    @property
    def runner(self) -> str:
        stages = []
        if self.fast:
            stages.append(f"{PYTEST} {' '.join(self.fast)}")
        if self.slow:
            stages.append(f"{PYTEST} -n 2 {' '.join(self.slow)}")
        return "sh -c " + shlex.quote(" && ".join(stages))


TARGETS = (
    Target("approvals", "bot/engine/approvals.py", fast=("tests/engine/test_approval_book.py",),
           slow=("tests/engine/test_approvals.py", "tests/security/test_identity_doors.py")),
    Target("admission", "bot/engine/admission.py", fast=("tests/engine/test_admission.py",), slow=("tests/security/test_raw_temporal.py",)),
    Target("policy engine", "bot/policy/engine.py",
           fast=("tests/policy/test_embedded.py", "tests/policy/test_opa.py", "tests/policy/test_engine_choice.py"),
           slow=("tests/policy",)),
    Target("policy models", "bot/policy/models.py", fast=("tests/policy/test_models.py", "tests/policy/test_oracle.py")),
    Target("policy activities", "bot/policy/activities.py", fast=("tests/policy/test_activities.py",),
           slow=("tests/policy", "tests/engine/test_approvals.py")),
    Target("receiver", "bot/alerts/receiver.py", fast=("tests/alerts",),
           slow=("tests/e2e/test_alertmanager_webhook.py", "tests/reliability/test_alertmanager.py")),
    Target("workflow", "bot/engine/workflow.py",
           slow=("tests/engine/test_workflow.py", "tests/engine/test_approvals.py", "tests/engine/test_cancellation.py"),
           functions=("_Saga", "vote", "cancel", "_validate_cancel", "_guarded", "_run_group", "_run_step", "_when",
                      "_fail", "_gate", "_await_approval", "_compensate", "_undo")),
)


def lines_of(module: str, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """Line ranges (1-based, inclusive) of the top-level or method definitions named."""
    tree = ast.parse((ROOT / module).read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
            found[node.name] = (node.lineno, node.end_lineno or node.lineno)
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f"{module} has no {', '.join(sorted(missing))}: update bench/mutate.py")
    return sorted(found.values())


def patch_for(module: str, ranges: list[tuple[int, int]]) -> Path:
    """A unified diff that "adds" exactly those lines: mutmut then mutates only them."""
    text = (ROOT / module).read_text().splitlines()
    out = [f"--- {module}", f"+++ {module}"]
    added = 0
    for start, end in ranges:
        count = end - start + 1
        out.append(f"@@ -{start - 1 - added},0 +{start},{count} @@")
        out += [f"+{line}" for line in text[start - 1:end]]
        added += count
    path = ROOT / "bench" / ".mutate.patch"
    path.write_text("\n".join(out) + "\n")
    return path


@dataclass
class Score:
    target: Target
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    suspicious: int = 0
    seconds: float = 0.0
    survivors: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.killed + self.survived + self.timeout + self.suspicious

    @property
    def ratio(self) -> float:
        return (self.killed + self.timeout) / self.total if self.total else 0.0


def mutmut(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=ROOT, text=True, capture_output=True, check=check)


def run(target: Target) -> Score:
    """One module against its tests, from a fresh cache; the mutated file is restored by mutmut."""
    (ROOT / ".mutmut-cache").unlink(missing_ok=True)
    started = time.monotonic()
    extra = []
    if target.functions:
        extra = ["--use-patch-file", str(patch_for(target.module, lines_of(target.module, target.functions)))]
    # a loaded machine must not turn slow tests into "timed out" (counted as killed)
    result = mutmut("run", "--paths-to-mutate", target.module, "--runner", target.runner, "--no-progress",
                    "--test-time-multiplier", "4", *extra)
    if result.returncode & 1:  # 1: a fatal error (the tests fail unmutated, or mutmut broke)
        raise SystemExit(f"mutmut failed on {target.module}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    score = Score(target, seconds=time.monotonic() - started)
    xml = mutmut("junitxml").stdout
    survivors = []
    for case in ET.fromstring(xml).iter("testcase"):
        failure, error = case.find("failure"), case.find("error")
        if failure is not None:
            score.survived += 1
            survivors.append(f"{case.get('name')}: {(failure.get('message') or '').splitlines()[0][:160]}")
        elif error is not None:
            score.timeout += 1
        elif case.find("skipped") is not None:
            score.suspicious += 1
        else:
            score.killed += 1
    score.survivors = tuple(survivors)
    cache = ROOT / "bench" / f".mutmut-{target.name.replace(' ', '-')}.cache"
    shutil.copy(ROOT / ".mutmut-cache", cache)  # `mutmut show ID` against it later: cp it back
    return score


def table(scores: list[Score]) -> str:
    lines = [
        "| target | module | mutants | killed | timed out | survived | score | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        lines.append(
            f"| {s.target.name} | `{s.target.module}` | {s.total} | {s.killed} | {s.timeout} | {s.survived} | "
            f"{s.ratio:.0%} | {s.seconds / 60:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run the targets whose name contains one of these")
    args = parser.parse_args()
    targets = [t for t in TARGETS if not args.only or any(word in t.name for word in args.only)]
    scores = []
    for target in targets:
        print(f"mutating {target.module}{' (' + ', '.join(target.functions) + ')' if target.functions else ''} "
              f"against {' '.join(target.fast + target.slow)} ...", flush=True)
        score = run(target)
        print(f"  {score.total} mutants, {score.survived} survived ({score.ratio:.0%} killed) in {score.seconds / 60:.1f} min",
              flush=True)
        scores.append(score)
    report = ["# Mutation testing (`make mutate`)", "", table(scores), ""]
    for s in scores:
        if s.survivors:
            report += [f"## Survivors in `{s.target.module}`", "", *[f"- {line}" for line in s.survivors], ""]
    REPORT.write_text("\n".join(report))
    print()
    print(table(scores))
    print(f"\nsurvivors listed in {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
