"""The Slack ack bench's verdicts: the ratio is the production shape's goal, an ack that is not 200
within 3 s misses in either shape (issue 15, item 3)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import results, slack_ack
from bench.slack_ack import DEV_GOAL, GOAL, VARIANTS, per_burst, show


def burst(ms: float, status: int = 200, warmup: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    warm = [{"burst": b, "ms": 50.0, "status": 200, "warmup": True, **(warmup or {})} for b in range(3)]
    return [*warm, *({"burst": b, "ms": ms, "status": status} for b in range(3))]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    figures: list[dict[str, Any]] = []
    monkeypatch.setattr(results, "record", lambda *f, samples=None: figures.extend(f))
    monkeypatch.setattr(slack_ack, "load_average", lambda: "0.0 0.0 0.0")
    return figures


def run(shape: str, bot_ms: float, status: int = 200, warmup: dict[str, Any] | None = None) -> None:
    bot = {variant: per_burst(burst(bot_ms, status, warmup)) for variant in VARIANTS}
    show(shape, 3, 1, per_burst(burst(200.0)), bot, runs=0, ids=0, layout=[])


def test_serve_is_held_to_the_ratio(recorded: list[dict[str, Any]]) -> None:
    run("serve", 300.0)  # 1.5x the floor, every ack 200 in time
    assert {(f["goal"], f["met"]) for f in recorded} == {(GOAL, False)}
    recorded.clear()
    run("serve", 250.0)
    assert {(f["goal"], f["met"]) for f in recorded} == {(GOAL, True)}


def test_dev_is_held_to_every_ack_200_in_time_its_ratio_shown(recorded: list[dict[str, Any]]) -> None:
    run("dev", 300.0)
    assert {(f["goal"], f["met"], f["ratio"]) for f in recorded} == {(DEV_GOAL, True, 1.5)}
    recorded.clear()
    run("dev", 100.0, status=404)  # fast, but Bolt's "didn't call ack()"
    assert {(f["goal"], f["met"]) for f in recorded} == {(DEV_GOAL, False)}
    recorded.clear()
    run("dev", 3100.0)  # 200, after Slack's 3 s
    assert {(f["goal"], f["met"]) for f in recorded} == {(DEV_GOAL, False)}


@pytest.mark.parametrize("shape", ["serve", "dev"])
@pytest.mark.parametrize("warmup", [{"status": 500}, {"ms": 4000.0}], ids=["a 500", "over 3 s"])
def test_a_warm_up_command_is_held_to_the_deadline_too_not_to_the_latency(
    recorded: list[dict[str, Any]], shape: str, warmup: dict[str, Any]
) -> None:
    """Review (stop 47): the sequential commands before each burst were left out altogether, so the
    first command to a freshly started `dev` could miss Slack's 3 s unseen."""
    run(shape, 210.0, warmup=warmup)
    assert {(f["met"], f["bot"]) for f in recorded} == {(False, 210.0)}  # missed; the latency is the bursts'
    assert {f["non_200"] + f["over_3s"] for f in recorded} == {3}


def test_a_goal_that_bounds_no_ratio_is_left_to_its_bench_a_misspelt_bound_is_an_error() -> None:
    assert results.met(5.0, DEV_GOAL) is None
    assert results.met(1.2, GOAL) is True
    for misspelt in ("=< 1.3", "< 1.3", "1.3"):
        with pytest.raises(ValueError):
            results.met(1.2, misspelt)
