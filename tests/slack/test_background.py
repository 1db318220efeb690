"""The Slack front door's after-the-ack lanes and the command path's group cache, without a
network: a job that hangs or fails costs its lane a bounded time and is logged, a full queue
drops (logged) instead of growing, and a stale group map answers at once while one refresh
runs behind it (a map past max_stale is still waited for, then fails closed)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import httpx
from slack_sdk.web.async_client import AsyncWebClient
from structlog.testing import capture_logs

from bot.slack.background import AckWindow, Background, Lane
from bot.server import Readiness, create_app
from bot.settings import Settings
from bot.slack.app import SlackDeps, create_slack_app, queue_refusal, slack_router
from bot.slack.groups import GroupResolver


def of_lane(logs: list[dict[str, Any]], lane: str) -> list[dict[str, Any]]:
    """The captured lines about `lane`: the tests share one event loop (session scope), and a task
    another test left on it can log while this one captures (a refusal's write, under xdist)."""
    return [e for e in logs if e.get("lane") == lane]


async def test_a_hanging_job_is_cut_at_its_timeout_and_the_lane_goes_on() -> None:
    lane = Lane("t", workers=1, timeout=0.2)
    release = asyncio.Event()
    done: list[str] = []

    async def hang() -> None:
        await release.wait()

    async def fail() -> None:
        raise RuntimeError("response_url answered 500")

    async def ok() -> None:
        done.append("ok")

    with capture_logs() as logs:
        assert lane.submit("hang", hang) and lane.submit("fail", fail) and lane.submit("ok", ok)
        await lane.drain(timeout=30)
    assert done == ["ok"] and lane.failed == 2 and lane.pending == 0
    logs = of_lane(logs, "t")
    assert sorted(e["event"] for e in logs) == ["slack background job failed", "slack background job timed out"]
    assert {e["what"] for e in logs} == {"hang", "fail"}


async def test_twenty_hanging_answers_do_not_hold_back_the_next_users_answer() -> None:
    """A burst's hanging response_urls (Slack slow for some) must not queue everyone else's
    answers behind their timeouts: with 4 workers the next answer waited out five rounds of them."""
    background = Background(answer_timeout=60)
    release, answered = asyncio.Event(), asyncio.Event()

    async def hang() -> None:
        await release.wait()

    async def ok() -> None:
        answered.set()

    for n in range(20):
        assert background.answers.submit(f"hang-{n}", hang)
    assert background.answers.submit("ok", ok)
    try:
        await asyncio.wait_for(answered.wait(), 10)  # far below the 60 s each hanging answer may take
        assert background.answers.pending == 20
    finally:
        release.set()
        await background.drain(timeout=5)



async def test_queued_jobs_wait_while_requests_wait_for_their_ack_and_no_longer_than_max_wait() -> None:
    """A burst: the first command's answer is queued while the others are still being acked; it
    goes once the last of them is, not in between (bounded, so a steady stream cannot starve it)."""
    window = AckWindow(max_wait=5.0)
    lane = Lane("answers", workers=2, window=window)
    ran: list[tuple[str, int]] = []

    async def answer() -> None:
        ran.append(("answer", window.open))

    with window.acking():
        with window.acking():
            lane.submit("first answer", answer)
            await asyncio.sleep(0.2)
            assert ran == [], "an answer ran while two requests waited for their ack"
        await asyncio.sleep(0.1)
        assert ran == []
    await asyncio.sleep(0.1)
    assert ran == [("answer", 0)]

    window.max_wait = 0.3  # requests never stop coming: the job goes after max_wait anyway
    with window.acking():
        lane.submit("second answer", answer)
        await asyncio.sleep(1.0)
        assert ran[-1] == ("answer", 1)
    await lane.drain(timeout=5)


async def test_submit_never_waits_and_a_full_queue_drops_with_an_error() -> None:
    lane = Lane("t", workers=1, size=2, timeout=30)
    release = asyncio.Event()
    ran: list[int] = []

    def job(i: int) -> Any:
        async def run() -> None:
            await release.wait()
            ran.append(i)
        return run

    with capture_logs() as logs:
        accepted = [lane.submit(f"job {i}", job(i)) for i in range(5)]
        await asyncio.sleep(0)  # the worker takes the first job off the queue
        accepted.append(lane.submit("job 5", job(5)))
    # the first two fill the queue; the worker then takes one, which frees one slot
    assert accepted == [True, True, False, False, False, True]
    assert lane.dropped == 3 and [e["log_level"] for e in of_lane(logs, "t")] == ["error"] * 3
    release.set()
    await lane.drain(timeout=30)
    assert sorted(ran) == [0, 1, 5]


async def test_a_record_still_queued_when_the_door_stops_is_logged_with_what_it_said() -> None:
    """A store that hangs at shutdown: the refusal running is cut off (it says so itself), and the
    one queued behind it never runs. Its drain used to log only how many were left; the user's
    refusal must at least be in the log, with who and why (the DESIGN's "every refusal of an actor
    is audited")."""
    lane = Lane("refusals", workers=1, timeout=30)
    store_down = asyncio.Event()

    async def hanging_write() -> None:
        await store_down.wait()

    with capture_logs() as logs:
        assert lane.submit("refusal audit", hanging_write, {"actor": "slack:U1", "reason": "first"})
        assert lane.submit("refusal audit", hanging_write, {"actor": "slack:U2", "reason": "not an owner"})
        await asyncio.sleep(0.05)  # the worker holds the first; the second waits in the queue
        await lane.drain(timeout=0.2)
    never_ran = [e for e in logs if e["event"] == "slack background job never ran: the door stopped"]
    assert [(e["log_level"], e["actor"], e["reason"], e["what"]) for e in never_ran] == [
        ("error", "slack:U2", "not an owner", "refusal audit")]
    assert lane.pending == 0


async def test_a_drained_lane_takes_nothing_more_and_logs_what_it_was_handed() -> None:
    """A listener that ran on past the shutdown's grace queued its record after the drain: the lane
    used to start its workers again, on a door that was stopping. Now it is refused and logged."""
    lane = Lane("records", workers=1, timeout=30)
    ran: list[str] = []

    async def write() -> None:
        ran.append("written")

    assert lane.submit("slack_command audit", write)
    await lane.drain(timeout=5)
    with capture_logs() as logs:
        assert not lane.submit("slack_command audit", write, {"actor": "slack:U3", "outcome": "started"})
    await asyncio.sleep(0.05)
    assert ran == ["written"] and lane.pending == 0 and lane.dropped == 1
    assert [(e["event"], e["actor"]) for e in of_lane(logs, "records")] == [
        ("slack background job not run: the door stopped", "slack:U3")]
    assert lane._tasks == []  # no worker started again


async def test_a_refusal_after_the_drain_is_logged_once_as_the_door_stopping() -> None:
    """Review of ec3412a: queue_refusal read every refused submit as a full lane, so a refusal after
    the drain was logged twice, once as a full queue that never was."""
    deps = SimpleNamespace(background=Background(), refusals_queued=Counter())
    await deps.background.drain(timeout=1)

    async def record() -> None:
        pass

    with capture_logs() as logs:
        queue_refusal(deps, "slack:U1", record, {"actor": "slack:U1", "operation": "form", "reason": "not an owner"})
    mine = [e for e in logs if e.get("actor") == "slack:U1"]
    assert [e["event"] for e in mine] == ["slack background job not run: the door stopped"]
    assert mine[0]["reason"] == "not an owner" and deps.refusals_queued == Counter()


async def test_a_refusal_a_full_lane_drops_is_logged_once_with_what_it_said() -> None:
    """The lane logs every job it refuses with what the job said; its callers do not log it again."""
    lane = Lane("refusals", workers=1, size=1, timeout=30)
    deps = SimpleNamespace(background=SimpleNamespace(refusals=lane), refusals_queued=Counter())
    release = asyncio.Event()

    async def hang() -> None:
        await release.wait()

    assert lane.submit("hang", hang)
    await asyncio.sleep(0)  # the worker takes it off the queue
    assert lane.submit("hang", hang)  # the queue's one place
    with capture_logs() as logs:
        queue_refusal(deps, "slack:U4", hang, {"actor": "slack:U4", "operation": "form", "reason": "not an owner"})
    mine = [e for e in logs if e.get("actor") == "slack:U4"]
    assert [(e["event"], e["reason"]) for e in mine] == [("slack background queue full; dropped", "not an owner")]
    assert deps.refusals_queued == Counter() and lane.dropped == 1
    release.set()
    await lane.drain(timeout=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Web:
    """usergroups.list from `groups`; `gate` holds each call until set."""

    def __init__(self, groups: dict[str, list[str]]) -> None:
        self.groups = groups
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def usergroups_list(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        await self.gate.wait()
        return {"ok": True, "usergroups": [{"id": f"S0{h.upper()}", "handle": h, "date_delete": 0, "users": users}
                                           for h, users in self.groups.items()]}


async def test_a_stale_map_answers_commands_at_once_and_is_refreshed_once_behind_them() -> None:
    clock, web = Clock(), Web({"sre": ["U0BOB"]})
    groups = GroupResolver(web, ttl=300, max_stale=900, clock=clock)  # type: ignore[arg-type]
    groups.warm()
    assert await groups.handles("U0BOB", stale_ok=True) == ["sre"] and web.calls == 1  # the warm fetch, awaited

    web.groups = {"sre": []}  # BOB left sre; the map is past its TTL and Slack is slow to answer
    web.gate.clear()
    clock.now += 301
    answers = [await groups.handles("U0BOB", stale_ok=True) for _ in range(5)]
    await asyncio.sleep(0.01)  # the refresh task gets its turn (and waits at the gate)
    assert answers == [["sre"]] * 5 and web.calls == 2, "the known map, one refresh behind it"
    web.gate.set()
    await asyncio.wait_for(groups._refreshing, 30)  # type: ignore[arg-type]
    assert await groups.handles("U0BOB", stale_ok=True) == []


async def test_votes_wait_for_the_refresh_and_a_map_past_max_stale_is_never_served_stale() -> None:
    clock, web = Clock(), Web({"sre": ["U0BOB"]})
    groups = GroupResolver(web, ttl=300, max_stale=900, clock=clock)  # type: ignore[arg-type]
    assert await groups.handles("U0BOB") == ["sre"]
    web.groups = {"sre": []}
    clock.now += 301
    assert await groups.handles("U0BOB") == [], "without stale_ok (votes) the refresh is awaited"

    web.groups = {"sre": ["U0BOB"]}
    assert await groups.handles("U0BOB") == []  # fresh for another TTL
    web.groups = {"sre": []}
    clock.now += 901
    assert await groups.handles("U0BOB", stale_ok=True) == [], "past max_stale a command waits for Slack too"


async def test_an_unsigned_request_uploading_slowly_does_not_hold_the_answers_back(tmp_path) -> None:
    """The router counts a request in the ack window only once Slack's signature holds: anyone who
    can reach /slack/events could otherwise keep it open, a slow body at a time, and every queued
    answer and audit record would wait its full max_wait."""
    settings = Settings(data_dir=tmp_path, slack_signing_secret="s" * 32, slack_bot_token="xoxb-test",
                        slack_api_url="http://127.0.0.1:9/api/")
    deps = SlackDeps(None, "tq", lambda: None, None, AsyncWebClient(token="xoxb-test"))  # type: ignore[arg-type]
    slack = create_slack_app(settings, deps)
    app = create_app(Readiness(), [slack_router(slack, settings)])
    seen: list[int] = []

    async def slowly() -> Any:
        yield b"command=%2Fplaybook"
        await asyncio.sleep(0.3)
        seen.append(deps.background.window.open)
        yield b"&text=run"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front") as client:
        response = await client.post("/slack/events", content=slowly(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 401 and seen == [0]
