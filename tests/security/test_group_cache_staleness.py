"""Someone removed from the approver group must not keep approving while Slack's usergroups.list
fails: the last known memberships are used only until they are `max_stale` old (counted from the
last successful refresh); after that users have no groups (fail closed) and it is logged as an error."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from structlog.testing import capture_logs

from bot.slack.groups import GroupResolver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyWeb:
    """A Web API client whose usergroups.list answers from `groups` until `failing` is set."""

    def __init__(self, groups: dict[str, list[str]]) -> None:
        self.groups = groups
        self.failing = False
        self.calls = 0

    async def usergroups_list(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.failing:
            raise SlackApiError("usergroups.list failed", {"ok": False, "error": "fatal_error"})
        return {"ok": True, "usergroups": [{"id": f"S0{h.upper()}", "handle": h, "date_delete": 0, "users": users}
                                           for h, users in self.groups.items()]}


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_last_known_groups_are_used_until_max_stale_then_nobody_has_groups(clock: Clock) -> None:
    web = FlakyWeb({"sre": ["U0BOB"]})
    groups = GroupResolver(web, ttl=300, max_stale=900, clock=clock)  # type: ignore[arg-type]
    start = clock.now
    assert await groups.handles("U0BOB") == ["sre"]

    web.failing = True  # from now on Slack cannot be asked (and BOB left sre meanwhile)
    clock.now = start + 880
    with capture_logs() as logs:
        assert await groups.handles("U0BOB") == ["sre"], "within max_stale the last known map is used"
    assert web.calls == 2 and [e["log_level"] for e in logs] == ["warning"]

    clock.now = start + 899  # no new attempt yet (the pause after an error), still within max_stale
    assert await groups.handles("U0BOB") == ["sre"]

    clock.now = start + 901  # past max_stale, still inside the pause: no call, but the map is gone
    with capture_logs() as logs:
        assert await groups.handles("U0BOB") == [], "past max_stale: fail closed"
    assert web.calls == 2
    assert any(e["log_level"] == "error" for e in logs), logs

    clock.now = start + 911  # the next attempt fails too: still nothing
    with capture_logs() as logs:
        assert await groups.handles("U0BOB") == []
    assert web.calls == 3 and any(e["log_level"] == "error" for e in logs), logs

    web.failing, web.groups = False, {"sre": ["U0DANA"]}
    clock.now = start + 950  # Slack answers again: the fresh map counts
    assert await groups.handles("U0BOB") == [] and await groups.handles("U0DANA") == ["sre"]


async def test_max_stale_defaults_to_fifteen_minutes(clock: Clock) -> None:
    web = FlakyWeb({"sre": ["U0BOB"]})
    groups = GroupResolver(web, clock=clock)  # type: ignore[arg-type]
    start = clock.now
    assert await groups.handles("U0BOB") == ["sre"]
    web.failing = True
    clock.now = start + 15 * 60 - 1
    assert await groups.handles("U0BOB") == ["sre"]
    clock.now = start + 15 * 60 + 1
    assert await groups.handles("U0BOB") == []


async def test_a_failure_after_a_refresh_counts_from_that_refresh(clock: Clock) -> None:
    """The bound is measured from the last SUCCESSFUL refresh, not from the first failure."""
    web = FlakyWeb({"sre": ["U0BOB"]})
    groups = GroupResolver(web, ttl=300, max_stale=900, clock=clock)  # type: ignore[arg-type]
    start = clock.now
    assert await groups.handles("U0BOB") == ["sre"]
    clock.now = start + 300  # a second successful refresh
    assert await groups.handles("U0BOB") == ["sre"] and web.calls == 2
    web.failing = True
    clock.now = start + 300 + 899
    assert await groups.handles("U0BOB") == ["sre"]
    clock.now = start + 300 + 901
    assert await groups.handles("U0BOB") == []
