"""Fixtures for playbook tests: stand-in actions (never in the global registry) and a file writer."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal

import pytest
from pydantic import Field

from bot.actions.base import ActionParams, ActionSpec
from bot.playbook.durations import Duration

FIXTURES = Path(__file__).parent / "fixtures"


class LogParams(ActionParams):
    message: str


class HttpParams(ActionParams):
    method: Literal["GET", "POST", "PUT", "DELETE"] = "GET"
    url: str
    json_: Any = Field(None, alias="json")
    expected_status: int | list[int] | None = None
    timeout: Duration = timedelta(seconds=30)


class SilenceParams(ActionParams):
    matchers: list[str] = Field(min_length=1)
    duration: Duration
    comment: str = ""


class ExpireSilenceParams(ActionParams):
    silence_id: str


class QueryParams(ActionParams):
    query: str
    expect: str | None = None


def _spec(name: str, params: type[ActionParams]) -> ActionSpec:
    return ActionSpec(name=name, params=params, summary=f"test stand-in for {name}", method_name=f"Dummy.{name}")


DUMMY_ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        _spec("core.log", LogParams),
        _spec("http.request", HttpParams),
        _spec("alertmanager.silence", SilenceParams),
        _spec("alertmanager.expire_silence", ExpireSilenceParams),
        _spec("prometheus.query", QueryParams),
    )
}


@pytest.fixture
def actions() -> dict[str, ActionSpec]:
    """Stand-in actions passed explicitly to the loader, so tests do not depend on the catalog."""
    return dict(DUMMY_ACTIONS)


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write dedented YAML to tmp_path/<name> and return its path."""

    def write(text: str, name: str = "playbook.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write
