"""at_ack: a listener's response leaves at its ack, the rest of it runs on, failures on either side
of the ack reach the right handler. A Bolt app dispatching signed requests, as bolt-python's own
tests do, against the fake Slack Web API (auth.test)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.runs import RunError
from bot.slack import listeners
from bot.slack.listeners import at_ack
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import FORM, SECRET, sign

Errors = list[tuple[Exception, dict[str, Any]]]


def bolt_app(fake_slack: FakeSlack, bolt_errors: list[Exception]) -> AsyncApp:
    app = AsyncApp(signing_secret=SECRET, client=AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url),
                   process_before_response=True)

    @app.error
    async def on_error(error: Exception) -> None:
        bolt_errors.append(error)

    return app


def command(text: str = "go") -> AsyncBoltRequest:
    body = urlencode({"command": "/x", "text": text, "user_id": "U1", "team_id": "T0FAKE", "channel_id": "C1",
                      "trigger_id": "1.2.3", "response_url": ""})
    return AsyncBoltRequest(body=body, headers={**sign(body), **FORM})


def event() -> AsyncBoltRequest:
    import json

    body = json.dumps({"type": "event_callback", "team_id": "T0FAKE", "api_app_id": "A1", "event_id": "Ev1",
                       "event_time": int(time.time()), "event": {"type": "app_home_opened", "user": "U1", "tab": "home"}})
    return AsyncBoltRequest(body=body, headers={**sign(body), "Content-Type": "application/json"})


def telling(errors: Errors) -> Callable[[Exception, dict[str, Any], Any], None]:
    return lambda error, body, respond: errors.append((error, body))


@pytest.fixture
def bolt_errors() -> list[Exception]:
    return []


@pytest.fixture
def bolt_polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Every asyncio.sleep that Bolt's listener runner makes (its wait for the ack)."""
    polls: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_code.co_filename.endswith("slack_bolt/listener/asyncio_runner.py"):
            polls.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    yield polls


async def test_the_response_leaves_at_the_ack_and_the_rest_runs_on(fake_slack: FakeSlack, bolt_errors, bolt_polls) -> None:
    app, told, gate, done = bolt_app(fake_slack, bolt_errors), [], asyncio.Event(), asyncio.Event()

    async def handle(ack, body, respond) -> None:  # noqa: ANN001  (Bolt injects by name)
        await ack("on it")
        await gate.wait()
        done.set()

    app.command("/x")(at_ack(handle, telling(told)))
    response = await asyncio.wait_for(app.async_dispatch(command()), 5)
    assert (response.status, response.body) == (200, "on it")
    assert not done.is_set(), "answered before the work after the ack"
    gate.set()
    await asyncio.wait_for(done.wait(), 5)
    assert bolt_polls == [], "Bolt never polled for the ack"
    assert told == [] and bolt_errors == []


async def test_bolts_own_runner_polls_for_the_ack(fake_slack: FakeSlack, bolt_errors, bolt_polls) -> None:
    """What at_ack replaces (so the test above can fail): the default runner sleeps 10 ms at a time."""
    app = AsyncApp(signing_secret=SECRET, client=AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))

    @app.command("/x")
    async def handle(ack) -> None:  # noqa: ANN001
        await ack()

    assert (await app.async_dispatch(command())).status == 200
    assert bolt_polls and set(bolt_polls) == {0.01}


async def test_a_failure_after_the_ack_is_told_not_raised_to_bolt(fake_slack: FakeSlack, bolt_errors) -> None:
    app, told = bolt_app(fake_slack, bolt_errors), []

    async def handle(ack, body) -> None:  # noqa: ANN001
        await ack()
        await asyncio.sleep(0)
        raise RunError("refused after the ack")

    app.command("/x")(at_ack(handle, telling(told)))
    assert (await app.async_dispatch(command("late"))).status == 200
    for _ in range(100):
        if told:
            break
        await asyncio.sleep(0.01)
    assert [(str(error), body["text"]) for error, body in told] == [("refused after the ack", "late")]
    assert bolt_errors == [] and not listeners._running


async def test_a_failure_before_the_ack_goes_to_bolts_error_handler(fake_slack: FakeSlack, bolt_errors) -> None:
    app, told = bolt_app(fake_slack, bolt_errors), []

    async def handle(ack) -> None:  # noqa: ANN001
        raise RunError("refused before the ack")

    app.command("/x")(at_ack(handle, telling(told)))
    response = await app.async_dispatch(command())
    assert response.status == 500  # Bolt's answer to a listener that failed unacked, as before
    assert [str(e) for e in bolt_errors] == ["refused before the ack"] and told == []


