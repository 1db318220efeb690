"""Connecting to Temporal: the configured address, else the dev server `dev` recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig

from bot.devstack import read_record
from bot.settings import TEMPORAL_TLS_FIELDS, ConfigError, Settings
from bot.tracing import Tracing, configure_tracing

log = structlog.get_logger(__name__)


_tracing: Tracing | None | bool = False  # False: not configured yet in this process


def tracing() -> Tracing | None:
    """OTLP tracing for this process, configured once: off unless OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    global _tracing
    if _tracing is False:
        _tracing = configure_tracing()
    return _tracing or None


def shutdown_tracing() -> None:
    """Flush spans before the process leaves (the CLI exits without interpreter teardown)."""
    if isinstance(_tracing, Tracing):
        _tracing.shutdown()


class TemporalUnavailable(RuntimeError):
    """Temporal cannot be reached; the message says where we looked and what to do."""


CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def _env(field: str) -> str:
    return f"PLAYBOOK_BOT_{field.upper()}"


def _read_pem(field: str, path: Path, marker: bytes, what: str, problems: list[str]) -> bytes | None:
    """The file's bytes, or a problem naming the setting and the path (never the content)."""
    shown = str(path) if path.is_absolute() else f"{path} ({path.resolve()})"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.append(f"{_env(field)}={shown} does not exist")
        return None
    except IsADirectoryError:
        problems.append(f"{_env(field)}={shown} is a directory, not a file")
        return None
    except OSError as exc:
        problems.append(f"{_env(field)}={shown} cannot be read ({exc.strerror or exc})")
        return None
    if marker not in data:
        problems.append(f"{_env(field)}={shown} is not a PEM {what} (no {marker.decode()} line)")
        return None
    if b"ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        problems.append(f"{_env(field)}={shown} is encrypted: give the key without a passphrase")
        return None
    return data


def tls_config(settings: Settings) -> TLSConfig | None:
    """The TLS the settings ask for (None: plain gRPC), files read now so that every mistake is one
    ConfigError naming the settings before anything connects, not a transport error later."""
    wanted = [f for f in TEMPORAL_TLS_FIELDS if f != "temporal_tls" and getattr(settings, f) is not None]
    if not settings.temporal_tls and not wanted:
        return None
    problems: list[str] = []
    if not settings.temporal_address:
        problems.append(
            f"{', '.join(_env(f) for f in wanted) or _env('temporal_tls')} set but not PLAYBOOK_BOT_TEMPORAL_ADDRESS: "
            "without an address the bot uses the embedded dev server, which speaks plain gRPC. Set the address of "
            "your cluster, or unset the TLS settings for local development"
        )
    if "temporal_tls" in settings.model_fields_set and not settings.temporal_tls and wanted:
        problems.append(
            f"PLAYBOOK_BOT_TEMPORAL_TLS=false, but {', '.join(_env(f) for f in wanted)} "
            f"{'needs' if len(wanted) == 1 else 'need'} TLS: "
            "unset PLAYBOOK_BOT_TEMPORAL_TLS (or set it to true)"
        )
    cert_file, key_file = settings.temporal_tls_cert_file, settings.temporal_tls_key_file
    if (cert_file is None) != (key_file is None):
        given, missing = ("cert_file", "key_file") if cert_file is not None else ("key_file", "cert_file")
        problems.append(
            f"{_env('temporal_tls_' + given)} is set without {_env('temporal_tls_' + missing)}: "
            "a client certificate (mTLS) needs both"
        )
    ca = cert = key = None
    if settings.temporal_tls_ca_file is not None:
        ca = _read_pem("temporal_tls_ca_file", settings.temporal_tls_ca_file, CERTIFICATE, "certificate", problems)
    if cert_file is not None and key_file is not None:
        cert = _read_pem("temporal_tls_cert_file", cert_file, CERTIFICATE, "certificate", problems)
        key = _read_pem("temporal_tls_key_file", key_file, b"PRIVATE KEY-----", "private key", problems)
    if problems:
        raise ConfigError("Temporal TLS: " + "; ".join(problems))
    return TLSConfig(
        server_root_ca_cert=ca, client_cert=cert, client_private_key=key, domain=settings.temporal_tls_server_name
    )


def _tls_summary(settings: Settings, tls: TLSConfig | None) -> str:
    """How we connect, for errors and logs: which trust and credentials, never their content."""
    if tls is None:
        return "plain gRPC"
    parts = [f"CA {settings.temporal_tls_ca_file}" if tls.server_root_ca_cert else "system CAs"]
    if tls.domain:
        parts.append(f"server name {tls.domain}")
    cert = f"client certificate {settings.temporal_tls_cert_file}" if tls.client_cert else "no client certificate"
    parts.append(cert)
    parts.append("API key" if settings.temporal_api_key else "no API key")
    return "TLS: " + ", ".join(parts)


def resolve_address(settings: Settings) -> str:
    if settings.temporal_address:
        return settings.temporal_address
    record = read_record(settings.data_dir)
    if record is None:
        raise TemporalUnavailable(
            f"no Temporal server: none recorded under {settings.data_dir.resolve()}. Start the embedded stack "
            "with `make run` (or `playbook-bot dev`) using the same PLAYBOOK_BOT_DATA_DIR, or set "
            "PLAYBOOK_BOT_TEMPORAL_ADDRESS"
        )
    return record.address


async def connect(settings: Settings, address: str | None = None) -> Client:
    """Connect within the configured timeout: an unreachable server is a clear error, not a hang.

    TLS settings are checked first (ConfigError); `address` without PLAYBOOK_BOT_TEMPORAL_ADDRESS is
    the embedded dev server, which TLS settings refuse."""
    tls = tls_config(settings)
    address = address or resolve_address(settings)
    where = f"{address} ({_tls_summary(settings, tls)})" if tls else address
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    try:
        client = await asyncio.wait_for(
            Client.connect(
                address,
                namespace=settings.temporal_namespace,
                tls=tls or False,
                api_key=api_key,
                data_converter=pydantic_data_converter,
                # On the client only: workers built from it are traced too (both would double spans).
                interceptors=traced.interceptors if (traced := tracing()) else [],
            ),
            timeout=settings.temporal_connect_timeout,
        )
    except asyncio.TimeoutError:
        raise TemporalUnavailable(
            f"cannot reach Temporal at {where}: no answer within {settings.temporal_connect_timeout:.0f}s"
        ) from None
    except Exception as exc:  # the SDK raises RuntimeError with a transport message
        raise TemporalUnavailable(f"cannot reach Temporal at {where}: {exc}") from None
    transport = _tls_summary(settings, tls)
    log.info("temporal connected", address=address, namespace=settings.temporal_namespace, transport=transport)
    return client
