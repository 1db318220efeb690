"""An alert key no audit store can hold, at the real front door on a real PostgreSQL: the attack
is the poisoned delivery arriving among others in a storm, whose audit appends share one group
transaction. It was a store error (PostgreSQL refuses NUL and index rows over 2704 bytes) that
failed the whole transaction as "unavailable": a 503 for every delivery in it, retried by
Alertmanager together with the poison. Now the poisoned delivery alone is a 400 naming the field."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections import Counter

from tests.reliability.alertmanager_support import bot_stack, firing, webhook
from tests.reliability.test_alertmanager import MAX_BODY, PLAYBOOKS


async def test_a_poisoned_alert_key_is_refused_alone_and_the_storm_around_it_starts(dev_env, tmp_path, pg_url):
    async with bot_stack(dev_env.client, tmp_path, PLAYBOOKS, alertmanager_max_body=MAX_BODY, audit_url=pg_url) as s:
        good = [webhook([firing(uuid.uuid4().hex[:16], "DiskFull", instance=f"db-{i}")]) for i in range(12)]
        poisoned = [webhook([firing(key, "DiskFull", instance="x")])
                    for key in ("ab\x00cd", secrets.token_hex(1500), "ab\x7fcd")]
        answers = await asyncio.gather(*(s.deliver(b) for b in good[:6] + poisoned + good[6:]))
        codes = [a.status_code for a in answers]
        assert codes == [200] * 6 + [400] * 3 + [200] * 6, codes
        for refused in answers[6:9]:
            assert "alerts[0].fingerprint" in refused.json()["error"], refused.text
        outcomes = Counter(o["outcome"] for a in answers[:6] + answers[9:] for o in a.json())
        assert outcomes == Counter({"started": 24}), outcomes  # hold and note both route DiskFull
        received = [e for e in s.audit.events() if e.kind.value == "alert_received"]
        assert len(received) == 12 and s.audit.verify().ok
