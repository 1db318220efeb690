"""An alert Temporal will never start (its run input past the blob size limit) is that alert's
outcome, not the request's: a 503 made Alertmanager send the same body again for as long as the
alert fired, and the alerts after it in the body never started (real dev server, real front door).
Since stop 54 the front door's own bound (ALERT_MAX) refuses such an alert before Temporal is asked
(tests/security/test_temporal_limits.py); here it is lifted, so Temporal's refusal is still met."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from bot.alerts import payload
from bot.audit.events import EventKind
from tests.alerts.test_alert_calls import PLAYBOOKS
from tests.reliability.alertmanager_support import bot_stack, firing, webhook


async def test_an_alert_temporal_refuses_to_start_is_rejected_alone(dev_env, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(payload, "ALERT_MAX", 8 << 20)
    async with bot_stack(dev_env.client, tmp_path, PLAYBOOKS, check_5xx=False,
                         alertmanager_max_body=1 << 20,  # the production default
                         opa_timeout=15) as stack:  # (its start question holds 3.8 MB: seconds under load)
        poison = firing(uuid.uuid4().hex[:16], "Hold", instance="a")
        good = firing(uuid.uuid4().hex[:16], "Hold", instance="b")
        text = json.dumps(webhook([poison, good]))
        # A field of its own: 4 bytes a number in the body, 18 in the run input (1000000000000000.0),
        # so the run input passes Temporal's 2 MB blob limit while the body is under 1 MiB.
        text = text.replace(f'"fingerprint": "{poison["fingerprint"]}"',
                            f'"fingerprint": "{poison["fingerprint"]}", "values": [{",".join(["1e15"] * 200_000)}]', 1)
        assert len(text) < 1 << 20
        for _ in range(2):  # the sender's retry gets the same answer
            answer = await stack.deliver(text.encode(), headers={"content-type": "application/json"})
            assert answer.status_code == 200, answer.text[:300]
            outcomes = {o["fingerprint"]: o for o in answer.json()}
            assert outcomes[poison["fingerprint"]]["outcome"] == "rejected"
            assert "Temporal refused the start" in outcomes[poison["fingerprint"]]["reason"]
            assert outcomes[good["fingerprint"]]["outcome"] in ("started", "attached")
        recorded = [e.details["outcome"] for e in stack.audit.events() if e.kind == EventKind.alert_outcome
                    and e.details.get("fingerprint") == poison["fingerprint"]]
        assert recorded == ["rejected"]  # on the record, once (a delivery again records nothing twice)
