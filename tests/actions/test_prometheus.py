"""prometheus.query against a fake Prometheus HTTP API whose answers change from call to call."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, AsyncIterator, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from structlog.testing import capture_logs

from bot.actions.base import ACTION_FAILED, ACTION_REFUSED, INVALID_PARAMS
from bot.actions.egress import EgressClient
from bot.actions.prometheus import PrometheusActions, parse_expect
from tests.http_server import serving

Answer = tuple[int, Any]  # (HTTP status, JSON body or raw text)


def vector(*values: str, metric: dict[str, str] | None = None) -> Answer:
    now = time.time()
    result = [{"metric": {**(metric or {}), "i": str(i)}, "value": [now, v]} for i, v in enumerate(values)]
    return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}


def scalar(value: str) -> Answer:
    return 200, {"status": "success", "data": {"resultType": "scalar", "result": [time.time(), value]}}


def error(status: int, error_type: str, message: str) -> Answer:
    return status, {"status": "error", "errorType": error_type, "error": message}


@dataclass
class FakePrometheus:
    """Answers /api/v1/query from a script per query: each call takes the next answer, the last repeats."""

    base_url: str = ""
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    calls: list[dict[str, list[str]]] = field(default_factory=list)

    def script(self, query: str, *answers: Answer) -> None:
        self.scripts[query] = list(answers)

    def calls_for(self, query: str) -> int:
        return sum(1 for c in self.calls if c.get("query") == [query])

    def answer(self, query: str) -> Answer:
        answers = self.scripts.get(query)
        if not answers:  # what Prometheus says to a query it cannot parse
            return error(400, "bad_data", f'invalid parameter "query": 1:1: parse error: unexpected {query!r}')
        return answers.pop(0) if len(answers) > 1 else answers[0]


def _handler(prom: FakePrometheus) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/api/v1/query":
                self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
                return
            query = parse_qs(parts.query)
            prom.calls.append(query)
            status, body = prom.answer(query.get("query", [""])[0])
            if isinstance(body, str):
                self._send(status, body.encode(), "text/plain; charset=utf-8")
            else:
                self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="module")
def _prom_server() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    with serving(_handler(fake)) as fake.base_url:
        yield fake


@pytest.fixture
def prom(_prom_server: FakePrometheus) -> FakePrometheus:
    _prom_server.scripts.clear()
    _prom_server.calls.clear()
    return _prom_server


@pytest.fixture
async def providers(prom: FakePrometheus) -> AsyncIterator[list[object]]:
    async with EgressClient() as client:
        yield [PrometheusActions(client, default_url=prom.base_url)]


QUERY = 'sum(rate(http_errors_total{service="api"}[1m]))'


async def test_polls_until_the_condition_holds(prom, providers, run_action) -> None:
    prom.script(QUERY, vector("3.5"), vector("1"), vector("0.5"))
    result = await run_action("prometheus.query", {"query": QUERY, "expect": "< 1", "interval": "10ms"}, providers)

    out = result.output
    assert (out["value"], out["result_type"], out["polls"], out["sample_count"]) == (0.5, "vector", 3, 1)
    assert out["samples"] == [{"metric": {"i": "0"}, "value": 0.5}]
    assert prom.calls[0] == {"query": [QUERY]}  # sent as Prometheus reads it, braces and quotes intact
    assert prom.calls_for(QUERY) == 3


async def test_promql_error_fails_at_once_with_prometheus_message(prom, providers, run_failing) -> None:
    err = await run_failing("prometheus.query", {"query": "sum(", "expect": "< 1", "interval": "10ms"}, providers)
    assert (err.type, err.non_retryable) == (ACTION_FAILED, True)
    assert "bad_data" in err.message and "parse error" in err.message
    assert prom.calls_for("sum(") == 1


async def test_execution_error_422_is_final(prom, providers, run_failing) -> None:
    prom.script("a / b", error(422, "execution", "found duplicate series for the match group"))
    err = await run_failing("prometheus.query", {"query": "a / b", "expect": "< 1"}, providers)
    assert err.non_retryable and "found duplicate series" in err.message


async def test_a_long_prometheus_error_is_cut_as_any_quoted_answer(prom, providers, run_failing) -> None:
    """Red team (stop 53): the `error` field was quoted whole: whatever answers at the URL chose the
    step's error, which rides in the run's history and the next activity's input (1.4 MB here)."""
    prom.script("up", error(400, "bad_data", "\x01" * 400_000 + "x" * 1_000_000))
    err = await run_failing("prometheus.query", {"query": "up"}, providers)
    assert err.non_retryable and err.message.startswith("prometheus.query: query rejected: bad_data: ")
    assert len(err.message) < 600


@pytest.mark.parametrize(
    ("answers", "expect", "polls", "value"),
    [
        ([vector()], "empty", 1, None),
        ([vector("1"), vector()], "empty", 2, None),
        ([vector(), vector(), vector("2")], "not empty", 3, 2.0),
        ([vector(), vector("0")], "== 0", 2, 0.0),  # no sample is not "== 0": wait for one
        ([scalar("3.5"), scalar("4")], "> 3.5", 2, 4.0),
        ([scalar("0")], "<= 0", 1, 0.0),
        ([vector("NaN"), vector("1")], ">= 1", 2, 1.0),
        ([vector("NaN")], "!= 0", 1, "NaN"),
    ],
)
async def test_conditions(prom, providers, run_action, answers, expect, polls, value) -> None:
    prom.script("q", *answers)
    result = await run_action("prometheus.query", {"query": "q", "expect": expect, "interval": "10ms"}, providers)
    assert (result.output["polls"], result.output["value"]) == (polls, value)


