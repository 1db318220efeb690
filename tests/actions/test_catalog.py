from __future__ import annotations

from bot.actions.activities import build_activities
from bot.actions.base import ACTIONS
from bot.actions.catalog import make_providers, slack_client
from bot.actions.egress import EgressClient
from bot.actions.secrets import SecretStore
from bot.settings import Settings

SHIPPED = {
    "core.log",
    "core.sleep",
    "core.fail",
    "core.approve",
    "core.confirm",
    "http.request",
    "shell.run",
    "alertmanager.silence",
    "alertmanager.expire_silence",
    "prometheus.query",
    "slack.post",
    "playbook.run",
    "k8s.rollout_restart",
    "k8s.scale",
    "k8s.rollout_undo",
    "k8s.delete_pod",
    "k8s.cordon",
    "k8s.uncordon",
    "k8s.run_job",
    "k8s.get",
    "pagerduty.trigger",
    "pagerduty.resolve",
    "pagerduty.note",
    "opsgenie.create",
    "opsgenie.close",
    "opsgenie.note",
}


def test_catalog_registers_every_shipped_action_with_a_schema() -> None:
    assert SHIPPED <= set(ACTIONS)
    for name in SHIPPED:
        spec = ACTIONS[name]
        assert spec.summary, name
        schema = spec.params.model_json_schema()
        assert schema["additionalProperties"] is False, name
    assert "json" in ACTIONS["http.request"].params.model_json_schema()["properties"]
    assert ACTIONS["core.sleep"].params.model_json_schema()["properties"]["duration"]["type"] == "string"


async def test_make_providers_builds_one_activity_per_action() -> None:
    settings = Settings(shell_allow="sh, kubectl")
    async with EgressClient() as client:
        providers = make_providers(settings, client)
        activities = build_activities(providers, SecretStore(environ={}))
    assert {fn.__name__ for fn in activities} == {name.replace(".", "_") for name in SHIPPED}
    assert providers[2]._allow == ["sh", "kubectl"]


def test_schema_defaults_are_written_like_playbooks_write_them() -> None:
    http = ACTIONS["http.request"].params.model_json_schema()["properties"]
    shell = ACTIONS["shell.run"].params.model_json_schema()["properties"]
    assert (http["timeout"]["default"], shell["timeout"]["default"]) == ("30s", "5m")


def test_an_empty_variable_is_unset_so_slack_stays_off(monkeypatch) -> None:
    """docker-compose passes `${PLAYBOOK_BOT_SLACK_BOT_TOKEN:-}` as an empty string when the operator
    sets no token: that is "Slack off", not a client with an empty token failing every call."""
    monkeypatch.setenv("PLAYBOOK_BOT_SLACK_BOT_TOKEN", "")
    monkeypatch.setenv("PLAYBOOK_BOT_SLACK_SIGNING_SECRET", "")
    settings = Settings()
    assert settings.slack_bot_token is None and settings.slack_signing_secret is None
    assert slack_client(settings) is None
    monkeypatch.setenv("PLAYBOOK_BOT_SLACK_BOT_TOKEN", "xoxb-real")
    assert slack_client(Settings()) is not None
