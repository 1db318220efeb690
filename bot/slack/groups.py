"""A Slack user's user group handles, for the `start` and `approver` policy rules.

One `usergroups.list(include_users=True)` answers every user (and gives each handle's id, which
a mention that pages the group needs), so the whole map is cached and refreshed at most once per
TTL (a burst of commands makes one call). If Slack cannot be asked, the last known map is kept
until it is `max_stale` old (counted from the last successful refresh); after that, as with no
map at all, users have no groups (fail closed): someone removed from the approver group must not
keep approving because Slack is down.

A `run` asks for the requester's groups before its ack (the `start` rule may restrict a playbook
to groups, and the worker re-checks the signed groups), so the map is fetched when the front
door starts (`warm`) and, with `stale_ok` (a command's requester; votes keep waiting for a
refresh), once it is past its TTL but not `max_stale`, answered from the known map while one
refresh runs in the background: only a missing or too-old map is waited for.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import structlog
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.blocks import escape

log = structlog.get_logger(__name__)

_GROUP_ID = re.compile(r"S[A-Z0-9]+")
RETRY_AFTER_ERROR = 30.0  # seconds before asking Slack again after a failed refresh
MAX_STALE = 15 * 60.0  # seconds a failed refresh may keep using the last known memberships


class GroupResolver:
    def __init__(
        self,
        web: AsyncWebClient,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_stale: float = MAX_STALE,
    ) -> None:
        self.web = web
        self.ttl = ttl
        self.max_stale = max_stale
        self._clock = clock
        self._by_user: dict[str, list[str]] = {}
        self._ids: dict[str, str] = {}  # handle -> usergroup id
        self._refreshed_at: float | None = None  # the last successful refresh
        self._expires = float("-inf")
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    def warm(self) -> None:
        """Start fetching the map now (when there is a running loop), so the first command finds it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refresh_in_background()

    def _refresh_in_background(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._fresh_now(), name="slack-usergroups-refresh")

    async def handles(self, user_id: str, *, stale_ok: bool = False) -> list[str]:
        """The handles of the enabled user groups `user_id` belongs to, sorted; none once the
        last known map is older than `max_stale`. `stale_ok`: a map past its TTL will do (and
        is refreshed behind the answer)."""
        await self._fresh(stale_ok)
        if self._too_old():
            if self._by_user:
                log.error(
                    "slack user groups unknown for too long; users have no groups until Slack answers",
                    stale_s=round(self._clock() - (self._refreshed_at or 0.0)),
                    max_stale_s=self.max_stale,
                )
                self._by_user = {}
            return []
        return list(self._by_user.get(user_id, []))

    async def mention(self, handle: str) -> str:
        """`<!subteam^ID>`, which notifies the group's members; `@handle` (which does not) if Slack
        does not know the handle or cannot be asked. A group's id does not change with its
        members, so a stale map still pages it."""
        await self._fresh()
        group_id = self._ids.get(handle)
        if group_id and _GROUP_ID.fullmatch(group_id):
            return f"<!subteam^{group_id}>"
        return f"@{escape(handle)}"  # the handle comes from policy or a playbook: data

    async def _fresh(self, stale_ok: bool = False) -> None:
        if stale_ok and self._clock() >= self._expires and not self._too_old():
            self._refresh_in_background()  # stale but usable: answer now, refresh once behind it
            return
        await self._fresh_now()

    async def _fresh_now(self) -> None:
        if self._clock() >= self._expires:
            async with self._lock:  # single flight: concurrent callers wait for one refresh
                if self._clock() >= self._expires:
                    await self._refresh()

    def invalidate(self) -> None:
        self._expires = float("-inf")

    def _too_old(self) -> bool:
        return self._refreshed_at is None or self._clock() - self._refreshed_at > self.max_stale

    async def _refresh(self) -> None:
        try:
            response = await self.web.usergroups_list(include_users=True)
        except Exception as exc:  # noqa: BLE001  SlackApiError or the network: keep what we know, a while
            self._expires = self._clock() + min(self.ttl, RETRY_AFTER_ERROR)
            error = f"{type(exc).__name__}: {exc}"
            if self._too_old():
                log.error(
                    "slack usergroups.list failed and the last known groups are too old; users have no groups",
                    error=error,
                    max_stale_s=self.max_stale,
                )
                self._by_user = {}
            else:
                log.warning(
                    "slack usergroups.list failed; keeping the last known groups",
                    error=error,
                    known_users=len(self._by_user),
                    stale_s=round(self._clock() - (self._refreshed_at or 0.0)),
                )
            return
        by_user: dict[str, set[str]] = {}
        ids: dict[str, str] = {}
        for group in response.get("usergroups") or []:
            handle = group.get("handle")
            if not handle or group.get("date_delete"):
                continue
            if group.get("id"):
                ids[handle] = group["id"]
            for user in group.get("users") or []:
                by_user.setdefault(user, set()).add(handle)
        self._by_user = {user: sorted(handles) for user, handles in by_user.items()}
        self._ids = ids
        self._refreshed_at = self._clock()
        self._expires = self._refreshed_at + self.ttl