async def test_comparison_holds_for_every_sample(prom, providers, run_action) -> None:
    prom.script("by_pod", vector("0", "5"), vector("0", "0.2"))
    result = await run_action("prometheus.query", {"query": "by_pod", "expect": "< 1", "interval": "10ms"}, providers)
    assert result.output["polls"] == 2
    assert [s["value"] for s in result.output["samples"]] == [0.0, 0.2]


async def test_without_expect_queries_once(prom, providers, run_action) -> None:
    prom.script("up", vector("1", "0"))
    result = await run_action("prometheus.query", {"query": "up"}, providers)
    assert (result.output["value"], result.output["sample_count"], result.output["polls"]) == (1.0, 2, 1)


async def test_unavailable_prometheus_is_polled_again(prom, providers, run_action) -> None:
    prom.script(
        "q",
        (503, "Service Unavailable"),
        error(503, "timeout", "query timed out in expression evaluation"),
        vector("0"),
    )
    with capture_logs() as logs:
        result = await run_action("prometheus.query", {"query": "q", "expect": "== 0", "interval": "10ms"}, providers)
    assert result.output["polls"] == 3
    warnings = [e for e in logs if e["event"] == "prometheus unavailable; polling again"]
    assert len(warnings) == 2 and "query timed out" in warnings[1]["error"]


async def test_unreachable_prometheus_polls_until_the_step_times_out(run_action) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with EgressClient() as client:
        params = {"query": "up", "expect": "not empty", "interval": "10ms", "url": f"http://127.0.0.1:{port}"}
        with capture_logs() as logs, pytest.raises(TimeoutError):
            await asyncio.wait_for(run_action("prometheus.query", params, [PrometheusActions(client)]), 0.5)
    errors = [e for e in logs if e["event"] == "prometheus unavailable; polling again"]
    assert len(errors) >= 3 and "ConnectError" in errors[0]["error"]


async def test_a_url_that_is_not_prometheus_fails(prom, providers, run_failing) -> None:
    err = await run_failing("prometheus.query", {"query": "up", "url": prom.base_url + "/prom"}, providers)
    assert (err.type, err.non_retryable) == (ACTION_FAILED, True)
    assert "returned 404, not the Prometheus API: 404 page not found" in err.message


async def test_credentials_in_the_prometheus_url_stay_out_of_the_steps_error(prom, run_failing) -> None:
    """Red team: with PLAYBOOK_BOT_PROMETHEUS_URL=http://user:pw@host (httpx sends it as Basic auth), a
    proxy's 404 put user:pw in the step's error: history, the audit trail, the Slack thread."""
    base = prom.base_url.replace("http://", "http://reader:s3cret-pw@")
    async with EgressClient() as client:
        err = await run_failing("prometheus.query", {"query": "up", "url": base + "/prom"},
                                [PrometheusActions(client, default_url=base)])
    assert "returned 404, not the Prometheus API" in err.message
    assert "s3cret-pw" not in err.message and "reader" not in err.message


async def test_string_result_cannot_be_compared(prom, providers, run_failing) -> None:
    prom.script('"x"', (200, {"status": "success", "data": {"resultType": "string", "result": [1.0, "x"]}}))
    err = await run_failing("prometheus.query", {"query": '"x"', "expect": "> 1"}, providers)
    assert err.non_retryable and "returns a string" in err.message


async def test_no_url_anywhere_is_refused(run_failing) -> None:
    async with EgressClient() as client:
        err = await run_failing("prometheus.query", {"query": "up", "expect": "> 0"}, [PrometheusActions(client)])
    assert (err.type, err.non_retryable) == (ACTION_REFUSED, True)
    assert "PLAYBOOK_BOT_PROMETHEUS_URL" in err.message


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"query": "up", "expect": "< one"}, "bad expectation '< one'"),
        ({"query": "up", "expect": "=< 1"}, "bad expectation"),
        ({"query": "up", "expect": "present"}, "'empty' or 'not empty'"),
        ({"query": "", "expect": "empty"}, "query"),
        ({"query": "up", "interval": "0s"}, "interval must be positive"),
        ({"query": "up", "url": "prometheus:9090"}, "http://"),
        ({"query": "up", "timeout": "1m"}, "timeout"),
    ],
)
async def test_bad_params(providers, run_failing, params, problem) -> None:
    err = await run_failing("prometheus.query", params, providers)
    assert (err.type, err.non_retryable) == (INVALID_PARAMS, True)
    assert problem in err.message


def test_expectations_read_like_people_write_them() -> None:
    assert str(parse_expect("<1")) == "< 1"
    assert str(parse_expect("  NOT   Empty ")) == "not empty"
    assert parse_expect(">= 1e3").threshold == 1000.0
    assert parse_expect("< 0.5").holds([0.25]) and not parse_expect("< 0.5").holds([])
    assert parse_expect("!= 0").holds(["NaN"]) and not parse_expect("== 0").holds(["NaN"])
