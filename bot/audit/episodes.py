"""Alert episode state shared by every front door: has this episode run, and has it resolved?

Temporal alone cannot answer either across replicas and beyond its retention: a resolved delivery
on one front door must stop a firing one on another, and an episode whose run Temporal has
forgotten must not start again by accident. The `episodes` table is mutable state (not part of the
hash chain); the audit trail records the outcomes decided from it.

Alertmanager keeps the earliest startsAt when it merges two copies of one alert (an HA Prometheus
pair, or anyone posting to its API), so a later notification of a firing can carry an earlier
startsAt than its first: a new episode id for the same episode. The stores therefore also answer
with the latest episode of the id's series (same sender, playbook and fingerprint) that started
later (`series_range`), and a claim never opens an episode below one: such a delivery is the
later episode's (bot/alerts/receiver.py).

`decide_claim` is the claim rule as a pure function, so every backend applies the same one inside
its own serialized transaction.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel


STAMP = re.compile(r"-(\d{8}T\d{6}\.\d{6}Z)$")  # the fixed-width UTC startsAt an episode id ends with
_STAMP_LEN = len("20260101T000000.000000Z")


def series_range(episode_id: str) -> tuple[str, str, int] | None:
    """Where the later episodes of `episode_id`'s series sort: every id `i` with
    `episode_id < i < upper` (byte order) and `len(i) == length`, and no other id (the id's
    fingerprint part holds no "-", so only its own series fills that range at that length).
    None for an id not shaped as an episode's (bot/alerts/episodes.py `episode_id`)."""
    if STAMP.search(episode_id) is None:
        return None
    prefix = episode_id[:-_STAMP_LEN]  # ends with the "-" before the stamp; "." follows "-"
    return episode_id, prefix[:-1] + ".", len(episode_id)


def episode_starts(episode_id: str) -> datetime | None:
    """The startsAt (UTC) an episode id was made from; None for an id not shaped as one."""
    found = STAMP.search(episode_id)
    if found is None:
        return None
    return datetime.strptime(found.group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)


class Episode(BaseModel):
    """One alert episode (its workflow id). `runs` counts claims (a re-run after Temporal's
    retention is the second); `started` says the latest claim's run was started; `claimed` is
    set only on what `claim_episode` returns: this caller won the claim and must start the run."""

    episode_id: str
    runs: int = 0
    started: bool = False
    claimed_at: datetime | None = None
    resolved_at: datetime | None = None
    claimed: bool = False

    @property
    def seen(self) -> bool:
        """Whether any front door has claimed or resolved it (a row exists with something in it)."""
        return self.runs > 0 or self.claimed_at is not None or self.resolved_at is not None


def decide_claim(current: Episode, now: datetime, *, rerun: bool, stale_after: float) -> Episode:
    """The episode after a claim attempt at `now` (claimed=True: the caller starts the run)."""
    unchanged = current.model_copy(update={"claimed": False})
    if current.resolved_at is not None:  # a resolved alert never remediates
        return unchanged
    if current.runs == 0:
        return current.model_copy(update={"runs": 1, "started": False, "claimed_at": now, "claimed": True})
    if not current.started:
        # Claimed but not started: either the claimer is starting it now, or it died in between.
        stale = current.claimed_at is None or now - current.claimed_at > timedelta(seconds=stale_after)
        if stale:
            return current.model_copy(update={"claimed_at": now, "claimed": True})
        return unchanged
    if rerun:  # started before, and Temporal has forgotten it: the trigger asked for a new run
        return current.model_copy(update={"runs": current.runs + 1, "started": False, "claimed_at": now, "claimed": True})
    return unchanged
