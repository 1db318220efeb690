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
from typing import Any

import structlog
from slack_bolt.kwargs_injection.async_args import AsyncArgs

log = structlog.get_logger(__name__)

ACK_WINDOW = 3.0  # seconds: Slack's, and Bolt's ack_timeout
Listener = Callable[..., Awaitable[None]]
OnError = Callable[[Exception, dict[str, Any], Any], None]  # (error, body, respond): tell the user, log

_running: set[asyncio.Task[None]] = set()  # what runs on after its ack: held until done
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
        acked = asyncio.Event()

        async def ack(*positional: Any, **named: Any) -> Any:
            response = await args.ack(*positional, **named)  # an ack Bolt refuses is a failure before the ack
            acked.set()
            return response

        kwargs = {name: ack if name == "ack" else getattr(args, name) for name in names}
        task = asyncio.ensure_future(listener(**kwargs))
        if not acked_by_bolt:
            until_acked = asyncio.ensure_future(acked.wait())
            try:
                await asyncio.wait((task, until_acked), timeout=window, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # the request is gone (shutdown): the listener still runs to its end
                _runs_on(task, on_error, args)
                raise
            finally:
                until_acked.cancel()
            if task.done() and not acked.is_set():
                task.result()  # ended (or failed) without an ack: Bolt answers, as for any listener
                return
            if not acked.is_set():
                log.warning("slack listener did not ack within the window; it runs on", listener=_name(listener),
                            window_s=window)
        _runs_on(task, on_error, args)

    run.__name__ = _name(listener)  # what Bolt logs
    setattr(run, AT_ACK, True)
    return run


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
