"""OPA server backend: POST /v1/data/playbook/authz/<rule> through opa-python-client.

The client raises aiohttp's exceptions as they come (connection refused, timeouts, HTTP
statuses, bodies that are not JSON); each is mapped here to a deny with a reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from opa_client import AsyncOpaClient

from bot.policy.engine import FailClosed, PACKAGE, rule_path
from bot.policy.models import Failure, Provenance, input_digest

log = structlog.get_logger(__name__)


class OpaEngine(FailClosed):
    """PolicyEngine backed by an OPA server (PLAYBOOK_BOT_OPA_URL)."""

    name = "opa"

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 2.0, retries: int = 1) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OPA URL must be http(s)://host[:port][/prefix], got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        prefix = parts.path.strip("/")
        self._health_url = f"{parts.scheme}://{parts.hostname}:{port}/{prefix + '/' if prefix else ''}health"
        # retries: one retry of a refused connection or a 500/502/504 (the client backs off
        # 0.3 s); the whole call, retries included, stays within `timeout`.
        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=port,
            ssl=https,
            version=f"{prefix}/v1" if prefix else "v1",
            token=token,
            timeout=timeout,
            retries=retries,
        )
        self._session_lock = asyncio.Lock()
        self._session_open = False
        self._policy_hash: str | None = None

    @property
    def policy_hash(self) -> str | None:
        """Bundle revisions OPA reported with the last answer (None when it serves plain files)."""
        return self._policy_hash

    async def load(self) -> None:
        """Nothing to compile here: OPA owns the policies (it reports its own load errors)."""

    async def ready(self) -> bool:
        try:
            await self._open()
            async with asyncio.timeout(self.timeout):
                return await self._client.check_health(diagnostic_url=self._health_url)
        except Exception as exc:  # readiness is a yes/no question; the reason goes to the log
            log.warning("policy.opa_not_ready", url=self.url, error=f"{type(exc).__name__}: {exc}")
            return False

    async def close(self) -> None:
        await self._client.close_connection()
        self._session_open = False

    async def _open(self) -> None:
        # The aiohttp session belongs to the running loop, so it is opened on first use.
        async with self._session_lock:
            if not self._session_open:
                await self._client.__aenter__()
                self._session_open = True

    async def _query(
        self, rule: str, input: dict[str, Any]
    ) -> tuple[Any, Provenance, tuple[Failure, str] | None]:
        path = rule_path(rule)
        provenance = Provenance(engine=self.name)
        try:
            provenance.input_digest = input_digest(input)
        except (TypeError, ValueError) as exc:
            return None, provenance, self._fail_closed(rule, Failure.INVALID_INPUT, f"policy input is not JSON: {exc}")
        try:
            await self._open()
            async with asyncio.timeout(self.timeout):
                response = await self._client.query_rule(
                    input_data=input, package_path=PACKAGE, rule_name=rule, query_params={"provenance": "true"}
                )
        except TimeoutError:
            reason = f"OPA at {self.url} did not answer within {self.timeout:g}s"
            return None, provenance, self._fail_closed(rule, Failure.TIMEOUT, reason)
        except aiohttp.ContentTypeError as exc:  # before ClientResponseError: it is one
            content_type = exc.headers.get("Content-Type") if exc.headers else None
            reason = f"OPA at {self.url} answered {path} with a non-JSON body ({content_type})"
            return None, provenance, self._fail_closed(rule, Failure.MALFORMED, reason)
        except aiohttp.ClientResponseError as exc:
            reason = f"OPA at {self.url} answered {path} with HTTP {exc.status} {exc.message}".rstrip()
            return None, provenance, self._fail_closed(rule, Failure.HTTP_ERROR, reason)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            reason = f"OPA unreachable at {self.url}: {exc}"
            return None, provenance, self._fail_closed(rule, Failure.UNREACHABLE, reason)
        except (aiohttp.ClientError, json.JSONDecodeError, ValueError) as exc:
            reason = f"OPA at {self.url} sent an unreadable answer for {path}: {type(exc).__name__}: {exc}"
            return None, provenance, self._fail_closed(rule, Failure.MALFORMED, reason)
        if not isinstance(response, dict):
            reason = f"OPA at {self.url} answered {path} with {type(response).__name__}, expected an object"
            return None, provenance, self._fail_closed(rule, Failure.MALFORMED, reason)
        decision_id = response.get("decision_id")
        # OPA sends a decision id only with decision logging on; keep it so the audit trail
        # and OPA's decision log can be joined, and mint one otherwise.
        provenance.decision_id = decision_id if isinstance(decision_id, str) and decision_id else uuid.uuid4().hex
        self._policy_hash = _bundle_revisions(response.get("provenance"))
        provenance.policy_hash = self._policy_hash
        if "result" not in response:
            reason = f"policy undefined: {path} has no value on OPA at {self.url} (is the policy loaded?)"
            return None, provenance, self._fail_closed(rule, Failure.UNDEFINED, reason)
        return response["result"], provenance, None



def _bundle_revisions(provenance: Any) -> str | None:
    """'name@revision,...' from OPA's ?provenance=true answer; None when it loaded plain files."""
    if not isinstance(provenance, dict) or not isinstance(provenance.get("bundles"), dict):
        return None
    bundles = [(name, info.get("revision")) for name, info in provenance["bundles"].items() if isinstance(info, dict)]
    if any(not isinstance(revision, str) or not revision for _, revision in bundles):
        return None  # a bundle without a revision names no version (every rollout would read the same)
    return ",".join(sorted(f"{name}@{revision}" for name, revision in bundles)) or None
