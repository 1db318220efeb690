"""`slack.post`: a playbook step that tells people something, in a channel or a run's thread.

Slack errors are sorted by whether waiting helps: rate limits, Slack's 5xx and network trouble
are retried by the step's retry policy; a missing channel or a bad token fails at once, naming
Slack's error code, because no retry will fix it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import structlog
from pydantic import Field, field_validator
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.actions.base import ActionContext, ActionFailed, ActionParams, ActionRefused, action, whole_number_as_text

log = structlog.get_logger("bot.actions.slack")

TEXT_LIMIT = 40_000  # Slack truncates longer messages; refuse them at validation instead
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
NOT_CONFIGURED = (
    "slack.post: Slack is not configured: set PLAYBOOK_BOT_SLACK_BOT_TOKEN (the app's xoxb- bot token) "
    "for the worker"
)

_TS = re.compile(r"^\d+\.\d+$")


class SlackPostParams(ActionParams):
    channel: str = Field(description='A channel name ("#incidents") or id ("C0123ABCD").', min_length=1)
    text: str = Field(description="The message, mrkdwn; templates are rendered before the step runs.", min_length=1)
    thread_ts: str | None = Field(None, description="Reply in this message's thread (its ts).")

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        value = value.strip()
        if not value or value == "#" or any(c.isspace() for c in value):
            raise ValueError('give a channel name like "#incidents" or an id like "C0123ABCD"')
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the message is empty")
        if len(value) > TEXT_LIMIT:
            raise ValueError(f"the message has {len(value)} characters; Slack takes at most {TEXT_LIMIT}")
        return value

    @field_validator("thread_ts", mode="before")
    @classmethod
    def _thread_ts(cls, value: Any) -> Any:
        if isinstance(value, float):  # YAML reads an unquoted ts as a number
            raise ValueError("quote the thread ts, e.g. \"1714560000.000100\": as a number it loses digits")
        value = whole_number_as_text(value)
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("thread_ts")
    @classmethod
    def _valid_ts(cls, value: str | None) -> str | None:
        if value is not None and not _TS.match(value):
            raise ValueError(f"{value!r} is not a Slack message ts (like 1714560000.000100)")
        return value


class SlackActions:
    def __init__(self, client: AsyncWebClient | None) -> None:
        self._client = client

    @action("slack.post", SlackPostParams)
    async def post(self, params: SlackPostParams, ctx: ActionContext) -> dict[str, Any]:
        """Post a message to a Slack channel, or as a reply in a thread."""
        if self._client is None:
            raise ActionRefused(NOT_CONFIGURED)
        where = params.channel + (f" (thread {params.thread_ts})" if params.thread_ts else "")
        try:
            response = await self._client.chat_postMessage(
                channel=params.channel,
                text=params.text,
                thread_ts=params.thread_ts,
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            raise slack_failure(exc, where) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise ActionFailed(f"slack.post: could not reach Slack to post to {where}: {reason}") from None
        except SlackClientError as exc:  # the request could not be built: no retry helps
            raise ActionFailed(f"slack.post: {exc}", retryable=False) from None
        log.info("slack message posted", channel=response["channel"], ts=response["ts"], thread=bool(params.thread_ts))
        return {"channel": response["channel"], "ts": response["ts"]}


def slack_failure(exc: SlackApiError, where: str) -> ActionFailed:
    """Slack answered with an error: retryable when waiting may help, else final with Slack's code."""
    status = exc.response.status_code
    data = exc.response.data
    error = str(data.get("error") or f"HTTP {status}") if isinstance(data, dict) else f"HTTP {status}"
    retryable = error in RETRYABLE_ERRORS or status == 429 or status >= 500
    message = f"slack.post: Slack refused the post to {where}: {error}"
    if status == 429:
        message += f" (Retry-After {exc.response.headers.get('Retry-After', '?')}s)"
    return ActionFailed(message, retryable=retryable, output={"error": error, "status": status})
