"""Kubernetes API access for the k8s.* actions: one ApiClient per kubeconfig context, loaded once.

Requests go through kubernetes-asyncio's ApiClient (its kubeconfig, in-cluster, auth and TLS
handling) with plain JSON bodies, so the actions read and write objects in the API's documented
shapes. A 429 is waited out as its Retry-After asks; other API errors become `KubeError`, which
carries the Status object's `reason` so callers decide on it, never on message text.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import structlog

from bot.actions.base import ActionFailed, ActionRefused

if TYPE_CHECKING:  # kubernetes-asyncio's client package takes a second to import: loaded on first use
    from kubernetes_asyncio.client import ApiClient, Configuration

log = structlog.get_logger("bot.actions.k8s")

REQUEST_TIMEOUT = 30.0  # seconds per API request; the step's timeout bounds the whole action
THROTTLE_TRIES = 8  # 429 answers waited out per request before the attempt fails (retryable)
RETRY_AFTER_MAX = 30.0  # seconds: a longer Retry-After is capped (the step timeout still rules)
RETRY_AFTER_DEFAULT = 1.0  # seconds when a 429 names no (or a malformed) Retry-After
EXCERPT = 300
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# DNS-1123 names as the API validates them: a label (namespaces, most names) and a subdomain (nodes, pods).
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def dns_label(value: str) -> str:
    if not DNS_LABEL.match(value):
        raise ValueError(f"{value!r} is not a valid name (lower-case letters, digits and '-', at most 63)")
    return value


def dns_subdomain(value: str) -> str:
    if not DNS_SUBDOMAIN.match(value):
        raise ValueError(f"{value!r} is not a valid name (lower-case letters, digits, '-' and '.', at most 253)")
    return value


class KubeError(Exception):
    """The API answered with an error Status: `reason` is its machine-readable reason (NotFound, Conflict...)."""

    def __init__(self, status: int, reason: str, message: str, where: str) -> None:
        super().__init__(f"{where} returned {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    def failed(self, action: str) -> ActionFailed:
        """As a step failure: a server-side or throttling problem is retried, a refusal is not."""
        retryable = self.status >= 500 or self.status in (408, 409, 429)
        return ActionFailed(f"{action}: {self}", retryable=retryable)


def _excerpt(text: str) -> str:
    flat = " ".join(text.split()) or "(empty body)"
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT] + "…"


def _retry_after(headers: Mapping[str, str]) -> float:
    """Seconds to wait: Retry-After in delta-seconds, as the API server sends it."""
    try:
        seconds = float(headers.get("Retry-After", ""))
    except ValueError:
        return RETRY_AFTER_DEFAULT
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def path(*parts: str) -> str:
    """A URL path from validated segments, each percent-quoted anyway."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


