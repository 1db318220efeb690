"""Alert episodes: which playbooks an alert starts, with what params, under which workflow id.

An episode is (playbook, fingerprint, startsAt in UTC); its workflow id is derived from those
three alone, so Alertmanager's repeats and retries of one firing land on the same run, and the
next firing of the same alert (a new startsAt) is a new episode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable, Mapping

import structlog

from bot.alerts.matchers import Matcher, MatcherError, matches, parse_matchers
from bot.alerts.payload import Alert
from bot.audit.episodes import stamp
from bot.playbook.loader import LoadedPlaybook
from bot.playbook.model import AlertTrigger, OpsgenieTrigger, PagerDutyTrigger, Playbook
from bot.playbook.params import ParamError, coerce_params
from bot.playbook.templating import TemplateError, inert, render

log = structlog.get_logger(__name__)

_ID_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_ID_PART_LIMIT = 128


def episode_id(playbook: str, fingerprint: str, starts_at: datetime, prefix: str = "alert") -> str:
    """`alert-<playbook>-<fingerprint>-<YYYYmmddTHHMMSS.ffffffZ>`; one instant in any offset, one id.
    PagerDuty incidents and Opsgenie alerts use their own prefix: their ids are another namespace."""
    if starts_at.tzinfo is None or starts_at.utcoffset() is None:
        raise ValueError(f"starts_at must carry a timezone, got naive {starts_at.isoformat()}")
    # The fingerprint part never holds "-" (Alertmanager's are hex anyway), so the last "-" before the
    # fixed-width stamp splits playbook from fingerprint: distinct episodes never share an id.
    return f"{prefix}-{_id_part(playbook, _ID_SAFE)}-{_id_part(fingerprint, _ID_SAFE - {'-'})}-{stamp(starts_at)}"


def _id_part(value: str, safe: frozenset[str]) -> str:
    """Percent-encode outside `safe` (injective, readable); long parts become `~<sha256>`."""
    if not value:
        raise ValueError("an episode id part must not be empty")
    encoded = "".join(ch if ch in safe else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in value)
    if len(encoded) <= _ID_PART_LIMIT:
        return encoded
    return "~" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]  # `~` never appears in an encoded part


@dataclass(frozen=True)
class RouteMatch:
    """One playbook an alert matched: its params ready to start a run, or why it cannot start."""

    playbook: LoadedPlaybook
    trigger: AlertTrigger | PagerDutyTrigger | OpsgenieTrigger  # all have params, on_resolved, on_rerun
    trigger_index: int
    workflow_id: str
    params: dict[str, Any] | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.playbook.playbook.name

    @property
    def ok(self) -> bool:
        return self.error is None


@lru_cache(maxsize=4096)
def _parse_line(line: str) -> tuple[Matcher, ...]:
    return tuple(parse_matchers(line))


def trigger_matchers(trigger: AlertTrigger) -> list[Matcher]:
    """Every matcher of a trigger (lines may hold several); parsed once per text. Raises MatcherError."""
    return [m for line in trigger.matchers for m in _parse_line(line)]


def check_triggers(playbook: Playbook | LoadedPlaybook) -> list[str]:
    """Load-time problems with a playbook's alert matchers, each naming where it is."""
    if isinstance(playbook, LoadedPlaybook):
        playbook = playbook.playbook
    problems: list[str] = []
    for k, trigger in enumerate(playbook.triggers.alertmanager):
        found = 0
        broken = False
        for j, line in enumerate(trigger.matchers):
            try:
                found += len(_parse_line(line))
            except MatcherError as exc:
                broken = True
                problems.append(f"triggers.alertmanager[{k}].matchers[{j}]: {exc}")
        if not found and not broken:
            problems.append(
                f"triggers.alertmanager[{k}].matchers: no matcher given, so every alert would start this playbook"
            )
    return problems


def route(catalog_playbooks: Iterable[LoadedPlaybook], alert: Alert | Mapping[str, Any],
          prefix: str = "alert") -> list[RouteMatch]:
    """Each playbook whose trigger matches the alert's labels, once (its first matching trigger wins).
    `prefix` keeps each sender's episodes apart (Grafana's are `grafana-...`): a sender's resolve
    must never end, or suppress, an episode another sender started."""
    if not isinstance(alert, Alert):
        alert = Alert.model_validate(alert)
    context = inert({"alert": alert.as_context()})  # labels and annotations are data: they spell no secret
    out: list[RouteMatch] = []
    for loaded in catalog_playbooks:
        playbook = loaded.playbook
        for k, trigger in enumerate(playbook.triggers.alertmanager):
            try:
                matchers = trigger_matchers(trigger)
            except MatcherError as exc:  # the loader refuses these; never route on a half-read trigger
                log.warning("alert_trigger_unparsable", playbook=playbook.name, trigger=k, error=str(exc))
                continue
            if not matchers or not matches(matchers, alert.labels):
                continue
            workflow_id = episode_id(playbook.name, alert.fingerprint, alert.starts_at, prefix=prefix)
            out.append(with_params(loaded, trigger, k, workflow_id, context))
            break
    return out


def with_params(
    loaded: LoadedPlaybook, trigger: AlertTrigger | PagerDutyTrigger | OpsgenieTrigger, k: int, workflow_id: str,
    context: dict[str, Any],
) -> RouteMatch:
    """The match with its params rendered over the alert and checked, or the reason it cannot start."""
    where = f"playbook {loaded.playbook.name!r} trigger {k}"
    try:
        rendered = render(trigger.params, context)
        params = coerce_params(loaded.playbook, rendered)
    except (TemplateError, ParamError) as exc:
        return RouteMatch(loaded, trigger, k, workflow_id, error=f"{where} params: {exc}")
    return RouteMatch(loaded, trigger, k, workflow_id, params=params)
