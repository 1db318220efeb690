"""Fixtures for the policy layer: the shipped policies, a fake OPA server, engines over both."""

from __future__ import annotations

import copy
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.policy.embedded import EmbeddedEngine
from bot.policy.engine import PolicyEngine
from bot.policy.opa import OpaEngine
from tests.policy.fake_opa import FakeOpa

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
# The acceptance checks' own policy (shared/ sits beside the repository).
SMOKE_POLICIES = ROOT.parent / "shared" / "acceptance" / "policies"

BASE_INPUT: dict[str, Any] = {
    "playbook": {"name": "restart-service", "owner": "sre-oncall", "hash": "sha256:abc"},
    "step": {"id": "restart", "action": "http.request", "impact": "high", "with": {"method": "POST"}},
    "run": {"id": "run-1", "trigger": "cli", "requested_by": "alice", "started_at": "2025-03-01T09:00:00Z"},
    "params": {"service": "api", "environment": "production"},
    "alert": None,
    "approvals": [],
    "now": "2025-03-01T10:00:00Z",
    # The environment is the playbook's own default: an authenticated fact (see authz.rego).
    "provenance": {"params": {"service": "requester", "environment": "playbook"}, "alert": None},
}


def make_input(**changes: Any) -> dict[str, Any]:
    """BASE_INPUT with top-level fields replaced; a value of ... removes the field."""
    result = copy.deepcopy(BASE_INPUT)
    for key, value in changes.items():
        if value is ...:
            result.pop(key, None)
        else:
            result[key] = value
    return result


@pytest.fixture(scope="session")
def fake_opa() -> Iterator[FakeOpa]:
    server = FakeOpa(POLICIES)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def opa(fake_opa: FakeOpa) -> Iterator[FakeOpa]:
    """The session's fake OPA with its fault switches cleared before and after the test."""
    fake_opa.reset()
    fake_opa.token = fake_opa.revision = None
    fake_opa.decision_logs = True
    yield fake_opa
    fake_opa.reset()
    fake_opa.token = fake_opa.revision = None
    fake_opa.decision_logs = True


@pytest_asyncio.fixture(scope="session")
async def embedded_engine() -> AsyncIterator[EmbeddedEngine]:
    engine = EmbeddedEngine(POLICIES, timeout=5.0)
    await engine.load()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="session")
async def opa_engine(fake_opa: FakeOpa) -> AsyncIterator[OpaEngine]:
    engine = OpaEngine(fake_opa.url, timeout=5.0)
    yield engine
    await engine.close()


@pytest.fixture(params=["embedded", "opa"])
def engine(request: pytest.FixtureRequest, opa: FakeOpa) -> PolicyEngine:
    """Both backends over the same shipped policies: every table test runs against each."""
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture
def policies_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped policies."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
