"""One settings class for every entry point; environment prefix PLAYBOOK_BOT_."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConfigError(RuntimeError):
    """A setting a process cannot run without; the message names it."""


# The bearer tokens our webhooks check: an operator picks them, so they can be guessable.
WEBHOOK_TOKENS = ("alertmanager_token", "grafana_token", "opsgenie_token")
TOKEN_MIN_CHARS = 16
# What deploy/env.example and the docs put where a secret goes, and people leave in place.
PLACEHOLDER = re.compile(r"(?<![a-z0-9])change[-_ ]?me(?![a-z0-9])", re.IGNORECASE)  # not in "exchange-metrics"


TEMPORAL_TLS_FIELDS = (
    "temporal_tls",
    "temporal_tls_ca_file",
    "temporal_tls_cert_file",
    "temporal_tls_key_file",
    "temporal_tls_server_name",
    "temporal_api_key",
)


class Settings(BaseSettings):
    # An empty variable (compose's `${VAR:-}`) is unset: no empty token enabling Slack, no path ".".
    # (hide_input_in_errors: a refused value, a secret's included, is never quoted in the error.)
    model_config = SettingsConfigDict(env_prefix="PLAYBOOK_BOT_", extra="ignore", env_ignore_empty=True,
                                      hide_input_in_errors=True)

    # Temporal: unset address -> the embedded dev server (recorded under data_dir by `dev`).
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    task_queue: str = "playbook-bot"
    temporal_connect_timeout: float = Field(10.0, gt=0)
    # TLS to a cluster or Temporal Cloud (bot/temporal.py checks and reads them at connect). Any file,
    # the server name or the API key turns TLS on; TEMPORAL_TLS=true alone trusts the system's roots.
    temporal_tls: bool = False
    temporal_tls_ca_file: Path | None = None  # PEM CA bundle for the server certificate
    temporal_tls_cert_file: Path | None = None  # PEM client certificate (mTLS), with the key file
    temporal_tls_key_file: Path | None = None  # PEM unencrypted private key of that certificate
    temporal_tls_server_name: str | None = None  # SNI and certificate name when not the address's host
    temporal_api_key: SecretStr | None = None  # Temporal Cloud API key, sent as a bearer token
    dev_server_port: int = Field(7233, ge=0, le=65535)
    dev_server_ui_port: int | None = Field(None, ge=0, le=65535)

    data_dir: Path = Path(".data")
    # Audit trail and episode state: unset -> SQLite in data_dir; postgresql://user:pw@host/db -> one
    # store (one hash chain) shared by every front door and worker (bot/audit/backend.py).
    audit_url: SecretStr | None = None
    # Signed chain-head checkpoints the worker appends to this file (O_APPEND) every interval.
    audit_checkpoint_file: Path | None = None
    audit_checkpoint_interval: float = Field(60.0, gt=0, description="Seconds between checkpoints.")
    playbooks_dir: Path = Path("playbooks")
    # Front doors and workers look for playbook changes this often (and on SIGHUP); 0: SIGHUP only.
    playbooks_reload_interval: float = Field(2.0, ge=0, description="Seconds between playbook change checks.")
    policies_dir: Path = Path("policies")
    secrets_file: Path | None = None

    opa_url: str | None = None
    opa_token: SecretStr | None = None
    opa_timeout: float = Field(2.0, gt=0)

    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="`worker` alone: serve /healthz, /readyz and /metrics on this port."
    )

    alertmanager_token: SecretStr | None = None
    alertmanager_max_body: int = Field(1 << 20, gt=0, description="Bytes; a larger webhook body is a 413.")
    alertmanager_url: str | None = None  # default `url` of the alertmanager.* actions
    # Grafana Alerting's webhook contact point posts to POST /grafana with this bearer token (its
    # "Authorization header credentials"); unset: /grafana answers 401. Body limit: alertmanager_max_body.
    grafana_token: SecretStr | None = None
    # Grafana's HMAC Signature (contact point, optional settings): its secret (comma-separated: old
    # and new while one is rotated), the header it signs into, and its Timestamp Header if one is
    # named there ("": none; then the signature covers the body alone and never goes stale). Set, a
    # delivery must be signed (and carry the bearer token too if grafana_token is set).
    grafana_hmac_secrets: SecretStr | None = None
    grafana_hmac_header: str = Field("X-Grafana-Alerting-Signature", pattern=r"^[A-Za-z0-9-]+$")
    grafana_hmac_timestamp_header: str = Field("", pattern=r"^[A-Za-z0-9-]*$")
    # PagerDuty V3 webhook subscriptions' signing secrets (comma-separated: old and new while one is
    # rotated); unset: POST /pagerduty answers 401. Opsgenie's webhook integration sends the custom
    # header `Authorization: Bearer <OPSGENIE_TOKEN>`; unset: POST /opsgenie answers 401.
    pagerduty_webhook_secrets: SecretStr | None = None
    opsgenie_token: SecretStr | None = None
    prometheus_url: str | None = None  # default `url` of prometheus.query
    # Paging APIs (bot/actions/pagerduty.py, opsgenie.py); EU accounts use their EU hosts.
    pagerduty_events_url: str = "https://events.pagerduty.com"  # Events API v2 (/v2/enqueue)
    pagerduty_api_url: str = "https://api.pagerduty.com"  # REST API v2 (incident notes)
    opsgenie_api_url: str = "https://api.opsgenie.com"  # Alert API v2; EU: https://api.eu.opsgenie.com
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str | None = None

    # Identity and trust (docs/security.md): the HMAC key front doors sign proofs with and workers
    # check them with; the API's hashed bearer tokens; and, for the CLI, the API to go through.
    envelope_key: SecretStr | None = None
    api_tokens_file: Path | None = None  # default: DATA_DIR/api-tokens.json
    api_url: str | None = None  # CLI: go through this front door's /api/v1 as the token's principal
    api_token: SecretStr | None = None

    shell_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # k8s.* actions: a kubeconfig file (a step's `context` picks one of its contexts); unset, the pod's
    # service account when the worker runs in a cluster. Images k8s.run_job may run (fnmatch
    # patterns such as registry.internal/diag/*); empty: it refuses all.
    kubeconfig: Path | None = None
    k8s_job_images: Annotated[list[str], NoDecode] = Field(default_factory=list)
    foreach_max: int = Field(500, ge=1, le=10_000, description=(
        "Items a foreach group may have in one run (format v1.1); a longer list fails the group. The worker "
        "decides at admission, so a run keeps the bound it started with."
    ))
    output_inline_max: int = Field(16 * 1024, ge=1024, le=256 * 1024, description=(
        "Bytes of a step output's JSON a run keeps in its state; a larger output goes to the audit trail "
        "(a step_output event) and the run keeps a reference, a preview and what its templates read."
    ))
    output_preview_bytes: int = Field(1024, ge=0, le=16 * 1024, description="The preview a large output leaves in status.")
    # Schedules (triggers.schedule): workers create, update and delete this task queue's Temporal
    # Schedules to match their playbooks when they start; off for a worker that must not (a canary).
    schedules_sync: bool = True
    # Hosts (deploy.internal, *.internal) and CIDRs playbook HTTP may reach; unset: any but link-local
    # and cloud metadata, which are never reachable (bot/actions/egress.py).
    http_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_format: str = "auto"  # auto (JSON off a TTY) | json | console
    log_level: str = "INFO"

    @field_validator(
        "temporal_tls_server_name", "temporal_api_key", "envelope_key", "api_token", "audit_url", "opa_token",
        *WEBHOOK_TOKENS, mode="before"
    )
    @classmethod
    def _strip(cls, value: object) -> object:
        # A pasted key's newline is not part of it; nor is a Kubernetes secret file's (Alertmanager
        # trims its credentials_file, so an untrimmed token here would refuse every delivery).
        return value.strip() if isinstance(value, str) else value

    @field_validator(*WEBHOOK_TOKENS)
    @classmethod
    def _unguessable(cls, value: SecretStr | None) -> SecretStr | None:
        """Red team: serve started with env.example's `change-me` as its Alertmanager token, and
        anyone who could reach the port started remediations with it."""
        if value is None:
            return None
        token = value.get_secret_value()
        if PLACEHOLDER.search(token):
            raise ValueError("is the example's placeholder; generate a token: `openssl rand -hex 32`")
        if len(token) < TOKEN_MIN_CHARS:
            raise ValueError(f"is shorter than {TOKEN_MIN_CHARS} characters, so it can be guessed; generate one: "
                             "`openssl rand -hex 32`")
        return value

    @property
    def tokens_path(self) -> Path:
        return self.api_tokens_file or self.data_dir / "api-tokens.json"

    @field_validator("shell_allow", "http_allow", "k8s_job_images", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


def load_settings() -> Settings:
    """The settings from the environment; a refused value is a ConfigError naming its variable and
    why (never the value: it may be a secret)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"PLAYBOOK_BOT_{'_'.join(str(part) for part in error['loc']).upper()} {_said(error)}"
            for error in exc.errors()
        )
        raise ConfigError(problems) from None


def _said(error: dict) -> str:
    message = str(error.get("msg", "is not valid"))
    return message.removeprefix("Value error, ") if message.startswith("Value error, ") else f"is not valid: {message}"
