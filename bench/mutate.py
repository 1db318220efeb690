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
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "bench" / "mutation.md"
RESULTS = ROOT / "bench" / "mutation.json"
NOTES = "<!-- notes: kept across runs -->"
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
        # mutmut 2 counts only exit status 1 as "killed"; a mutant that breaks an import makes pytest
        # exit 2 or 4 and would read as survived: any failure is 1
        # and its output goes nowhere: mutmut 2 passes it through a queue that can deadlock on a long traceback
        return "sh -c " + shlex.quote(f"( {' && '.join(stages)} ) >/dev/null 2>&1 || exit 1")


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
           functions=("_Saga", "_run_group", "_when", "_fail", "_gate", "_compensate", "_undo")),
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
    target: str
    module: str
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    suspicious: int = 0
    seconds: float = 0.0
    survivors: list[str] = field(default_factory=list)  # "line N: -old / +new"

    @property
    def total(self) -> int:
        return self.killed + self.survived + self.timeout + self.suspicious

    @property
    def ratio(self) -> float:
        return (self.killed + self.timeout) / self.total if self.total else 0.0


def mutmut(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=ROOT, text=True, capture_output=True)


def tested() -> int:
    try:
        return sum(n for status, n in statuses_count().items() if status != "untested")
    except sqlite3.Error:
        return 0


def statuses_count() -> dict[str, int]:
    with sqlite3.connect(ROOT / ".mutmut-cache") as db:
        return dict(db.execute("select status, count(*) from Mutant group by status"))


def watched(args: list[str], stall: float = 300.0) -> int | None:
    """mutmut 2 hangs for good when its check_mutants process dies (seen three times here): kill
    it when no mutant was tested for `stall` seconds and say so (None); the caller resumes from the
    cache, which keeps every result so far. Else its exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "mutmut", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last, since = tested(), time.monotonic()
    while proc.poll() is None:
        time.sleep(10)
        now = tested()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"  mutmut stalled at {now} mutants tested: resumed", flush=True)
            return None
    return proc.returncode


def cache_of(target: Target) -> Path:
    return ROOT / "bench" / f".mutmut-{target.name.replace(' ', '-')}.cache"


def statuses() -> dict[int, str]:
    with sqlite3.connect(ROOT / ".mutmut-cache") as db:
        return dict(db.execute("select id, status from Mutant"))


def diff(mutant: int) -> str:
    """The mutant as `line N: - old / + new`, from `mutmut show`."""
    shown = mutmut("show", str(mutant)).stdout.splitlines()
    removed = [line[1:].strip() for line in shown if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in shown if line.startswith("+") and not line.startswith("+++")]
    with sqlite3.connect(ROOT / ".mutmut-cache") as db:
        (number,) = db.execute("select l.line_number from Mutant m join Line l on m.line = l.id where m.id = ?",
                               (mutant,)).fetchone()
    return f"line {number + 1}: `{' '.join(removed)[:110]}` → `{' '.join(added)[:110]}`"


def score(target: Target, seconds: float) -> Score:
    result = Score(target.name, target.module, seconds=seconds)
    for mutant, status in sorted(statuses().items()):
        if status == "ok_killed":
            result.killed += 1
        elif status == "bad_timeout":
            result.timeout += 1
        elif status == "ok_suspicious":
            result.suspicious += 1
        elif status == "bad_survived":
            result.survived += 1
            result.survivors.append(diff(mutant))
    return result


def run(target: Target) -> Score:
    """One module against its tests, from a fresh cache; mutmut restores the mutated file."""
    (ROOT / ".mutmut-cache").unlink(missing_ok=True)
    started = time.monotonic()
    extra = []
    if target.functions:
        extra = ["--use-patch-file", str(patch_for(target.module, lines_of(target.module, target.functions)))]
    # a loaded machine must not turn slow tests into "timed out" (counted as killed)
    args = ["run", "--paths-to-mutate", target.module, "--runner", target.runner, "--no-progress",
            "--test-time-multiplier", "4", *extra]
    while True:
        returncode = watched(args)
        if returncode is not None:
            break
        subprocess.run(["git", "checkout", "--", target.module], cwd=ROOT, check=True)  # the mutant it left
    if returncode & 1:  # 1: a fatal error (the tests fail unmutated, or mutmut broke)
        raise SystemExit(f"mutmut failed on {target.module} (exit {returncode})")
    shutil.copy(ROOT / ".mutmut-cache", cache_of(target))  # `mutmut show ID` against it later: cp it back
    return score(target, time.monotonic() - started)


def retest(target: Target) -> Score:
    """The survivors of the last run only, against today's tests (after tests were added for them)."""
    shutil.copy(cache_of(target), ROOT / ".mutmut-cache")
    started = time.monotonic()
    for mutant, status in sorted(statuses().items()):
        if status != "bad_survived":
            continue
        mutmut("apply", str(mutant))  # `mutmut run ID` would first run the whole baseline again
        try:
            killed = subprocess.run(shlex.split(target.runner), cwd=ROOT).returncode != 0
        finally:
            subprocess.run(["git", "checkout", "--", target.module], cwd=ROOT, check=True)
        if killed:
            with sqlite3.connect(ROOT / ".mutmut-cache") as db:
                db.execute("update Mutant set status = 'ok_killed' where id = ?", (mutant,))
    shutil.copy(ROOT / ".mutmut-cache", cache_of(target))
    previous = load().get(target.name)
    return score(target, (previous.seconds if previous else 0.0) + time.monotonic() - started)


