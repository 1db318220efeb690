"""Bolt listeners whose HTTP response leaves at their ack, without Bolt's 10 ms poll.

Bolt's default runner (`process_before_response=False`) runs each listener in a task and polls
every 10 ms until it has acked. Under a burst of 50 commands that is a wake-up of the front door's
loop per waiting request every 10 ms (27,228 sleeps for 459 commands, profiled: issue 15), and up
to 10 ms added to each ack. With `process_before_response=True` Bolt awaits the listener instead
and answers when it returns, so `at_ack` makes a listener return when it acks (or ends), and lets
the rest of it run on in a task.
A listener that neither acks nor ends within Slack's ack window is left running, and Bolt answers
as it always did for a listener that never acked.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from slack_bolt.kwargs_injection.async_args import AsyncArgs

log = structlog.get_logger(__name__)

ACK_WINDOW = 3.0  # seconds: Slack's, and Bolt's ack_timeout
Listener = Callable[..., Awaitable[None]]
T = TypeVar("T")
OnError = Callable[[Exception, dict[str, Any], Any], None]  # (error, body, respond): tell the user, log

_running: set[asyncio.Task[None]] = set()  # what runs on after its ack: held until done
_late_acks: set[asyncio.Task[None]] = set()  # acks sent when a budget ran out (ack_within)
AT_ACK = "playbook_at_ack"  # set on every listener at_ack returns (tests check the app registers only those)
# What AsyncArgs carries (Bolt fills other parameter names from its context, which at_ack does not).
INJECTED = frozenset(inspect.signature(AsyncArgs.__init__).parameters) - {"self"}


def at_ack(listener: Listener, on_error: OnError, *, acked_by_bolt: bool = False,
           window: float = ACK_WINDOW) -> Callable[[AsyncArgs], Awaitable[None]]:
    """`listener` for an app with `process_before_response=True`: returns at its ack.

    Bolt injects the listener's arguments by their names; here they are read from `args` by the
    same names, `ack` wrapped so that calling it releases the response. A failure before the ack
    is raised to Bolt (its error handler answers it, as before); one after it goes to `on_error`,
    since Bolt has already answered. `acked_by_bolt`: an Events API listener, which Bolt acks
    itself: it returns at once and the listener runs in the background.
    """
    names = list(inspect.signature(listener).parameters)
    unknown = sorted(set(names) - INJECTED)
    if unknown:  # Bolt would fill these from its context; AsyncArgs does not carry them
        raise TypeError(f"{_name(listener)}: at_ack cannot inject {', '.join(unknown)} (use `context`)")

    async def run(args: AsyncArgs) -> None:
        loop = asyncio.get_running_loop()
        # Set at the ack, at the listener's end or at the window's end; awaited directly, so the
        # response leaves one pass of the loop after the ack (under a burst each pass is a wait
        # behind every other request's ready work).
        released = loop.create_future()
        acked = False

        def release(_: object = None) -> None:
            if not released.done():
                released.set_result(None)

        async def ack(*positional: Any, **named: Any) -> Any:
            nonlocal acked
            response = await args.ack(*positional, **named)  # an ack Bolt refuses is a failure before the ack
            acked = True
            release()
            return response

        kwargs = {name: ack if name == "ack" else getattr(args, name) for name in names}
        task = asyncio.ensure_future(listener(**kwargs))
        if not acked_by_bolt:
            task.add_done_callback(release)
            timer = loop.call_later(window, release)
            try:
                await released
            except asyncio.CancelledError:  # the request is gone (shutdown): the listener still runs to its end
                _runs_on(task, on_error, args)
                raise
            finally:
                timer.cancel()
                task.remove_done_callback(release)
            if task.done() and not acked:
                task.result()  # ended (or failed) without an ack: Bolt answers, as for any listener
                return
            if not acked:
                log.warning("slack listener did not ack within the window; it runs on", listener=_name(listener),
                            window_s=window)
        _runs_on(task, on_error, args)

    run.__name__ = _name(listener)  # what Bolt logs
    setattr(run, AT_ACK, True)
    return run


async def ack_within(ack: Callable[[], Awaitable[Any]], work: Awaitable[T], budget: float, what: str) -> T:
    """`work`'s result, acked as soon as it is done; a `work` that outlasts `budget` seconds is
    acked when the budget runs out and awaited on after the ack, never cancelled halfway. Its
    failure is raised after the ack. Run in the listener's own task: no task of its own and no
    waiter between the end of `work` and the ack (each would be another pass of the loop)."""
    acked = False

    async def ack_once() -> None:
        nonlocal acked
        if not acked:
            acked = True
            await ack()

    def ack_late() -> None:
        log.warning(f"slack {what} slower than the ack budget; acking first", budget_s=round(budget, 3))
        late = asyncio.ensure_future(ack_once())
        _late_acks.add(late)
        late.add_done_callback(_late_acked)

    timer = asyncio.get_running_loop().call_later(max(budget, 0.0), ack_late)
    try:
        return await work
    finally:
        timer.cancel()
        await ack_once()


def _late_acked(task: asyncio.Task[None]) -> None:
    _late_acks.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("slack ack failed", error=str(error))


async def settle(timeout: float) -> None:
    """On shutdown: give what runs on after its ack a bounded time to finish; log what does not."""
    if _running:
        _, left = await asyncio.wait(set(_running), timeout=timeout)
        if left:
            log.warning("slack listeners left running at shutdown", count=len(left))


def _runs_on(task: asyncio.Task[None], on_error: OnError, args: AsyncArgs) -> None:
    _running.add(task)
    task.add_done_callback(lambda done: _after(done, on_error, args))


def _after(done: asyncio.Task[None], on_error: OnError, args: AsyncArgs) -> None:
    _running.discard(done)
    if done.cancelled():  # the front door is stopping
        return
    error = done.exception()
    if isinstance(error, Exception):
        on_error(error, args.body, args.respond)


def _name(listener: Listener) -> str:
    return getattr(listener, "__qualname__", None) or getattr(listener, "__name__", "listener")
