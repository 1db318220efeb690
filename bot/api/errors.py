"""What the API answers when it refuses: `{"error", "rule"}` (and `problems` for bad input).

A caller's mistake is always a 4xx; only our side failing (Temporal, the tokens file) is a 503.
The status comes from the typed code a refusal carries (RunError.code), never from its text.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from bot.engine.runs import RunError

REALM = 'Bearer realm="playbook-bot"'
STATUS_OF_CODE = {"refused": 403, "not_found": 404, "conflict": 409, "invalid": 422, "unavailable": 503}


class ApiError(Exception):
    """An answer other than success: its HTTP status, the one-line reason, and the rule that said so."""

    def __init__(
        self, status: int, message: str, rule: str, *, problems: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.rule = rule
        self.problems = problems
        self.headers = headers

    @classmethod
    def of(cls, exc: RunError) -> ApiError:
        return cls(STATUS_OF_CODE.get(exc.code, 403), str(exc), exc.rule or exc.code)

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message, "rule": self.rule}
        if self.problems:
            body["problems"] = self.problems
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def unauthenticated(message: str, invalid: bool) -> ApiError:
    """401 with the challenge RFC 6750 asks for: `invalid_token` when a token was sent but is not one."""
    challenge = REALM + (', error="invalid_token"' if invalid else "")
    return ApiError(401, message, "token", headers={"WWW-Authenticate": challenge})
