"""structlog for our code and the stdlib loggers (temporalio, uvicorn) alike.

JSON off a TTY, console on one. Context (run_id, step_id, playbook) comes from contextvars in
activities and from `extra` on `workflow.logger`, which does not repeat lines during replay.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import structlog

from bot.terminal import visible

_masker: Callable[[Any], Any] | None = None


def mask_secrets_with(masker: Callable[[Any], Any] | None) -> Callable[[], None]:
    """Mask log lines with `masker` (the worker's secret store); returns what undoes it."""
    global _masker
    previous, _masker = _masker, masker

    def restore() -> None:
        global _masker
        _masker = previous

    return restore


def mask_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Processor: every secret value the store knows, in its encoded forms, is masked in every line,
    ours and the libraries' alike (actions mask their own lines too; this is the net under them)."""
    masker = _masker
    if masker is None:
        return event
    try:
        return _masked(event, masker)
    except Exception:  # noqa: BLE001  e.g. an unreadable secrets file: withhold the line, never show it unmasked
        kept = {key: event[key] for key in ("timestamp", "level", "logger") if key in event}
        return {**kept, "event": "log line withheld: secret masking failed"}


def _masked(event: dict[str, Any], masker: Callable[[Any], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in event.items():
        if value is None or isinstance(value, (bool, int, float)):
            out[key] = value
        elif isinstance(value, (str, dict, list, tuple)):
            out[key] = masker(value)
        else:  # rendered through repr(): masked in that form, or left as it is
            text = repr(value)
            masked = masker(text)
            out[key] = value if masked == text else masked
    return out


_CONTEXT_KEYS = ("run_id", "step_id", "playbook", "action", "attempt", "requested_by", "trigger", "state", "error")


def _from_temporal_extra(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Lift temporalio's workflow/activity info into our field names."""
    info = event.pop("temporal_workflow", None) or event.pop("temporal_activity", None)
    if isinstance(info, dict):
        event.setdefault("run_id", info.get("workflow_id"))
        event.setdefault("temporal_run_id", info.get("run_id"))
    return event


def _inert(render: Callable[..., str]) -> Callable[..., str]:
    """The console renderer, with what it writes raw (the event's text and a traceback) made inert:
    a value quoted there (a `core.log` message over an annotation, a library's line quoting a
    command's stderr) cannot move the cursor, set the clipboard or begin a forged line of its own.
    It repr()s the other fields itself; JSON lines escape everything."""

    def inert(logger: Any, name: str, event: dict[str, Any]) -> str:
        if isinstance(event.get("event"), str):
            event["event"] = visible(event["event"])
        if isinstance(event.get("exception"), str):  # its lines kept, indented: none passes for a log line
            event["exception"] = "\n".join("  " + visible(line) for line in event["exception"].split("\n"))
        return render(logger, name, event)

    return inert


def configure(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _from_temporal_extra,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if as_json
                     else _inert(structlog.dev.ConsoleRenderer(colors=False)))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_secrets,  # last before rendering: tracebacks and library lines are masked too
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Our workflow lines carry run_id in `extra`; the long info suffix on the message is noise.
    from temporalio import workflow

    workflow.logger.workflow_info_on_message = False