async def test_a_listener_that_never_acks_is_answered_at_the_window_and_runs_on(fake_slack: FakeSlack, bolt_errors) -> None:
    app, told, gate, done = bolt_app(fake_slack, bolt_errors), [], asyncio.Event(), asyncio.Event()

    async def handle(body) -> None:  # noqa: ANN001
        await gate.wait()
        done.set()

    app.command("/x")(at_ack(handle, telling(told), window=0.3))
    started = time.monotonic()
    response = await asyncio.wait_for(app.async_dispatch(command()), 5)
    assert 0.3 <= time.monotonic() - started < 2.0
    assert response.status == 404  # Bolt's answer to a listener that never acked, as before
    gate.set()
    await asyncio.wait_for(done.wait(), 5)
    assert told == []


async def test_a_listener_that_ends_without_an_ack_is_answered_at_once(fake_slack: FakeSlack, bolt_errors) -> None:
    app, told = bolt_app(fake_slack, bolt_errors), []

    async def handle(body) -> None:  # noqa: ANN001
        return None

    app.command("/x")(at_ack(handle, telling(told), window=10))
    started = time.monotonic()
    assert (await app.async_dispatch(command())).status == 404
    assert time.monotonic() - started < 5 and told == []


async def test_an_event_is_acked_by_bolt_at_once_and_handled_behind_it(fake_slack: FakeSlack, bolt_errors) -> None:
    app, told, gate, seen = bolt_app(fake_slack, bolt_errors), [], asyncio.Event(), []

    async def handle(event) -> None:  # noqa: ANN001
        await gate.wait()
        seen.append(event["tab"])
        raise RunError("the tab could not be drawn")

    app.event("app_home_opened")(at_ack(handle, telling(told), acked_by_bolt=True))
    response = await asyncio.wait_for(app.async_dispatch(event()), 5)
    assert response.status == 200 and seen == []
    gate.set()
    for _ in range(100):
        if told:
            break
        await asyncio.sleep(0.01)
    assert seen == ["home"] and [str(e) for e, _ in told] == ["the tab could not be drawn"]


async def test_an_ack_bolt_refuses_is_a_failure_before_the_ack(fake_slack: FakeSlack, bolt_errors) -> None:
    app, told = bolt_app(fake_slack, bolt_errors), []

    async def handle(ack) -> None:  # noqa: ANN001
        await ack(response_action="errors", errors={})  # Bolt's ack refuses empty errors

    app.command("/x")(at_ack(handle, telling(told)))
    assert (await app.async_dispatch(command())).status == 500  # through Bolt's error handler, as before
    assert len(bolt_errors) == 1 and told == []


async def test_a_view_submission_ack_with_errors_is_the_response(fake_slack: FakeSlack, bolt_errors) -> None:
    import json

    app, told = bolt_app(fake_slack, bolt_errors), []

    async def handle(ack, view) -> None:  # noqa: ANN001
        await ack(response_action="errors", errors={"block": "say more"})

    app.view("form")(at_ack(handle, telling(told)))
    payload = {"type": "view_submission", "team": {"id": "T0FAKE"}, "user": {"id": "U1"},
               "view": {"id": "V1", "type": "modal", "callback_id": "form", "state": {"values": {}}}}
    body = urlencode({"payload": json.dumps(payload)})
    response = await app.async_dispatch(AsyncBoltRequest(body=body, headers={**sign(body), **FORM}))
    assert response.status == 200 and json.loads(response.body) == {"response_action": "errors",
                                                                     "errors": {"block": "say more"}}


async def test_a_request_gone_before_the_ack_leaves_its_listener_running_and_told(fake_slack: FakeSlack,
                                                                                 bolt_errors) -> None:
    app, told, gate = bolt_app(fake_slack, bolt_errors), [], asyncio.Event()

    async def handle(ack, body) -> None:  # noqa: ANN001
        await gate.wait()
        await ack()
        raise RunError("failed after the ack")

    app.command("/x")(at_ack(handle, telling(told)))
    dispatch = asyncio.ensure_future(app.async_dispatch(command("gone")))
    await asyncio.sleep(0.05)
    dispatch.cancel()  # the front door stopping
    with pytest.raises(asyncio.CancelledError):
        await dispatch
    assert len(listeners._running) == 1  # still held, not left to the garbage collector
    gate.set()
    await listeners.settle(5)
    assert [str(e) for e, _ in told] == ["failed after the ack"] and not listeners._running


