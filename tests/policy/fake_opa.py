"""A real HTTP server speaking OPA's REST data API, answering from decision fixtures.

It never evaluates Rego: what it answers comes from `answers`, a table written by hand
(tests/policy/oracle.py, looked up by the digest of the input received) or hand-written rules.
So the OPA backend is checked against an oracle that shares no code with the embedded engine.

Faithful to OPA (server/server.go, authorizer, identifier of OPA 0.68) where a client can tell:
- POST /v1/data/<path> with {"input": ...} answers {"result": ..., "decision_id": ...}; an
  undefined document has no `result` at all; decision ids come only with decision logging on.
- No `input` (or `"input": null`) evaluates without input and adds
  {"warning": {"code": "api_usage_warning", "message": "'input' key missing from the request"}}.
- A body that is not JSON: 400 {"code": "invalid_parameter", "message": "body contains malformed
  input document: ..."}; ?provenance=true adds a provenance object (bundles only when
  `revision` is set). Evaluation errors are 500 {"code": "internal_error", "message": "error(s)
  occurred while evaluating query", "errors": [...]}. GET /health answers {}.
- With `token` set, the server runs as docker-compose runs OPA (--authentication=token
  --authorization=basic with deploy/opa/system_authz.rego): the identity is the token of an
  `Authorization: Bearer <token>` header (OPA's regexp, case and all); what may pass is
  `authorized()` below, the intent of that policy written out by hand; anything else is
  401 {"code": "unauthorized", "message": "request rejected by administrative policy"}. As in OPA,
  the authorizer reads a data POST's body first, so a body that is not JSON is a 400 even
  without a token, and a body that is not an object is a request without input.

Fault switches (set the attributes, call reset() between tests): `delay` seconds before
answering, `fault` one of "500", "undefined", "malformed", "not_json".
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.policy.oracle import digest

MALFORMED_RESULT: Any = {"allow": "yes", "reasons": "all good"}
UNDEFINED: Any = object()  # an answer: the document has no value for this input
NO_INPUT: Any = None  # what a request without input is evaluated with (OPA: input undefined)
OPA_VERSION = "0.68.0"  # docker-compose.yml's image

# server/identifier/token.go: `^Bearer\s+(\S+)$` with Go's \s (ASCII whitespace) and a
# header of at most 8192 bytes.
_BEARER = re.compile(r"Bearer[\t\n\f\r ]+([^\t\n\f\r ]+)")

Answers = Callable[[str, Any], Any]  # (REST path after /v1/data/, input) -> document or UNDEFINED


class NoFixture(LookupError):
    """The fake was asked something its fixtures do not answer: a bug in the test, not OPA."""


class FixtureAnswers:
    """Answers looked up by (path, digest of the input); other paths are undefined documents."""

    def __init__(self, table: Mapping[tuple[str, str], Any]) -> None:
        self.table = dict(table)
        self.paths = {path for path, _ in self.table}

    def __call__(self, path: str, input: Any) -> Any:
        if path not in self.paths:
            return UNDEFINED
        key = (path, digest(input))
        if key not in self.table:
            raise NoFixture(f"no decision fixture for data.{path.replace('/', '.')} with input sha256 {key[1]}")
        return self.table[key]


def rules(**by_rule: Callable[[Any], Any]) -> Answers:
    """Hand-written matching rules: rules(decision=lambda input: {...}) answers
    playbook/authz/decision with the function's value for any input; other paths are undefined."""

    def answer(path: str, input: Any) -> Any:
        package, _, rule = path.rpartition("/")
        if package != "playbook/authz" or rule not in by_rule:
            return UNDEFINED
        return by_rule[rule](input)

    return answer


def identity(authorization: str | None) -> str | None:
    """The identity OPA's token authentication takes from an Authorization header."""
    if not authorization or len(authorization) > 8192:
        return None
    match = _BEARER.fullmatch(authorization)
    return match.group(1) if match else None


def authorized(method: str, path: list[str], identity: str | None, token: str) -> bool:
    """What deploy/opa/system_authz.rego means to allow (tests/policy/oracle.py, SYSTEM_AUTHZ): the
    container's health check without a token; the bot's token asking a rule of playbook.authz
    (POST /v1/data/playbook/authz/<rule>); nothing else, for anyone."""
    if method == "GET" and path == ["health"]:
        return True
    return (
        identity == token
        and token != ""
        and method == "POST"
        and len(path) == 5
        and path[:4] == ["v1", "data", "playbook", "authz"]
        and path[4] != ""
    )


