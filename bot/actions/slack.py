"""`slack.post`: a playbook step that tells people something, in a channel or a run's thread.

A post is not idempotent (Slack has no idempotency key for it), so a retry is made only when
Slack certainly did not act: a rate limit (HTTP 429, `ratelimited`) or a connection refused
before the request was sent. A timeout, a connection dropped after the request went out, or a
5xx / `internal_error` may have posted: the step fails for good and says the message may or may
not be in the channel. A missing channel or a bad token fails at once, naming Slack's code.
"""

from __future__ import annotations

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
NOT_POSTED_ERRORS = frozenset({"ratelimited", "rate_limited"})  # refused before acting: a retry is safe
MAYBE_POSTED_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
MAYBE_POSTED = "the message may or may not have been posted, so it is not retried; check the channel"
NOT_CONFIGURED = (
    "slack.post: Slack is not configured: set PLAYBOOK_BOT_SLACK_BOT_TOKEN (the app's xoxb- bot token) "
    "for the worker"
)

_TS = re.compile(r"^\d+\.\d+\Z")


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
        except aiohttp.ClientConnectorError as exc:  # no connection, so no request: safe to retry
            reason = f"{type(exc).__name__}: {exc}"
            raise ActionFailed(f"slack.post: could not reach Slack to post to {where}: {reason}") from None
        except SlackClientError as exc:  # the request could not be built: no retry helps
            raise ActionFailed(f"slack.post: {exc}", retryable=False) from None
        except Exception as exc:  # noqa: BLE001  a timeout, a dropped connection: the request may have gone out
            reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
            raise ActionFailed(
                f"slack.post: no answer from Slack for the post to {where} ({reason}); {MAYBE_POSTED}",
                retryable=False,
                output={"error": reason, "maybe_posted": True},
            ) from None
        log.info("slack message posted", channel=response["channel"], ts=response["ts"], thread=bool(params.thread_ts))
        return {"channel": response["channel"], "ts": response["ts"]}


def slack_failure(exc: SlackApiError, where: str) -> ActionFailed:
    """Slack answered with an error: retryable only when it refused before acting (a rate limit);
    a 5xx or an internal error may have posted, so it is final and says so; else Slack's code."""
    status = exc.response.status_code
    data = exc.response.data
    error = str(data.get("error") or f"HTTP {status}") if isinstance(data, dict) else f"HTTP {status}"
    if status == 429 or error in NOT_POSTED_ERRORS:
        message = f"slack.post: Slack refused the post to {where}: {error}"
        if status == 429:
            message += f" (Retry-After {exc.response.headers.get('Retry-After', '?')}s)"
        return ActionFailed(message, retryable=True, output={"error": error, "status": status})
    if status >= 500 or error in MAYBE_POSTED_ERRORS:
        message = f"slack.post: Slack failed on the post to {where}: {error} (HTTP {status}); {MAYBE_POSTED}"
        return ActionFailed(message, retryable=False, output={"error": error, "status": status, "maybe_posted": True})
    message = f"slack.post: Slack refused the post to {where}: {error}"
    return ActionFailed(message, retryable=False, output={"error": error, "status": status})
