"""The CLI's client of /api/v1: with PLAYBOOK_BOT_API_URL and PLAYBOOK_BOT_API_TOKEN set, `run`,
`status`, `approve`, `reject` and `cancel` act as the token's principal through the front door.

Refusals come back as ApiClientError carrying the server's one-line reason. Redirects are not
followed, so the token is only ever sent to the configured URL.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from bot.engine.state import ConfirmResult, RunStatus, VoteResult
from bot.settings import ConfigError, Settings

M = TypeVar("M", bound=BaseModel)
TIMEOUT = httpx.Timeout(60.0, connect=10.0)  # a vote or cancel waits on the worker (up to 30 s)


class ApiClientError(RuntimeError):
    """The API refused or could not be reached; the message is the operator's one line."""


class ApiClient:
    def __init__(self, url: str, token: str) -> None:
        self.base = url.rstrip("/") + "/api/v1"
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT, follow_redirects=False
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient | None:
        """The client when PLAYBOOK_BOT_API_URL is set (then the token must be too); else None."""
        if not settings.api_url:
            return None
        if settings.api_token is None:
            raise ConfigError(
                "PLAYBOOK_BOT_API_URL is set but PLAYBOOK_BOT_API_TOKEN is not: `playbook-bot token issue NAME` "
                "on the front door's host makes one"
            )
        if not settings.api_url.startswith(("http://", "https://")):
            raise ConfigError(f"PLAYBOOK_BOT_API_URL {settings.api_url!r} is not an http:// or https:// URL")
        token = settings.api_token.get_secret_value()
        if not (token.isascii() and token.isprintable()) or " " in token:
            raise ConfigError(
                "PLAYBOOK_BOT_API_TOKEN is not a token (printable ASCII without spaces, as `token issue` prints)"
            )
        return cls(settings.api_url, token)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def start(self, playbook: str, params: dict[str, Any]) -> str:
        return str((await self._call("POST", "/runs", {"playbook": playbook, "params": params}))["run_id"])

    async def status(self, run_id: str) -> RunStatus:
        return _parsed(RunStatus, await self._call("GET", f"/runs/{_segment(run_id)}"))

    async def vote(self, run_id: str, step: str, verdict: str, reason: str) -> VoteResult:
        body = {"step": step, "vote": verdict, "reason": reason}
        return _parsed(VoteResult, await self._call("POST", f"/runs/{_segment(run_id)}/approvals", body))

    async def confirm(self, run_id: str, step: str, answer: str, reason: str) -> ConfirmResult:
        """The answer goes as `choice`; the workflow reads it against the step's choices or input alike."""
        body = {"step": step, "choice": answer, "reason": reason}
        return _parsed(ConfirmResult, await self._call("POST", f"/runs/{_segment(run_id)}/confirmations", body))

    async def cancel(self, run_id: str, reason: str) -> dict[str, Any]:
        return await self._call("POST", f"/runs/{_segment(run_id)}/cancel", {"reason": reason})

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = await self._http.request(method, self.base + path, json=body)
        except httpx.HTTPError as exc:
            raise ApiClientError(f"cannot reach the API at {self.base}: {type(exc).__name__}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success and data is not None:
            return data
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            raise ApiClientError(data["error"])
        raise ApiClientError(f"the API answered {response.status_code} {response.reason_phrase} for {method} {path}")


def _parsed(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise ApiClientError(f"the API answered with something that is not a {model.__name__}: {problem}") from None


def _segment(run_id: str) -> str:
    """A run id as one path segment: `/`, `?`, `#` or `..` in it cannot reach another endpoint."""
    if run_id in ("", ".", ".."):
        raise ApiClientError(f"{run_id!r} is not a run id")
    return quote(run_id, safe="")