class FakeOpa:
    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.token: str | None = None  # set: token authentication and the deployment's authorization
        self.revision: str | None = None  # set: provenance reports a bundle with this revision
        self.decision_logs = True  # OPA sends decision_id only with decision logging enabled
        self.requests: list[dict[str, Any]] = []
        self.unmatched: list[str] = []  # questions the fixtures did not answer (a test bug)
        self.reset()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def reset(self) -> None:
        self.delay = 0.0
        self.fault: str | None = None
        self.requests.clear()
        self.unmatched.clear()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this; without it Nagle meets delayed ACKs and every
        # answer takes ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        app = Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/data/{path:path}", self._data_api, methods=["POST"]),
                Route("/{path:path}", self._elsewhere, methods=methods),
            ]
        )
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                break
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("fake OPA did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- handlers -----------------------------------------------------------------------

    def _refused(self, request: Request) -> Response | None:
        """OPA's authorizer: None when the request may pass."""
        if self.token is None:
            return None
        # parsePath: the URL path after its leading slash, split on "/".
        path = request.url.path[1:].split("/")
        who = identity(request.headers.get("authorization"))
        if authorized(request.method, path, who, self.token):
            return None
        return JSONResponse(
            {"code": "unauthorized", "message": "request rejected by administrative policy"}, status_code=401
        )

    async def _health(self, request: Request) -> Response:
        return self._refused(request) or JSONResponse({})

    async def _elsewhere(self, request: Request) -> Response:
        """The rest of OPA's API is not faked; the authorizer still answers for it first."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        message = f"the fake OPA implements only POST /v1/data and GET /health, not {request.method} {request.url.path}"
        return JSONResponse({"code": "invalid_operation", "message": message}, status_code=501)

    async def _data_api(self, request: Request) -> Response:
        path = request.path_params["path"].strip("/")
        self.requests.append({"path": path, "authorization": request.headers.get("authorization")})
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            message = str(exc) if self.token is not None else f"body contains malformed input document: {exc}"
            return JSONResponse({"code": "invalid_parameter", "message": message}, status_code=400)
        refused = self._refused(request)
        if refused is not None:
            return refused
        if body is not None and not isinstance(body, dict):
            if self.token is None:  # the data handler decodes the body into {"input": ...}
                message = f"body contains malformed input document: expected an object, got {type(body).__name__}"
                return JSONResponse({"code": "invalid_parameter", "message": message}, status_code=400)
            body = None  # the authorizer parsed it already: a body without input
        input = body.get("input") if isinstance(body, dict) else None
        # The data handler reads {"input": null} as no input; the authorizer's parse keeps it as
        # a null input. Either way the fixtures see None; only the warning differs.
        warn = input is None and not (self.token is not None and isinstance(body, dict) and "input" in body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fault == "500":
            return _evaluation_error("fake failure")
        if self.fault == "not_json":
            return PlainTextResponse("<html>bad gateway</html>", status_code=200)

        answer: dict[str, Any] = {}
        if self.decision_logs:
            answer["decision_id"] = str(uuid.uuid4())
        if warn:
            answer["warning"] = {"code": "api_usage_warning", "message": "'input' key missing from the request"}
        if "provenance" in request.query_params and request.query_params["provenance"].lower() in ("", "true"):
            answer["provenance"] = {
                "version": OPA_VERSION,
                "build_commit": "fake",
                "build_timestamp": "",
                "build_hostname": "",
            }
            if self.revision is not None:
                answer["provenance"]["bundles"] = {"playbook": {"revision": self.revision}}
        if self.fault == "malformed":
            answer["result"] = MALFORMED_RESULT
        elif self.fault != "undefined":
            try:
                value = self.answers(path, input)
            except NoFixture as exc:
                self.unmatched.append(str(exc))
                return _evaluation_error(f"fake OPA: {exc}")
            if value is not UNDEFINED:
                answer["result"] = value
        self.requests[-1]["decision_id"] = answer.get("decision_id")
        return JSONResponse(answer)


def _evaluation_error(message: str) -> Response:
    body = {
        "code": "internal_error",
        "message": "error(s) occurred while evaluating query",
        "errors": [{"code": "eval_internal_error", "message": message}],
    }
    return JSONResponse(body, status_code=500)
