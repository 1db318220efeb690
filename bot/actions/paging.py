"""What the PagerDuty and Opsgenie actions share: the key a page is deduplicated by, and one JSON
call through the egress-guarded client with its status judged the way both services document.

Neither service has a maintained asyncio Python client that fits (pdpyras and the Opsgenie SDK
are synchronous, built on requests/urllib3, and open their own connections outside the egress
check), so these actions speak the documented HTTP APIs with httpx.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import structlog

from bot.actions.base import ActionContext, ActionFailed, EgressRefused, InvalidParams
from bot.actions.egress import guarded, shown_url
from bot.actions.http import retryable_status

log = structlog.get_logger("bot.actions.paging")

REQUEST_TIMEOUT = 10.0  # seconds per API call; the step's timeout bounds the whole action
EXCERPT = 300
UNDO_SUFFIX = ":undo"  # bot.engine.workflow.idempotency_key marks a compensation's key with it


def step_key(ctx: ActionContext) -> str:
    """The idempotency key of the step this call serves: a compensation gets its step's key, so an
    undo closes exactly what its step opened, even when that step timed out without an output."""
    key = ctx.idempotency_key
    if ctx.compensation and key.endswith(UNDO_SUFFIX):
        return key[: -len(UNDO_SUFFIX)]
    return key


def bounded_key(key: str, limit: int) -> str:
    """`key` when the service takes it whole, else a stable digest of it (same key, same digest)."""
    if len(key) <= limit:
        return key
    return "playbook-bot:" + hashlib.sha256(key.encode()).hexdigest()


def closing_key(action: str, field: str, given: str | None, ctx: ActionContext, limit: int) -> str:
    """The key a resolve or close acts on: the one given, or in a compensation its own step's
    (outside one there is no step to default to: the playbook must say which page it closes)."""
    if given is None and not ctx.compensation:
        raise InvalidParams(
            f"{action}: give {field} (e.g. {{{{ steps.<the step that opened it>.output.{field} }}}}); "
            f"only a compensation defaults to its step's {field}"
        )
    return given or bounded_key(step_key(ctx), limit)


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    if not flat:
        return "(empty body)"
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT] + "…"


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON object, or {} when it sent none (a 202 body is informative only)."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


class JsonApi:
    """One vendor API's calls; `who` names the actions in egress refusals and error messages."""

    def __init__(self, client: httpx.AsyncClient, who: str, service: str, timeout: float = REQUEST_TIMEOUT) -> None:
        self._client = guarded(client, who)
        self._service = service
        self._timeout = timeout

    async def call(self, name: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request; a network failure or timeout is retryable (the service may be back,
        and the dedup key / alias makes a repeat harmless)."""
        what = f"{method} {shown_url(url)}"
        try:
            response = await self._client.request(method, url, timeout=self._timeout, **kwargs)
        except EgressRefused as exc:
            raise exc.at(f"{name}: {what}") from None
        except httpx.HTTPError as exc:
            raise ActionFailed(f"{name}: {what} failed: {type(exc).__name__}: {exc}") from None
        # Host and status only: paths carry incident ids and aliases, headers carry keys.
        log.info(f"{self._service} request", method=method, host=response.url.host, status=response.status_code)
        return response

    def failure(self, name: str, method: str, url: str, response: httpx.Response, ctx: ActionContext) -> ActionFailed:
        """A refused call: 408, 429 and 5xx are retried (the service says so); other 4xx are the
        playbook's mistake (bad key, invalid event) and are not."""
        status = response.status_code
        # Masked before the cut: a secret the cut splits would no longer be recognised.
        hint = {401: " (the key or token is not valid)", 403: " (the key or token may not do this)"}.get(status, "")
        return ActionFailed(
            f"{name}: {method} {shown_url(url)} returned {status}{hint}: {excerpt(ctx.mask(response.text))}",
            retryable=retryable_status(status),
            output={"status": status},
        )
