"""docker-compose.yml as an operator deploys it (no Docker engine here: we check the file)."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from bot.audit.cli import app as audit_app
from bot.audit.events import AuditEvent, EventKind
from bot.audit.postgres import PostgresAuditStore
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_the_services_are_there():
    assert {"postgresql", "temporal", "temporal-ui", "opa", "bot", "worker"} <= set(SERVICES)
    assert SERVICES["alertmanager"]["profiles"] == ["alerting"]
    assert SERVICES["prometheus"]["profiles"] == ["alerting"]


def test_images_are_pinned():
    for name, service in SERVICES.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert re.search(r"\d", tag) and "latest" not in tag, f"{name}: {image} is not pinned to a version"


def test_everything_long_running_has_a_healthcheck():
    for name in ("postgresql", "temporal", "opa", "bot", "worker", "alertmanager", "prometheus"):
        assert SERVICES[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("bot", "worker"):
        assert "/readyz" in " ".join(SERVICES[name]["healthcheck"]["test"])


def test_bot_waits_for_its_dependencies_and_opa_mounts_the_policies():
    for name in ("bot", "worker"):
        assert SERVICES[name]["depends_on"]["temporal"]["condition"] == "service_healthy"
        assert SERVICES[name]["depends_on"]["opa"]["condition"] == "service_healthy"
    assert "./policies:/policies:ro" in SERVICES["opa"]["volumes"]
    assert "--authentication=token" in SERVICES["opa"]["command"]
    assert "--set=decision_logs.console=true" in SERVICES["opa"]["command"]


def test_opas_api_is_authorized_by_the_repos_system_policy():
    """--authentication=token alone only reads the token; without --authorization=basic and the
    system policy (tested in tests/policy/test_system_authz.py) OPA answers anyone, writes included."""
    opa = SERVICES["opa"]
    assert "--authorization=basic" in opa["command"]
    assert "/authz/system_authz.rego" in opa["command"]
    assert "./deploy/opa/system_authz.rego:/authz/system_authz.rego:ro" in opa["volumes"]
    assert "OPA_API_TOKEN" in opa["environment"]  # the token system_authz.rego reads
    assert "http://127.0.0.1:8181/health" in opa["healthcheck"]["test"]  # the one tokenless path it opens


def test_every_playbook_bot_variable_is_a_real_setting():
    fields = {f"PLAYBOOK_BOT_{name.upper()}" for name in Settings.model_fields}
    seen = set()
    for service in SERVICES.values():
        for key in (service.get("environment") or {}):
            if key.startswith("PLAYBOOK_BOT_") and service.get("image", "").startswith("playbook-bot"):
                seen.add(key)
    assert seen, "the bot services set no settings?"
    assert seen <= fields, f"not settings: {sorted(seen - fields)}"
    for key in re.findall(r"^(PLAYBOOK_BOT_\w+)=", (ROOT / "deploy" / "env.example").read_text(), re.M):
        assert key in fields, f"deploy/env.example sets {key}, which is not a setting"


def test_no_secret_values_in_the_repo():
    text = (ROOT / "docker-compose.yml").read_text()
    for key in ("PASSWORD", "TOKEN", "SECRET"):
        for line in text.splitlines():
            if key in line and ":" in line and "${" not in line and "$$" not in line and "file" not in line:
                assert line.strip().endswith(":") or "credentials_file" in line, f"literal secret? {line}"


def test_dockerfile_runs_as_non_root_from_a_multi_stage_build():
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2
    assert re.search(r"^USER (?!root)\w+", text, re.M)


def test_temporal_is_reachable_only_from_the_bot_and_the_ui():
    """Temporal access is power over every run: only the bot's services and the UI join its network."""
    assert COMPOSE["networks"]["temporal"]["internal"] is True
    joined = {name for name, service in SERVICES.items() if "temporal" in (service.get("networks") or [])}
    assert joined == {"postgresql", "temporal", "temporal-ui", "bot", "worker"}
    assert not SERVICES["temporal"].get("ports"), "Temporal's gRPC port must not be published"
    assert all(p.startswith("127.0.0.1:") for p in SERVICES["temporal-ui"]["ports"])


