"""Connecting to Temporal: the configured address, else the dev server `dev` recorded."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bot.devstack import read_record
from bot.settings import Settings
from bot.tracing import Tracing, configure_tracing


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
    """Connect within the configured timeout: an unreachable server is a clear error, not a hang."""
    address = address or resolve_address(settings)
    try:
        return await asyncio.wait_for(
            Client.connect(
                address,
                namespace=settings.temporal_namespace,
                data_converter=pydantic_data_converter,
                # On the client only: workers built from it are traced too (both would double spans).
                interceptors=traced.interceptors if (traced := tracing()) else [],
            ),
            timeout=settings.temporal_connect_timeout,
        )
    except asyncio.TimeoutError:
        raise TemporalUnavailable(
            f"cannot reach Temporal at {address}: no answer within {settings.temporal_connect_timeout:.0f}s"
        ) from None
    except Exception as exc:  # the SDK raises RuntimeError with a transport message
        raise TemporalUnavailable(f"cannot reach Temporal at {address}: {exc}") from None
