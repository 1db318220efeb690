"""The Slack Web API client the bot builds: slack_sdk's AsyncWebClient, keeping its connections.

Handed no aiohttp session, slack_sdk opens one for every call and closes it after: a TCP and TLS
handshake with slack.com per call, most of a call's cost on a busy worker (50 approvals at once
are a few hundred calls). This client opens one session per event loop on first use (a client
built at startup may serve more than one loop: tests, the CLI's asyncio.run) and keeps it, so
calls reuse connections; `aclose` closes the running loop's.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient


class PooledWebClient(AsyncWebClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._given: aiohttp.ClientSession | None = None
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]  (slack_sdk's is a plain attribute, read at each call)
    def session(self) -> aiohttp.ClientSession | None:
        if self._given is not None:
            return self._given
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        held = self._sessions.get(loop)
        if held is None or held.closed:
            # As slack_sdk's session per call: the client's timeout per request, and no cookie
            # carried from one call to the next (a session keeps what a response sets, by default).
            held = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                         cookie_jar=aiohttp.DummyCookieJar())
            self._sessions[loop] = held
        return held

    @session.setter
    def session(self, value: aiohttp.ClientSession | None) -> None:
        self._given = value

    def sharing(self, **changes: Any) -> PooledWebClient:
        """A copy with `changes` to its settings (retry handlers, say) that uses this one's connections."""
        settings = {"token": self.token, "base_url": self.base_url, "timeout": self.timeout, "ssl": self.ssl,
                    "proxy": self.proxy, "headers": self.headers, "retry_handlers": self.retry_handlers}
        copy = PooledWebClient(**{**settings, **changes})
        copy._given, copy._sessions = self._given, self._sessions
        return copy

    async def aclose(self) -> None:
        """Close the running loop's session (a session handed in is its owner's to close)."""
        try:
            held = self._sessions.pop(asyncio.get_running_loop(), None)
        except RuntimeError:
            return
        if held is not None and not held.closed:
            await held.close()
