"""deploy/opa/system_authz.rego, OPA's own API authorization in docker-compose, evaluated the way
OPA evaluates it: data.system.authz.allow for the input OPA's authorizer builds from each request
(method, path segments, query params, headers, identity = the bearer token, body of a data POST),
with OPA_API_TOKEN in the evaluating process's environment, where opa.runtime() reads it.

It runs in the embedded engine's child process (rego-cpp through regopy, as `dev` evaluates
policies), not through `playbook-bot policy test`: the policy reads the token from the
environment, which a *_test.rego could only replace with `with opa.runtime as`, and rego-cpp
does not mock functions. The expectations are the table in tests/policy/oracle.py
(SYSTEM_AUTHZ), written from what the file means; the fake OPA is held to the same table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from bot.policy.rego_process import run_once
from tests.policy.oracle import BEARER, OPA_API_TOKEN, SYSTEM_AUTHZ, ApiRequest

SYSTEM_AUTHZ_REGO = Path(__file__).resolve().parents[2] / "deploy" / "opa" / "system_authz.rego"
ENTRYPOINT = "system/authz/allow"
_BEARER = re.compile(r"Bearer[\t\n\f\r ]+([^\t\n\f\r ]+)")


def opa_input(request: ApiRequest) -> dict[str, Any]:
    """The input OPA's basic authorizer builds (server/authorizer/authorizer.go, makeInput)."""
    url = urlsplit(request.target)
    path = [unquote(part) for part in url.path[1:].split("/")]
    headers = {"Content-Type": ["application/json"], "User-Agent": ["python-httpx"]}
    doc: dict[str, Any] = {
        "path": path,
        "method": request.method.upper(),
        "params": parse_qs(url.query, keep_blank_values=True),
        "headers": headers,
    }
    if request.authorization is not None:
        headers["Authorization"] = [request.authorization]
        match = _BEARER.fullmatch(request.authorization)
        if match:
            doc["identity"] = match.group(1)
    data_api = len(path) >= 2 and path[0] in ("v0", "v1") and path[1] == "data"
    expects_body = request.method == "POST" and (path == [""] or data_api)
    if expects_body and request.body is not None:
        doc["body"] = request.body
    return doc


def evaluate(inputs: list[dict[str, Any]], token: str | None, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """allow for each input, from a fresh child whose environment holds `token` as OPA's does."""
    monkeypatch.delenv("OPA_API_TOKEN", raising=False)  # (the child gets only what it is given)
    load = {
        "op": "load",
        "modules": {str(SYSTEM_AUTHZ_REGO): SYSTEM_AUTHZ_REGO.read_text()},
        "data": {},
        "entrypoints": [ENTRYPOINT],
    }
    answers = run_once([load, *({"op": "eval", "entrypoint": ENTRYPOINT, "input": doc} for doc in inputs)],
                       env=None if token is None else {"OPA_API_TOKEN": token})
    loaded, *results = answers
    assert loaded["ok"], loaded
    values = []
    for result in results:
        assert result["ok"] and result["defined"], result  # `default allow := false`: never undefined
        values.append(result["value"])
    return values


def test_the_policy_allows_what_the_table_says(monkeypatch: pytest.MonkeyPatch) -> None:
    allowed = evaluate([opa_input(request) for request in SYSTEM_AUTHZ], OPA_API_TOKEN, monkeypatch)

    wrong = [
        f"{request.name}: {request.method} {request.target} -> {value}, expected {request.allowed}"
        for request, value in zip(SYSTEM_AUTHZ, allowed, strict=True)
        if value is not request.allowed
    ]
    assert wrong == []


def test_without_a_token_in_its_environment_opa_only_answers_health(monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [r for r in SYSTEM_AUTHZ if r.allowed]

    allowed = evaluate([opa_input(request) for request in requests], None, monkeypatch)

    assert {r.target: value for r, value in zip(requests, allowed, strict=True)} == {
        r.target: r.target.startswith("/health") for r in requests
    }


def test_an_empty_token_in_its_environment_matches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPA never sets an empty identity, but an input can carry one; it must not match an empty token."""
    doc = opa_input(ApiRequest("empty", "POST", "/v1/data/playbook/authz/decision", BEARER, True))
    doc["identity"] = ""

    assert evaluate([doc], "", monkeypatch) == [False]


def test_the_token_in_a_header_alone_is_not_an_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only OPA's own authentication sets input.identity; a policy that read the raw header instead
    would accept what OPA's token check rejected."""
    doc = opa_input(ApiRequest("raw", "POST", "/v1/data/playbook/authz/decision", f"bearer {OPA_API_TOKEN}", False))

    assert "identity" not in doc
    assert evaluate([doc], OPA_API_TOKEN, monkeypatch) == [False]
