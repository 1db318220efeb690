"""Count the Temporal calls a front door makes: a client interceptor, reusable by any test.

    calls = TemporalCalls()
    client = calls.client(dev_env.client)      # the same connection, every call recorded
    ...
    assert calls.made() == [("start_workflow", run_id)]

Every client operation goes through the interceptor (start, describe, signal, query, cancel,
list, ...), each recorded as (operation, workflow id or list query). Raw `workflow_service`
RPCs bypass interceptors: the bot's front doors make none.
"""

from __future__ import annotations

import inspect
from typing import Any

from temporalio.client import Client, Interceptor, OutboundInterceptor


class TemporalCalls(Interceptor):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def client(self, client: Client) -> Client:
        """A client on `client`'s connection and namespace whose calls are counted here."""
        return Client(**{**client.config(), "interceptors": [self]})

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Recording(next, self.calls)

    def made(self) -> list[tuple[str, str | None]]:
        """The calls since the last `clear`, in order."""
        return list(self.calls)

    def clear(self) -> None:
        self.calls.clear()


def _subject(input: Any) -> str | None:
    for name in ("id", "workflow_id", "query"):
        value = getattr(input, name, None)
        if isinstance(value, str):
            return value
    return None


class _Recording(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, calls: list[tuple[str, str | None]]) -> None:
        super().__init__(next)
        self._calls = calls


def _recorder(name: str, is_async: bool) -> Any:
    if is_async:
        async def call(self: _Recording, input: Any) -> Any:
            self._calls.append((name, _subject(input)))
            return await getattr(self.next, name)(input)
    else:
        def call(self: _Recording, input: Any) -> Any:  # type: ignore[misc]
            self._calls.append((name, _subject(input)))
            return getattr(self.next, name)(input)
    call.__name__ = name
    return call


for _name, _fn in inspect.getmembers(OutboundInterceptor, inspect.isfunction):
    if not _name.startswith("_"):
        setattr(_Recording, _name, _recorder(_name, inspect.iscoroutinefunction(_fn)))
