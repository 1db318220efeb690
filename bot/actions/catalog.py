"""Every shipped action: importing this module fills `ACTIONS`; `make_providers` builds them."""

from __future__ import annotations

import httpx

from bot.actions.alertmanager import AlertmanagerActions
from bot.actions.base import ACTIONS, ActionSpec
from bot.actions.core import CoreActions
from bot.actions.http import HttpActions
from bot.actions.prometheus import PrometheusActions
from bot.actions.shell import ShellActions
from bot.settings import Settings

__all__ = ["ACTIONS", "ActionSpec", "make_providers"]


def make_providers(settings: Settings, http: httpx.AsyncClient) -> list[object]:
    """The provider objects whose `@action` methods the worker registers as activities."""
    return [
        CoreActions(),
        HttpActions(http),
        ShellActions(settings.shell_allow),
        AlertmanagerActions(http, settings.alertmanager_url),
        PrometheusActions(http, settings.prometheus_url),
    ]
