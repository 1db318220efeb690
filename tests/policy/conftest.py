"""Fixtures for the policy layer: the shipped policies under each data scenario of the oracle
(tests/policy/oracle.py), a fake OPA per scenario answering from its fixtures, and engines over both."""

from __future__ import annotations

import json
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
from tests.policy.fake_opa import FakeOpa, FixtureAnswers
from tests.policy.oracle import BASE_INPUT, BROKEN_DATA, ORG_DATA, SCENARIOS, fixtures

__all__ = ["BASE_INPUT"]

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
# The acceptance checks' own policy (shared/ sits beside the repository).
SMOKE_POLICIES = ROOT.parent / "shared" / "acceptance" / "policies"


@pytest.fixture(scope="session")
def fake_opas() -> Iterator[dict[str, FakeOpa]]:
    """One fake OPA per data scenario, each answering from that scenario's fixtures."""
    servers = {scenario: FakeOpa(FixtureAnswers(fixtures(scenario))) for scenario in SCENARIOS}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


def _cleared(server: FakeOpa) -> None:
    server.reset()
    server.token = server.revision = None
    server.decision_logs = True


@pytest.fixture
def opa(fake_opas: dict[str, FakeOpa]) -> Iterator[FakeOpa]:
    """The shipped scenario's fake OPA with its switches cleared before and after the test; a
    question its fixtures do not answer fails the test."""
    for server in fake_opas.values():
        _cleared(server)
    yield fake_opas["shipped"]
    unmatched = [message for server in fake_opas.values() for message in server.unmatched]
    for server in fake_opas.values():
        _cleared(server)
    assert unmatched == [], "the fake OPA was asked what its fixtures do not answer"


def _policies_with(root: Path, data: dict[str, Any]) -> Path:
    """A copy of the shipped policies with data.playbook replaced."""
    target = root / "policies"
    shutil.copytree(POLICIES, target)
    (target / "playbook" / "data.json").write_text(json.dumps(data, indent=2))
    return target


@pytest.fixture(scope="session")
def scenario_policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real Rego, loaded with each scenario's data."""
    return {
        "shipped": POLICIES,
        "org": _policies_with(tmp_path_factory.mktemp("org"), ORG_DATA),
        "broken": _policies_with(tmp_path_factory.mktemp("broken"), BROKEN_DATA),
    }


@pytest_asyncio.fixture(scope="session")
async def embedded_engines(scenario_policies: dict[str, Path]) -> AsyncIterator[dict[str, EmbeddedEngine]]:
    engines = {scenario: EmbeddedEngine(path, timeout=5.0) for scenario, path in scenario_policies.items()}
    for engine in engines.values():
        await engine.load()
    yield engines
    for engine in engines.values():
        await engine.close()


@pytest_asyncio.fixture(scope="session")
async def opa_engines(fake_opas: dict[str, FakeOpa]) -> AsyncIterator[dict[str, OpaEngine]]:
    engines = {scenario: OpaEngine(server.url, timeout=5.0) for scenario, server in fake_opas.items()}
    yield engines
    for engine in engines.values():
        await engine.close()


@pytest.fixture
def embedded_engine(embedded_engines: dict[str, EmbeddedEngine]) -> EmbeddedEngine:
    """The embedded engine over the shipped policies and data."""
    return embedded_engines["shipped"]


@pytest.fixture
def opa_engine(opa_engines: dict[str, OpaEngine]) -> OpaEngine:
    """The OPA backend talking to the shipped scenario's fake OPA."""
    return opa_engines["shipped"]


@pytest.fixture(params=["embedded", "opa"])
def engines(request: pytest.FixtureRequest, opa: FakeOpa) -> dict[str, PolicyEngine]:
    """Either backend, one engine per data scenario: every table test runs against each."""
    return request.getfixturevalue(f"{request.param}_engines")


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
