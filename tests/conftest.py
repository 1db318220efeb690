"""Shared fixtures: a real Temporal dev server and the time-skipping test server, once per session.

In CI (CI=true) a missing binary fails the suite; it never silently skips.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator, NoReturn

import pytest
import pytest_asyncio
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.pg import PgCluster, cluster, find_bindir
from tests.slack.fake_slack import FakeSlack, running

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def unavailable(message: str) -> NoReturn:
    """What a test needs is not here: a skip on a laptop, a failure in CI (CI=true), where every
    test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a test that cannot run fails)")
    pytest.skip(message)


def binary(name: str, install: str = "`make test` installs it (pip extras [dev])") -> Path:
    path = BIN / name
    if path.exists():
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    unavailable(f"{name} not found beside {sys.executable} nor on PATH: {install}")


@pytest_asyncio.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary("temporal")),
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--log-level", "error"],
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def skip_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(binary("temporal-test-server")),
        data_converter=pydantic_data_converter,
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def _slack_server() -> Iterator[FakeSlack]:
    yield from running()


@pytest.fixture
def fake_slack(_slack_server: FakeSlack) -> FakeSlack:
    """The fake Slack Web API (tests/slack/fake_slack.py), emptied for each test."""
    _slack_server.reset()
    return _slack_server


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A real PostgreSQL for this test process (each xdist worker starts its own), stopped at the end."""
    bindir = find_bindir()
    if bindir is None:
        unavailable("PostgreSQL's initdb and pg_ctl not found (/usr/lib/postgresql/*/bin): `apt-get install postgresql`")
    with cluster(bindir) as pg:
        yield pg


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty database of its own for each test."""
    pg_cluster.start_if_stopped()
    return pg_cluster.url(pg_cluster.create_database())