class Kube:
    """One context's API: JSON requests through its ApiClient."""

    def __init__(self, api: ApiClient, context: str, request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.api = api
        self.context = context
        self._timeout = request_timeout

    async def request(
        self,
        method: str,
        url_path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        text: bool = False,
    ) -> Any:
        """The decoded answer (JSON, or text with `text=True`); a 429 is waited out; errors raise KubeError."""
        where = f"{method} {url_path}"
        for _ in range(THROTTLE_TRIES):
            headers = {"Accept": "text/plain" if text else "application/json", "Content-Type": content_type}
            try:
                response = await self.api.call_api(
                    url_path,
                    method,
                    query_params=dict(query or {}),
                    header_params=headers,
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
                try:
                    status, raw, answer_headers = response.status, await response.read(), response.headers
                finally:
                    response.release()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:  # the API may be back soon
                raise ActionFailed(f"k8s: {where} failed: {type(exc).__name__}: {exc}") from None
            if status == 429:
                wait = _retry_after(answer_headers)
                log.info("kubernetes API asks to slow down", where=where, retry_after=wait)
                await asyncio.sleep(wait)
                continue
            if not 200 <= status < 300:
                raise _error(status, raw, where)
            if text:
                return raw.decode("utf-8", errors="replace")
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                raise ActionFailed(f"k8s: {where} answered {status} with a body that is not JSON: "
                                   f"{_excerpt(raw.decode('utf-8', errors='replace'))}") from None
        raise ActionFailed(f"k8s: {where}: still throttled (429) after {THROTTLE_TRIES} tries")

    async def get(self, url_path: str, **query: Any) -> Any:
        return await self.request("GET", url_path, query=query)

    async def patch(self, url_path: str, body: Any, content_type: str) -> Any:
        return await self.request("PATCH", url_path, body=body, content_type=content_type)

    async def put(self, url_path: str, body: Any) -> Any:
        return await self.request("PUT", url_path, body=body)

    async def post(self, url_path: str, body: Any) -> Any:
        return await self.request("POST", url_path, body=body)

    async def delete(self, url_path: str, body: Any = None) -> Any:
        return await self.request("DELETE", url_path, body=body)


def _error(status: int, raw: bytes, where: str) -> KubeError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return KubeError(status, str(body.get("reason") or ""), str(body.get("message") or ""), where)
    return KubeError(status, "", _excerpt(raw.decode("utf-8", errors="replace")), where)


def _exec_token_refresher(loader: Any) -> Any:
    """A kept client outlives an exec plugin's token (EKS, GKE: minutes): before each request, run
    the plugin again once the token has expired (the loader does nothing until then)."""
    lock = asyncio.Lock()

    async def refresh(configuration: Configuration) -> None:
        async with lock:
            await loader.load_from_exec_plugin()
        configuration.api_key["BearerToken"] = loader.token

    return refresh


class KubeClients:
    """ApiClients by kubeconfig context, each loaded on first use and kept.

    `kubeconfig` set: contexts come from that file (None = its current context). Unset: the pod's
    service account (in-cluster), where no other context exists.
    """

    def __init__(
        self,
        kubeconfig: Path | None,
        *,
        environ: Mapping[str, str] = os.environ,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._in_cluster = bool(environ.get(IN_CLUSTER_ENV))
        self._timeout = request_timeout
        self._clients: dict[str, Kube] = {}
        self._lock: asyncio.Lock | None = None

    async def get(self, context: str | None) -> Kube:
        key = context or ""
        if key in self._clients:
            return self._clients[key]
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if key not in self._clients:
                self._clients[key] = Kube(await self._load(context), context or "(current)", self._timeout)
        return self._clients[key]

    async def _load(self, context: str | None) -> ApiClient:
        from kubernetes_asyncio import config as kube_config
        from kubernetes_asyncio.client import ApiClient, Configuration
        from kubernetes_asyncio.config.config_exception import ConfigException

        configuration = Configuration()
        if self._kubeconfig is not None:
            try:
                loader = await kube_config.load_kube_config(
                    config_file=str(self._kubeconfig),
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            except (ConfigException, OSError, ValueError, TypeError) as exc:
                raise ActionRefused(f"k8s: cannot use kubeconfig {self._kubeconfig} (context "
                                    f"{context or '(current)'}): {exc}") from None
            if getattr(loader, "exec_plugin_expiry", None) is not None:
                configuration.refresh_api_key_hook = _exec_token_refresher(loader)
        elif self._in_cluster:
            if context is not None:
                raise ActionRefused(f"k8s: context {context!r} needs a kubeconfig: set PLAYBOOK_BOT_KUBECONFIG "
                                    "(in-cluster there is only the pod's own service account)")
            try:
                kube_config.load_incluster_config(client_configuration=configuration)
            except (ConfigException, OSError) as exc:
                raise ActionRefused(f"k8s: in-cluster configuration failed: {exc}") from None
        else:
            raise ActionRefused("k8s: no Kubernetes configuration: set PLAYBOOK_BOT_KUBECONFIG to a kubeconfig "
                                "file, or run the worker in a pod (in-cluster service account)")
        log.info("kubernetes client loaded", context=context or "(current)", host=configuration.host)
        return ApiClient(configuration=configuration)

    async def close(self) -> None:
        for kube in self._clients.values():
            await kube.api.close()
        self._clients.clear()
