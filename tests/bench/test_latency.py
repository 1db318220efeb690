"""The latency bench's pure parts: percentiles, a load process's report, the results records, and
the target noting arrivals (real HTTP on a local port)."""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs

import httpx

from bench.latency import figures, percentile, side, spread
from bench.load import click
from bench.target import Target
from bot.devstack import free_port
from bot.slack.blocks import APPROVE_ACTION


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))
    assert spread([1.0, 2.0, 3.0, 4.0]) == {"p50": 2.0, "p95": 4.0, "p99": 4.0}


def test_side_leaves_out_warmup_and_counts_what_never_arrived() -> None:
    lines = [
        {"key": "host-0", "ms": 500.0, "status": 200, "answer_ms": 1.0, "warmup": True},
        {"key": "host-1", "ms": 40.0, "status": 200, "answer_ms": 1.0, "warmup": False},
        {"key": "host-2", "ms": None, "status": 200, "answer_ms": 1.0, "warmup": False},
        {"key": "host-3", "ms": 60.0, "status": 500, "answer_ms": 1.0, "warmup": False},
        {"error": "host-3: refused"},
        {"summary": {"sent": 4}},
    ]
    got = side(lines)
    assert got["ms"] == [40.0, 60.0]
    assert (got["missing"], got["refused"]) == (1, 1)
    assert got["errors"] == ["host-3: refused"]


def _side(ms: list[float], missing: int = 0) -> dict:
    return {"ms": ms, "missing": missing, "refused": 0, "answer_ms": [], "errors": []}


def test_figures_one_record_per_goal_with_every_percentile() -> None:
    bot, floor = _side([10.0, 20.0, 30.0, 40.0]), _side([10.0, 10.0, 20.0, 20.0])
    records = figures("alert", {"p50": "<= 1.3", "p95": "<= 1.5"}, bot, floor, [])
    assert [r["name"] for r in records] == ["alert, p50", "alert, p95"]
    p50, p95 = records
    assert (p50["bot"], p50["floor"], p50["ratio"], p50["met"]) == (20.0, 10.0, 2.0, False)
    assert (p95["bot"], p95["floor"], p95["ratio"], p95["met"]) == (40.0, 20.0, 2.0, False)
    assert p50["bot_percentiles"] == {"p50": 20.0, "p95": 40.0, "p99": 40.0}
    assert p50["floor_percentiles"] == {"p50": 10.0, "p95": 20.0, "p99": 20.0}


def test_a_goal_is_not_met_when_requests_never_arrived() -> None:
    fast = _side([10.0, 10.0])
    [complete] = figures("click", {"p95": "<= 1.3"}, fast, _side([10.0, 10.0]), [])
    [lossy] = figures("click", {"p95": "<= 1.3"}, _side([10.0, 10.0], missing=1), _side([10.0, 10.0]), [])
    assert complete["met"] is True
    assert lossy["met"] is False and "1 never arrived" in lossy["notes"]


def test_click_is_an_approve_block_action_on_the_run() -> None:
    run = {"run_id": "run-1", "step_id": "act", "channel": "C0X", "ts": "12.5"}
    payload = json.loads(parse_qs(click(run, "http://r"))["payload"][0])
    assert payload["type"] == "block_actions"
    [action] = payload["actions"]
    assert action["action_id"] == APPROVE_ACTION
    assert json.loads(action["value"]) == {"run_id": "run-1", "step_id": "act"}
    assert (payload["container"]["message_ts"], payload["channel"]["id"]) == ("12.5", "C0X")


def test_click_sends_the_buttons_value_back_as_it_was_posted() -> None:
    """As Slack does: the execution the bot's button carries reaches the bot (without it, every
    click would cost the bot a describe that real clicks never cause)."""
    posted = '{"run_id":"run-1","step_id":"act","execution":"e-1"}'
    run = {"run_id": "run-1", "step_id": "act", "channel": "C0X", "ts": "12.5", "value": posted}
    [action] = json.loads(parse_qs(click(run, "http://r"))["payload"][0])["actions"]
    assert action["value"] == posted


async def test_target_notes_the_first_arrival_of_each_key() -> None:
    target, port = Target(), free_port()
    await target.start(port)
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/hit/a")).status_code == 200
            first = target.arrivals["a"]
            assert (await http.post(f"http://127.0.0.1:{port}/hit/a")).status_code == 200
        assert target.arrivals["a"] == first  # a retry does not move it
        assert await target.wait(["a"], timeout=5) == set()
        assert await target.wait(["a", "b"], timeout=0.1) == {"b"}
    finally:
        await target.stop()
