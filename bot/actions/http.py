"""`http.request`: call an HTTP API, with the step's idempotency key, and judge the status."""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import time
from typing import Any, Callable, Literal

import httpx
import structlog
from pydantic import Field, field_validator, model_validator

from bot.actions.base import (
    ActionContext,
    ActionFailed,
    ActionParams,
    EgressRefused,
    action,
    http_url,
    positive,
    whole_number_as_text,
)
from bot.actions.egress import guarded, shown_url
from bot.actions.secrets import MASK_MARGIN, cut_masked
from bot.playbook.data import json_depth
from bot.playbook.durations import Duration, format_duration

log = structlog.get_logger("bot.actions.http")

BODY_LIMIT = 64 * 1024  # bytes of response body kept in the output (it lands in workflow history)
# A body nested deeper keeps only its text: the target chooses it, and a `json` the workflow cannot
# decode (pydantic stops at 200 levels) would leave the run unable to take the step's result.
JSON_MAX_DEPTH = 32
EXCERPT = 300  # characters of body quoted in an error message
OUTPUT_HEADERS = ("content-type", "location", "retry-after", "etag")
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRYABLE_STATUS = frozenset({408, 429})

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 header field name

Scalar = str | int | float | bool


class HttpRequestParams(ActionParams):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str = Field(description="http:// or https:// URL.")
    headers: dict[str, str] = Field(default_factory=dict, description="Values may hold secrets; never logged.")
    query: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    json_: Any = Field(None, alias="json", description="JSON request body (not with `body`).")
    body: str | None = Field(None, description="Raw request body (not with `json`).")
    expected_status: int | list[int] | None = Field(None, description="Accepted status(es); default: any 2xx.")
    timeout: Duration = Field("30s", validate_default=True, description="Whole request, from connect to last byte.")
    follow_redirects: bool = False

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    _url = field_validator("url")(http_url)

    @field_validator("headers", mode="before")
    @classmethod
    def _header_values(cls, value: Any) -> Any:
        return {k: whole_number_as_text(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN.match(name):
                raise ValueError(f"bad header name {name!r}")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: value must not contain CR, LF or NUL")
            if name.lower() == IDEMPOTENCY_HEADER.lower():
                raise ValueError(f"{IDEMPOTENCY_HEADER} is set by the bot from the run and step ids; remove it")
        return value

    @field_validator("expected_status")
    @classmethod
    def _valid_status(cls, value: int | list[int] | None) -> int | list[int] | None:
        codes = [value] if isinstance(value, int) else value or []
        if isinstance(value, list) and not value:
            raise ValueError("give at least one status code, or leave it out for any 2xx")
        for code in codes:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code")
        return value

    _positive = field_validator("timeout")(positive("timeout"))

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestParams:
        if "json_" in self.model_fields_set and self.body is not None:
            raise ValueError("give either `json` or `body`, not both")
        return self

    def accepts(self, status: int) -> bool:
        if self.expected_status is None:
            return 200 <= status < 300
        if isinstance(self.expected_status, int):
            return status == self.expected_status
        return status in self.expected_status

    def expected_text(self) -> str:
        if self.expected_status is None:
            return "2xx"
        if isinstance(self.expected_status, int):
            return str(self.expected_status)
        return " or ".join(str(code) for code in self.expected_status)


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


class HttpActions:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = guarded(client, "http.request")

    @action("http.request", HttpRequestParams)
    async def request(self, params: HttpRequestParams, ctx: ActionContext) -> dict[str, Any]:
        """Send an HTTP request; a status other than the expected one fails the step."""
        seconds = params.timeout.total_seconds()
        headers = {**params.headers, IDEMPOTENCY_HEADER: ctx.idempotency_key}
        body: dict[str, Any] = {"content": params.body} if params.body is not None else {}
        if "json_" in params.model_fields_set:
            body = {"json": params.json_}
        what = f"{params.method} {params.url}"
        started = time.monotonic()
        try:
            async with asyncio.timeout(seconds):
                async with self._client.stream(
                    params.method,
                    # `query` adds to the URL's own query string (httpx's params= would drop it)
                    httpx.URL(params.url).copy_merge_params(params.query) if params.query else params.url,
                    headers=headers,
                    timeout=httpx.Timeout(seconds),
                    follow_redirects=params.follow_redirects,
                    **body,
                ) as response:
                    raw, over = await _read_limited(response, BODY_LIMIT + MASK_MARGIN)
        except EgressRefused as exc:  # the URL or a redirect hop goes where playbooks may not
            raise exc.at(f"http.request: {params.method} {shown_url(params.url)}") from None
        except TimeoutError:
            raise ActionFailed(f"http.request: {what} timed out after {format_duration(params.timeout)}") from None
        except httpx.TimeoutException as exc:
            raise ActionFailed(f"http.request: {what} timed out ({type(exc).__name__})") from None
        except httpx.TooManyRedirects:
            raise ActionFailed(f"http.request: {what}: too many redirects", retryable=False) from None
        except httpx.HTTPError as exc:  # connection refused, reset, DNS, protocol errors: worth a retry
            raise ActionFailed(f"http.request: {what} failed: {type(exc).__name__}: {exc}") from None

        output = _output(response, raw, over, ctx.mask)
        # Host and status only: URLs (webhook paths, query tokens) and header values may hold secrets.
        log.info(
            "http request",
            method=params.method,
            host=response.url.host,
            status=response.status_code,
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )
        if not params.accepts(response.status_code):
            status = response.status_code
            raise ActionFailed(
                # Masked before the cut: a secret the cut splits would no longer be recognised.
                f"http.request: {what} returned {status}, expected {params.expected_text()}: "
                f"{_excerpt(ctx.mask(output['body']))}",
                retryable=retryable_status(status),
                output=output,
            )
        return output


async def _read_limited(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Read at most `limit` bytes (decompressed); a huge body is cut, never held in memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def _decode(raw: bytes, charset: str | None, truncated: bool) -> str:
    try:
        decoder = codecs.getincrementaldecoder(charset or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # A cut body may end inside a character: leave that partial character out.
    return decoder.decode(raw, final=not truncated)


def _output(response: httpx.Response, raw: bytes, over: bool, mask: Callable[[Any], Any]) -> dict[str, Any]:
    """`raw`: the body's first BODY_LIMIT + MASK_MARGIN bytes (`over`: it had more). A longer body
    keeps its first BODY_LIMIT bytes, masked before the cut (secrets.cut_masked)."""
    text = _decode(raw, response.charset_encoding, over)
    truncated = over or len(raw) > BODY_LIMIT
    if truncated:
        text = cut_masked(text, BODY_LIMIT, "head", mask)
    output: dict[str, Any] = {
        "status": response.status_code,
        "url": str(response.url),
        "headers": {name: response.headers[name] for name in OUTPUT_HEADERS if name in response.headers},
        "body": text,
        "truncated": truncated,
    }
    if text and not truncated and json_depth(text) <= JSON_MAX_DEPTH:  # (deeper: the body is still there, as text)
        try:
            output["json"] = json.loads(text)
        except ValueError:
            pass
    return output


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    if not flat:
        return "(empty body)"
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT] + "…"
