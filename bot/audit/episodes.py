"""Alert episode state shared by every front door: has this episode run, and has it resolved?

Temporal alone cannot answer either across replicas and beyond its retention: a resolved delivery
on one front door must stop a firing one on another, and an episode whose run Temporal has
forgotten must not start again by accident. The `episodes` table is mutable state (not part of the
hash chain); the audit trail records the outcomes decided from it.

Alertmanager keeps the earliest startsAt when it merges two copies of one alert (an HA Prometheus
pair, or anyone posting to its API), so a later notification of a firing can carry an earlier
startsAt than its first: a new episode id for the same episode. The stores therefore also answer
with the latest episode of the same alert (sender, playbook and fingerprint) that began later,
within MERGE_WINDOW (`series_range`, `merge_target`), and a claim never opens an episode below an
open one: such a delivery is the later episode's (bot/alerts/receiver.py).

`decide_claim` is the claim rule as a pure function, so every backend applies the same one inside
its own serialized transaction.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel


STAMP = re.compile(r"-(\d{8}T\d{6}\.\d{6}Z)$")  # the fixed-width UTC startsAt an episode id ends with
_STAMP_LEN = len("20260101T000000.000000Z")
_LAST_STAMP = "99991231T235959.999999Z"
# How much later than a delivery's startsAt an episode of the same alert may have begun and still be
# the one it is a merged copy of: an HA Prometheus pair's rule goes active within an evaluation
# interval of each other. Further apart, they are two episodes (as before the merge rule). Kept
# short: a copy posted to Alertmanager's API while the real rule is pending, within this window,
# is taken as the real alert's episode (its run did what the playbook does for those labels).
MERGE_WINDOW = timedelta(minutes=5)
# How far in the future (against the claiming front door's clock) an episode's startsAt may have been
# when it was claimed and still take merged copies: a copy posted with a future startsAt (anyone can
# post to Alertmanager's API) starts its own run, and must not swallow the real alert's episodes.
CLOCK_SKEW = timedelta(minutes=5)


def stamp(starts_at: datetime) -> str:
    """An instant as episode ids end with it: `YYYYmmddTHHMMSS.ffffffZ` in UTC (fixed width, so
    ids of one alert sort by startsAt)."""
    t = starts_at.astimezone(timezone.utc)
    return f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}.{t.microsecond:06d}Z"


def series_key(episode_id: str) -> str | None:
    """What the episodes of one alert (same sender, playbook and fingerprint) share: the id up to
    its stamp. None for an id not shaped as an episode's (bot/alerts/episodes.py `episode_id`)."""
    return episode_id[:-_STAMP_LEN] if STAMP.search(episode_id) is not None else None


def series_range(episode_id: str) -> tuple[str, str, int] | None:
    """Where the episodes of `episode_id`'s alert that began after it, within MERGE_WINDOW, sort:
    every id `i` with `episode_id < i <= upper` (byte order) and `len(i) == length`, and no other
    id (both bounds start with the series key, and its fingerprint part holds no "-", so no other
    playbook's or fingerprint's id has that length there). None for an id not shaped as one."""
    key, began = series_key(episode_id), episode_starts(episode_id)
    if key is None or began is None:
        return None
    try:
        upper = key + stamp(began + MERGE_WINDOW)
    except OverflowError:
        upper = key + _LAST_STAMP
    return episode_id, upper, len(episode_id)


def merge_target(later: Episode) -> bool:
    """Whether `later` (a later episode of the alert, within MERGE_WINDOW) may take a merged copy:
    it was claimed, and its startsAt was no more than CLOCK_SKEW in the future then."""
    began = episode_starts(later.episode_id)
    return later.claimed_at is not None and began is not None and began <= later.claimed_at + CLOCK_SKEW


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
