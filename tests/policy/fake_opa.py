"""A real HTTP server speaking OPA's REST data API, evaluating policies with regopy.

Faithful where the client can tell: POST /v1/data/<path> with {"input": ...} answers
{"result": ..., "decision_id": ...}, {} (plus decision_id) when the document is undefined, 400
{"code": "invalid_parameter", ...} for a body that is not JSON, 401 without the expected bearer
token, 500 {"code": "internal_error", ...} for evaluation errors, and ?provenance=true adds a
provenance object. GET /health answers {}.

Fault switches (set the attributes, call reset() between tests): `delay` seconds before
answering, `fault` one of "500", "undefined", "malformed", "not_json".
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.policy.embedded_child import LoadFailure, compile_bundle, evaluate
from bot.policy.sources import read_sources

MALFORMED_RESULT: Any = {"allow": "yes", "reasons": "all good"}


class FakeOpa:
    def __init__(self, policies_dir: Path) -> None:
        self.policies_dir = policies_dir
        self.token: str | None = None
        self.revision: str | None = None  # set: provenance reports a bundle with this revision
        self.decision_logs = True  # OPA sends decision_id only with decision logging enabled
        self.requests: list[dict[str, Any]] = []
        self.reset()
        sources = read_sources(policies_dir)
        self._modules, self._data = sources.modules, sources.data
        self._bundles: dict[str, Any] = {}
        self._eval_lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def reset(self) -> None:
        self.delay = 0.0
        self.fault: str | None = None
        self.requests.clear()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this; without it Nagle meets delayed ACKs and every
        # answer takes ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/data/{path:path}", self._data_api, methods=["POST"]),
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

    async def _health(self, request: Request) -> Response:
        return JSONResponse({})

    async def _data_api(self, request: Request) -> Response:
        path = request.path_params["path"].strip("/")
        self.requests.append({"path": path, "authorization": request.headers.get("authorization")})
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"code": "unauthorized", "message": "authentication required"}, status_code=401)
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected an object")
        except ValueError as exc:
            message = f"body contains malformed input document: {exc}"
            return JSONResponse({"code": "invalid_parameter", "message": message}, status_code=400)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fault == "500":
            return JSONResponse({"code": "internal_error", "message": "fake failure"}, status_code=500)
        if self.fault == "not_json":
            return PlainTextResponse("<html>bad gateway</html>", status_code=200)

        answer: dict[str, Any] = {}
        if self.fault == "malformed":
            answer["result"] = MALFORMED_RESULT
        elif self.fault != "undefined":
            outcome = self._evaluate(path, body.get("input"))
            if not outcome["ok"]:
                error = outcome["error"]["message"]
                return JSONResponse({"code": "internal_error", "message": error}, status_code=500)
            if outcome["defined"]:
                answer["result"] = outcome["value"]
        if self.decision_logs:
            answer["decision_id"] = str(uuid.uuid4())
        self.requests[-1]["decision_id"] = answer.get("decision_id")
        if request.query_params.get("provenance", "").lower() == "true":
            answer["provenance"] = {"version": "fake-opa", "build_commit": "none"}
            if self.revision is not None:
                answer["provenance"]["bundles"] = {"playbook": {"revision": self.revision}}
        return JSONResponse(answer)

    def _evaluate(self, entrypoint: str, input: Any) -> dict[str, Any]:
        with self._eval_lock:
            if entrypoint not in self._bundles:
                try:
                    self._bundles[entrypoint] = compile_bundle(self._modules, self._data, [entrypoint])
                except LoadFailure as exc:
                    return {"ok": False, "error": exc.error}
            rego, bundle = self._bundles[entrypoint]
            rego.set_input(input)
            return evaluate(rego, bundle, entrypoint)