def test_front_door_and_worker_share_the_envelope_key_and_only_the_worker_gets_playbook_secrets():
    for name in ("bot", "worker"):
        assert "PLAYBOOK_BOT_ENVELOPE_KEY" in SERVICES[name]["environment"]
        assert ":?" in SERVICES[name]["environment"]["PLAYBOOK_BOT_ENVELOPE_KEY"], "compose refuses to start without it"
    assert SERVICES["worker"]["env_file"] == [{"path": "deploy/playbook-secrets.env", "required": False}]
    assert "env_file" not in SERVICES["bot"]


def test_the_bot_and_opa_share_one_token_value():
    """Two settings for one secret drift apart, and then every decision is a deny."""
    assert SERVICES["bot"]["environment"]["PLAYBOOK_BOT_OPA_TOKEN"].startswith("${OPA_API_TOKEN")
    assert SERVICES["opa"]["environment"]["OPA_API_TOKEN"].startswith("${OPA_API_TOKEN")


def test_the_audit_store_is_postgresql_as_an_append_only_role_behind_its_own_network():
    """One chain for every front door and worker (issue 14): the bot's URL names the runtime role,
    the owner's password reaches only the one-shot schema service, which the bot waits for."""
    for name in ("bot", "worker"):
        env = SERVICES[name]["environment"]
        assert env["PLAYBOOK_BOT_AUDIT_URL"].startswith("postgresql://playbook_bot:${AUDIT_BOT_PASSWORD")
        assert SERVICES[name]["depends_on"]["audit-schema"]["condition"] == "service_completed_successfully"
    schema = SERVICES["audit-schema"]
    assert schema["command"] == ["audit", "schema", "--grant", "playbook_bot"]
    assert schema["environment"]["PLAYBOOK_BOT_AUDIT_URL"].startswith("postgresql://playbook_audit:")
    owners = {name for name, service in SERVICES.items() if "AUDIT_OWNER_PASSWORD" in str(service.get("environment"))}
    assert owners == {"postgresql", "audit-schema"}
    assert COMPOSE["networks"]["audit"]["internal"] is True
    joined = {name for name, service in SERVICES.items() if "audit" in (service.get("networks") or [])}
    assert joined == {"postgresql", "audit-schema", "bot", "worker"}
    assert "./deploy/postgres/init-audit.sh:/docker-entrypoint-initdb.d/10-audit.sh:ro" in SERVICES["postgresql"]["volumes"]


def test_the_audit_database_init_script_and_schema_service_leave_the_bot_append_only(pg_cluster, tmp_path):
    """deploy/postgres/init-audit.sh run as the image runs it (psql as the superuser), then what the
    audit-schema service runs, on a real PostgreSQL: the bot's role appends and cannot rewrite."""
    pg_cluster.start_if_stopped()
    env = {**os.environ, "PATH": f"{pg_cluster.bindir}:{os.environ['PATH']}", "PGHOST": "127.0.0.1",
           "PGPORT": str(pg_cluster.port), "POSTGRES_USER": "postgres",
           "AUDIT_OWNER_PASSWORD": "own'er", "AUDIT_BOT_PASSWORD": "b\"ot"}  # quotes: the script must not splice them
    done = subprocess.run(["sh", str(ROOT / "deploy/postgres/init-audit.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    owner_url, bot_url = pg_cluster.url("playbook_audit", "playbook_audit"), pg_cluster.url("playbook_audit", "playbook_bot")
    schema = CliRunner().invoke(audit_app, ["schema", "--url", owner_url, "--grant", "playbook_bot"])
    assert schema.exit_code == 0, schema.output
    with PostgresAuditStore(bot_url) as store:
        event = AuditEvent(event_id="e1", ts=datetime.now(UTC), kind=EventKind.run_started, actor="system")
        stored = store.append([event])
        assert stored[0].seq == 1 and store.verify().ok and store.privilege_warning() is None
    with psycopg.connect(bot_url, autocommit=True) as conn:
        for attack in ("UPDATE audit_events SET actor = 'mallory'", "DROP TABLE audit_events", "CREATE TABLE x (a int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)
