"""An alert episode's shared state (stub, identical to the episodes helper's definition in issue 14)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Episode(BaseModel):
    episode_id: str
    runs: int = 0
    started: bool = False
    claimed_at: datetime | None = None
    resolved_at: datetime | None = None
    claimed: bool = False
