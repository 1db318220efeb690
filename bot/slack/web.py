"""The notifier's and the answers' Slack Web API client: slack_sdk's AsyncWebClient, keeping its connections.

Handed no aiohttp session, slack_sdk opens one for every call and closes it after: a TCP and TLS
handshake with slack.com per call, most of a sync's cost on a busy worker (50 approvals at once
are a few hundred calls). This client opens one session per event loop on first use (a client
built at startup may serve more than one loop: tests, the CLI's asyncio.run) and keeps it.

The notifier and the front door's ephemeral answers use it (chat.postEphemeral, and the
response_url POSTs through the same kept sessions: `respond_kept`); a burst of commands
otherwise opens a connection per answer. A kept connection can be closed by the far end just as
a call is written on it; the call then fails unsent, and nothing retries a POST. The notifier
only marks Slack pending and its next sync posts (it never learns of a post that did not
happen); an answer falls back to its other way (bot/slack/app.py reply_ephemeral). But a
`slack.post` step would fail for good ("may have posted") and a form's views.open would miss
its trigger's 3 s: those keep slack_sdk's connection per call. Idle connections are dropped
after KEEPALIVE seconds, well before servers and load balancers close theirs (60 s and more).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient, WebhookResponse

KEEPALIVE = 5.0  # seconds an idle connection is kept


class PooledWebClient(AsyncWebClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._given: aiohttp.ClientSession | None = None
        # id(loop) -> (loop, its session); sessions of loops that have closed are dropped on access
        self._sessions: dict[int, tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]] = {}
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]  (slack_sdk's is a plain attribute, read at each call)
    def session(self) -> aiohttp.ClientSession | None:
        if self._given is not None:
            return self._given
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        held = self._sessions.get(id(loop))
        if held is None or held[0] is not loop or held[1].closed:
            for key, (other, _) in list(self._sessions.items()):
                if other.is_closed():
                    del self._sessions[key]
            # As slack_sdk's session per call: no cap on connections, the client's timeout per
            # request, and no cookie carried from one call to the next.
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            held = self._sessions[id(loop)] = (loop, session)
        return held[1]

    @session.setter
    def session(self, value: aiohttp.ClientSession | None) -> None:
        self._given = value

    async def aclose(self) -> None:
        """Close the running loop's session (a session handed in is its owner's to close)."""
        try:
            held = self._sessions.pop(id(asyncio.get_running_loop()), None)
        except RuntimeError:
            return
        if held is not None and not held[1].closed:
            await held[1].close()


def _settings(web: AsyncWebClient) -> dict[str, Any]:
    return {"token": web.token, "base_url": web.base_url, "timeout": web.timeout, "ssl": web.ssl,
            "proxy": web.proxy, "headers": web.headers, "retry_handlers": web.retry_handlers}


def pooled(web: AsyncWebClient) -> PooledWebClient:
    """`web`'s settings, keeping its connections (itself if it does already)."""
    return web if isinstance(web, PooledWebClient) else PooledWebClient(**_settings(web))


async def respond_kept(respond: Any, web: AsyncWebClient | None, text: str, **extra: Any) -> WebhookResponse:
    """Bolt's `respond(text=..., **extra)`, its POST to the response_url on `web`'s kept session
    when it has one (Bolt's opens a session, and a connection, per answer). Same message: Bolt
    leaves out what is None, and empty blocks and attachments."""
    url = getattr(respond, "response_url", None)
    session = web.session if isinstance(web, PooledWebClient) else None
    if not url or session is None:
        return await respond(text=text, **extra)
    message = {"text": text, **{k: v for k, v in extra.items()
                                if v is not None and not (k in ("blocks", "attachments") and not v)}}
    client = AsyncWebhookClient(url=url, session=session, timeout=int(web.timeout), proxy=getattr(respond, "proxy", None),
                                ssl=getattr(respond, "ssl", None))
    return await client.send_dict(message)


def copy_of(web: AsyncWebClient, **changes: Any) -> AsyncWebClient:
    """`web` with `changes` to its settings (retry handlers, say); a pooled client's copy uses the
    same connections."""
    settings = _settings(web)
    if not isinstance(web, PooledWebClient):
        return AsyncWebClient(**{**settings, **changes})
    copy = PooledWebClient(**{**settings, **changes})
    copy._given, copy._sessions = web._given, web._sessions
    return copy
