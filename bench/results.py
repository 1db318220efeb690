"""Every bench's figures in one place: bench/results.json (one entry per figure, replaced when that
figure is measured again), bench/samples.json (the latency distributions behind some figures), and
from those `python -m bench.results` writes bench/results.md and bench/results.svg."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
SAMPLES = HERE / "samples.json"


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(  # the files this module writes do not count
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results.json", ":!bench/results.md",
             ":!bench/results.svg", ":!bench/samples.json"],
            cwd=HERE.parent, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


NO_GOAL = "none"  # a companion figure, shown beside a goal's figure to read it by, with no goal of its own


def met(ratio: float, goal: str) -> bool | None:
    """goal: '>= 0.7' or '<= 1.3'; None for NO_GOAL or a goal in words, no bound on the ratio (its
    bench sets `met` itself). A bound spelled otherwise ('=< 1.3') is a ValueError, not a silent '-'."""
    if goal == NO_GOAL or goal[:1].isalpha():
        return None
    op, bound = goal.split()
    if op not in ("<=", ">="):
        raise ValueError(f"goal {goal!r}: a bound on the ratio is '<= N' or '>= N'")
    return ratio >= float(bound) if op == ">=" else ratio <= float(bound)


def figure(
    name: str, bot: float, floor: float | None, goal: str, unit: str, topology: Any, *,
    ratio: float | None = None, notes: str = "", **extra: Any,
) -> dict[str, Any]:
    """One figure. Without a floor (an absolute goal such as RSS), the ratio is bot over the goal's bound."""
    if ratio is None:
        ratio = bot / floor if floor else float("nan")
    one, five, fifteen = os.getloadavg()
    return {
        "name": name, "bot": round(bot, 3), "floor": None if floor is None else round(floor, 3),
        "ratio": round(ratio, 3), "goal": goal, "met": met(ratio, goal), "unit": unit, "topology": topology,
        "load_average": [round(one, 2), round(five, 2), round(fifteen, 2)], "git_rev": git_rev(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "notes": notes, **extra,
    }


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record(*figures: dict[str, Any], samples: dict[str, dict[str, list[float]]] | None = None) -> None:
    """Merge into results.json (by name) and samples.json (by plot title), then rewrite the table and plot."""
    known = {f["name"]: f for f in (_read(RESULTS) or [])}
    for f in figures:
        known[f["name"]] = f
    RESULTS.write_text(json.dumps(list(known.values()), indent=1) + "\n")
    if samples:
        stored = _read(SAMPLES) or {}
        stored.update({title: {label: [round(v, 1) for v in values] for label, values in series.items()}
                       for title, series in samples.items()})
        SAMPLES.write_text(json.dumps(stored) + "\n")
    write_report()


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"


def write_report() -> None:
    figures = _read(RESULTS) or []
    lines = [
        "# Benchmarks (`make bench`)",
        "",
        "Written by `bench/results.py` from bench/results.json (topology, load average, git rev and date of each",
        "figure are there). The system under test runs as the processes a user runs, the load comes from its own",
        "process, and each floor is measured the same way in the same run. Ratio = bot / floor (for a memory",
        "figure, bot / the goal's bound).",
        "",
        "| figure | bot | floor | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        unit = f" {f['unit']}" if f.get("unit") else ""
        floor = f"{_fmt(f['floor'])}{unit}" if f["floor"] is not None else ""
        lines.append(f"| {f['name']} | {_fmt(f['bot'])}{unit} | {floor} | {f['ratio']:.2f} | {f['goal']} | "
                     f"{'-' if f['met'] is None else 'yes' if f['met'] else '**no**'} |")
    loads = sorted({f"{f['load_average'][0]:.1f}" for f in figures}, key=float)
    if loads:
        lines += ["", f"Load average (1 min) when the figures were taken: {loads[0]}-{loads[-1]} "
                  "(2 cores, shared with other work: the ratios, not the absolute figures, are what compares)."]
    notes = [f"- {f['name']}: {f['notes']}" for f in figures if f.get("notes")]
    if notes:
        lines += ["", "Notes:", "", *notes]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    plot()


def plot() -> None:
    """Latency distributions (empirical CDFs, bot vs floor) into results.svg; skipped without matplotlib."""
    samples = _read(SAMPLES) or {}
    if not samples:
        return
    try:
        import matplotlib

        matplotlib.use("svg")
        matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: a smaller file
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return
    cols = min(3, len(samples))
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(samples):]:
        ax.set_visible(False)
    for ax, (title, series) in zip(axes.flat, sorted(samples.items())):
        for label, values in sorted(series.items()):
            ordered = sorted(values)
            if not ordered:
                continue
            # at most ~100 points a curve: the shape shows, the file stays small
            ranks = sorted({min(len(ordered) - 1, round(k * (len(ordered) - 1) / 100)) for k in range(101)})
            ax.step([ordered[r] for r in ranks], [(r + 1) / len(ordered) for r in ranks], where="post",
                    label=f"{label} (n={len(ordered)})", linewidth=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.set_ylabel("fraction at or under", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(HERE / "results.svg")
    plt.close(fig)


if __name__ == "__main__":
    write_report()
