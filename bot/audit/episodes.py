"""Alert episode state shared by every front door: has this episode run, and has it resolved?

Temporal alone cannot answer either across replicas and beyond its retention: a resolved delivery
on one front door must stop a firing one on another, and an episode whose run Temporal has
forgotten must not start again by accident. The `episodes` table is mutable state (not part of the
hash chain); the audit trail records the outcomes decided from it.

`decide_claim` is the claim rule as a pure function, so every backend applies the same one inside
its own serialized transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel


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
