"""`prometheus.query`: run an instant PromQL query until its result meets a condition.

The step's timeout bounds the wait (the wrapper heartbeats, so a cancel is heard at once). A
query Prometheus rejects fails at once and for good; an unreachable or overloaded Prometheus is
polled again, since verification steps often run while things are still recovering.
"""

from __future__ import annotations

import asyncio
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import structlog
from pydantic import Field, field_validator

from bot.actions.base import (
    ActionContext,
    ActionFailed,
    ActionParams,
    ActionRefused,
    EgressRefused,
    action,
    http_url,
    positive,
)
from bot.actions.egress import guarded, shown_url
from bot.playbook.durations import Duration

log = structlog.get_logger("bot.actions.prometheus")

REQUEST_TIMEOUT = 30.0  # seconds per query; the step's timeout bounds the polling
SAMPLE_LIMIT = 10  # samples kept in the output (it lands in workflow history)
EXCERPT = 300

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    ">": operator.gt,
}
_COMPARISON = re.compile(r"^(<=|>=|==|!=|<|>)\s*(\S+)$")
EXPECT_FORMS = "'< 1', '<= 0.5', '== 0', '!= 0', '>= 2', '> 3', 'empty' or 'not empty'"


@dataclass(frozen=True)
class Expectation:
    """`empty` / `not empty` judge the result set; a comparison must hold for every sample (and there must be one)."""

    op: str  # one of _OPS, or "empty" / "not empty"
    threshold: float = math.nan

    def holds(self, values: list[float | str]) -> bool:
        if self.op == "empty":
            return not values
        if self.op == "not empty":
            return bool(values)
        compare = _OPS[self.op]
        return bool(values) and all(compare(float(v), self.threshold) for v in values)  # "NaN", "+Inf" parse

    @property
    def compares(self) -> bool:
        return self.op in _OPS

    def __str__(self) -> str:
        return self.op if self.op in ("empty", "not empty") else f"{self.op} {self.threshold:g}"


def parse_expect(text: str) -> Expectation:
    words = " ".join(text.split()).lower()
    if words in ("empty", "not empty"):
        return Expectation(words)
    match = _COMPARISON.match(words)
    if match:
        try:
            return Expectation(match.group(1), float(match.group(2)))
        except ValueError:
            pass
    raise ValueError(f"bad expectation {text!r}: use {EXPECT_FORMS}")


class QueryParams(ActionParams):
    query: str = Field(min_length=1, description="PromQL, evaluated as an instant query.")
    expect: str | None = Field(
        None, description=f"Condition to wait for: {EXPECT_FORMS}. A comparison must hold for every sample. "
        "Left out: query once and return the result."
    )
    url: str | None = Field(None, description="Prometheus base URL; default PLAYBOOK_BOT_PROMETHEUS_URL.")
    interval: Duration = Field("5s", validate_default=True, description="Wait between polls.")

    @field_validator("expect")
    @classmethod
    def _valid_expect(cls, value: str | None) -> str | None:
        if value is not None:
            parse_expect(value)
        return value

    _positive = field_validator("interval")(positive("interval"))

    _url = field_validator("url")(http_url)


class _Unavailable(Exception):
    """Prometheus could not answer this time: poll again."""


def _number(text: Any) -> float | str:
    """Sample values come as strings; NaN and ±Inf stay strings so the output is plain JSON."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text)
    return value if math.isfinite(value) else str(text)


def _samples(result_type: str, result: Any) -> list[dict[str, Any]]:
    if result_type == "vector":
        return [{"metric": s.get("metric", {}), "value": _number(s["value"][1])} for s in result]
    if result_type == "matrix":  # a range selector at the top: judge each series by its latest point
        return [{"metric": s.get("metric", {}), "value": _number(s["values"][-1][1])} for s in result if s["values"]]
    if result_type == "scalar":
        return [{"metric": {}, "value": _number(result[1])}]
    return [{"metric": {}, "value": str(result[1])}]  # string


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    if not flat:
        return "(empty body)"
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT] + "…"


class PrometheusActions:
    def __init__(self, client: httpx.AsyncClient, default_url: str | None = None) -> None:
        self._client = guarded(client, "prometheus.query")
        self._default_url = default_url

    @action("prometheus.query", QueryParams)
    async def query(self, params: QueryParams, ctx: ActionContext) -> dict[str, Any]:
        """Query Prometheus until the result meets `expect` (polls; the step timeout ends the wait)."""
        base = params.url or self._default_url
        if not base:
            raise ActionRefused("prometheus.query: no Prometheus URL: give `url` or set PLAYBOOK_BOT_PROMETHEUS_URL")
        endpoint = base.rstrip("/") + "/api/v1/query"
        expect = parse_expect(params.expect) if params.expect is not None else None
        polls = 0
        while True:
            polls += 1
            try:
                result_type, samples = await self._query(endpoint, params.query)
            except _Unavailable as exc:
                log.warning("prometheus unavailable; polling again", error=ctx.mask(str(exc)), poll=polls)
            else:
                if result_type == "string" and expect is not None and expect.compares:
                    raise ActionFailed(
                        f"prometheus.query: the query returns a string; cannot compare it {expect}", retryable=False
                    )
                values = [s["value"] for s in samples]
                if expect is None or expect.holds(values):
                    return {
                        "value": values[0] if values else None,
                        "result_type": result_type,
                        "samples": samples[:SAMPLE_LIMIT],
                        "sample_count": len(samples),
                        "polls": polls,
                    }
                log.info("condition not met yet", expect=str(expect), values=values[:SAMPLE_LIMIT], poll=polls)
            await asyncio.sleep(params.interval.total_seconds())

    async def _query(self, endpoint: str, query: str) -> tuple[str, list[dict[str, Any]]]:
        try:
            response = await self._client.get(endpoint, params={"query": query}, timeout=REQUEST_TIMEOUT)
        except EgressRefused as exc:  # never polled again: the answer would not change
            raise exc.at(f"prometheus.query: GET {shown_url(endpoint)}") from None
        except httpx.HTTPError as exc:
            raise _Unavailable(f"{type(exc).__name__}: {exc}") from None
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            if status >= 500 or status in (408, 429):
                raise _Unavailable(f"HTTP {status}: {_excerpt(response.text)}")
            raise ActionFailed(
                f"prometheus.query: {shown_url(endpoint)} returned {status}, not the Prometheus API: "
                f"{_excerpt(response.text)}",
                retryable=False,
            )
        if body["status"] != "success":
            # Cut as every quoted body is: the target's text becomes the step's error (red team, stop 53)
            error = _excerpt(f"{body.get('errorType', 'error')}: {body.get('error', '(no message)')}")
            if status >= 500 or body.get("errorType") in ("timeout", "canceled", "unavailable"):
                raise _Unavailable(f"HTTP {status}: {error}")
            raise ActionFailed(f"prometheus.query: query rejected: {error}", retryable=False)
        for warning in body.get("warnings") or []:
            log.warning("prometheus warning", warning=_excerpt(str(warning)))
        data = body["data"]
        return data["resultType"], _samples(data["resultType"], data["result"])
