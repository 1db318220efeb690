"""Every shipped action: importing this module fills `ACTIONS`; `make_providers` builds them."""

from __future__ import annotations

from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.actions.alertmanager import AlertmanagerActions
from bot.actions.base import ACTIONS, ActionSpec
from bot.actions.core import CoreActions
from bot.actions.egress import EgressClient
from bot.actions.http import HttpActions
from bot.actions.k8s import KubernetesActions
from bot.actions.k8s_client import KubeClients
from bot.actions.k8s_jobs import KubernetesJobActions
from bot.actions.opsgenie import OpsgenieActions
from bot.actions.pagerduty import PagerDutyActions
from bot.actions.playbooks import PlaybookActions
from bot.actions.prometheus import PrometheusActions
from bot.actions.shell import ShellActions
from bot.actions.slack import SlackActions
from bot.settings import Settings
from bot.slack.web import PooledWebClient

__all__ = ["ACTIONS", "ActionSpec", "make_providers"]

SLACK_TIMEOUT = 30  # seconds per Web API request: slack_sdk's own default, said here


def make_providers(settings: Settings, http: EgressClient) -> list[object]:
    """The provider objects whose `@action` methods the worker registers as activities; every
    URL-taking action shares `http`, whose connections obey the egress rules."""
    kube = KubeClients(settings.kubeconfig)  # one ApiClient per context, shared by every k8s.* action
    return [
        CoreActions(),
        HttpActions(http),
        ShellActions(settings.shell_allow),
        AlertmanagerActions(http, settings.alertmanager_url),
        PrometheusActions(http, settings.prometheus_url),
        PagerDutyActions(http, settings.pagerduty_events_url, settings.pagerduty_api_url),
        OpsgenieActions(http, settings.opsgenie_api_url),
        SlackActions(slack_client(settings)),
        KubernetesActions(kube),
        KubernetesJobActions(kube, settings.k8s_job_images),
        PlaybookActions(),  # run as child workflows: registered for validate and the schema
    ]


def slack_client(settings: Settings, *, timeout: int = SLACK_TIMEOUT, pooled: bool = False) -> AsyncWebClient | None:
    """The Web API client when a bot token is set; retries only 429s, which Slack did not act on,
    so a retry can never post twice. `pooled`: keeping its connections (the notifier's, see
    bot/slack/web.py); otherwise a connection per call. `timeout` (seconds, per request) is an
    argument for tests."""
    if settings.slack_bot_token is None:
        return None
    return (PooledWebClient if pooled else AsyncWebClient)(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url or AsyncWebClient.BASE_URL,
        timeout=timeout,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
    )