def load() -> dict[str, Score]:
    if not RESULTS.exists():
        return {}
    return {name: Score(**fields) for name, fields in json.loads(RESULTS.read_text()).items()}


def table(scores: list[Score]) -> str:
    lines = [
        "| target | module | mutants | killed | timed out | survived | score | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        lines.append(
            f"| {s.target} | `{s.module}` | {s.total} | {s.killed} | {s.timeout} | {s.survived} | "
            f"{s.ratio:.0%} | {s.seconds / 60:.1f} |"
        )
    return "\n".join(lines)


def report(scores: list[Score]) -> str:
    """The table and the survivors; the hand-written notes below NOTES in the old report are kept."""
    notes = ""
    if REPORT.exists() and NOTES in REPORT.read_text():
        notes = REPORT.read_text().split(NOTES, 1)[1]
    lines = ["# Mutation testing (`make mutate`)", "", "Generated by `python -m bench.mutate`; narrowed targets list the "
             "functions mutated in bench/mutate.py.", "", table(scores), ""]
    for s in scores:
        if s.survivors:
            lines += [f"## Survivors in `{s.module}`", "", *[f"- {line}" for line in s.survivors], ""]
    return "\n".join(lines) + "\n" + NOTES + (notes or "\n\n## What the survivors are\n\n(written by hand)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run the targets whose name contains one of these")
    parser.add_argument("--survivors", action="store_true", help="re-test only the last run's survivors")
    args = parser.parse_args()
    targets = [t for t in TARGETS if not args.only or any(word in t.name for word in args.only)]
    results = load()
    for target in targets:
        what = "re-testing the survivors in" if args.survivors else "mutating"
        print(f"{what} {target.module}{' (' + ', '.join(target.functions) + ')' if target.functions else ''} "
              f"against {' '.join(target.fast + target.slow)} ...", flush=True)
        result = retest(target) if args.survivors else run(target)
        print(f"  {result.total} mutants, {result.survived} survived ({result.ratio:.0%} killed) "
              f"in {result.seconds / 60:.1f} min", flush=True)
        results[target.name] = result
        RESULTS.write_text(json.dumps({name: asdict(s) for name, s in results.items()}, indent=1))
    ordered = [results[t.name] for t in TARGETS if t.name in results]
    REPORT.write_text(report(ordered))
    print()
    print(table(ordered))
    print(f"\nsurvivors listed in {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
