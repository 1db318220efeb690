"""The fake Slack Web API server, once per session, reset for every test."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.slack.fake_slack import FakeSlack, running


@pytest.fixture(scope="session")
def _slack_server() -> Iterator[FakeSlack]:
    yield from running()


@pytest.fixture
def fake_slack(_slack_server: FakeSlack) -> FakeSlack:
    _slack_server.reset()
    return _slack_server