async def test_settle_waits_for_work_after_the_ack_at_shutdown(fake_slack: FakeSlack, bolt_errors) -> None:
    app, done = bolt_app(fake_slack, bolt_errors), []

    async def handle(ack) -> None:  # noqa: ANN001
        await ack()
        await asyncio.sleep(0.2)
        done.append(True)

    app.command("/x")(at_ack(handle, telling([])))
    assert (await app.async_dispatch(command())).status == 200 and done == []
    await listeners.settle(5)
    assert done == [True]


def test_a_parameter_bolt_would_take_from_its_context_is_refused_when_registering() -> None:
    async def handle(ack, user_id) -> None:  # noqa: ANN001
        await ack()

    with pytest.raises(TypeError, match="cannot inject user_id"):
        at_ack(handle, telling([]))


def test_every_listener_of_the_app_returns_at_its_ack(tmp_path) -> None:  # noqa: ANN001
    from bot.settings import Settings
    from bot.slack.app import SlackDeps, create_slack_app

    settings = Settings(data_dir=tmp_path, slack_signing_secret="s3cret", slack_bot_token="xoxb-x",
                        slack_api_url="http://127.0.0.1:9/api/")
    app = create_slack_app(settings, SlackDeps(None, "q", None, None, AsyncWebClient(token="xoxb-x")))
    registered = [listener.ack_function for listener in app._async_listeners]
    assert app.process_before_response is True and len(registered) >= 7
    assert all(getattr(f, listeners.AT_ACK, False) for f in registered), [f.__name__ for f in registered]


class Passes:
    """Counts passes of the event loop: a callback that schedules itself again on each pass. Under
    a burst every pass is a wait behind every other request's ready work."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def __enter__(self) -> Passes:
        def tick() -> None:
            self.count += 1
            self._handle = asyncio.get_running_loop().call_soon(tick)

        self._handle = asyncio.get_running_loop().call_soon(tick)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._handle is not None
        self._handle.cancel()


async def test_the_response_leaves_one_pass_of_the_loop_after_the_ack(fake_slack: FakeSlack, bolt_errors) -> None:
    app, told, at = bolt_app(fake_slack, bolt_errors), [], {}

    async def handle(ack) -> None:  # noqa: ANN001
        await ack()
        at["ack"] = passes.count
        await asyncio.sleep(0.2)  # runs on after the ack

    async def dispatch() -> Any:
        response = await app.async_dispatch(command())
        at["answered"] = passes.count
        return response

    app.command("/x")(at_ack(handle, telling(told)))
    with Passes() as passes:
        response = await asyncio.wait_for(dispatch(), 5)
    assert response.status == 200
    between = at["answered"] - at["ack"]
    assert between <= 1, f"{between} passes of the loop between the ack and the response"


async def test_ack_within_acks_in_the_pass_its_work_ends() -> None:
    """No task and no waiter between the start's end and the ack (the command's ack path)."""
    at: dict[str, int] = {}

    async def work() -> str:
        await asyncio.sleep(0.01)
        at["done"] = passes.count
        return "started"

    async def ack() -> None:
        at["ack"] = passes.count

    with Passes() as passes:
        answer = await listeners.ack_within(ack, work(), 2.0, "run start")
    assert answer == "started"
    assert at["ack"] == at["done"]


async def test_ack_within_acks_at_the_budget_and_finishes_the_work_behind_it() -> None:
    loop, acked, finished = asyncio.get_running_loop(), [], []

    async def work() -> str:
        await asyncio.sleep(0.3)
        finished.append(loop.time())
        return "started"

    async def ack() -> None:
        acked.append(loop.time())

    began = loop.time()
    answer = await listeners.ack_within(ack, work(), 0.05, "run start")
    assert answer == "started" and len(acked) == 1, "acked once, at the budget, and not again at the end"
    assert acked[0] - began < 0.2 and finished[0] - began >= 0.3


async def test_ack_within_acks_before_raising_the_works_failure() -> None:
    acked: list[bool] = []

    async def work() -> str:
        raise RunError("refused", rule="start")

    async def ack() -> None:
        acked.append(True)

    with pytest.raises(RunError, match="refused"):
        await listeners.ack_within(ack, work(), 2.0, "run start")
    assert acked == [True]
