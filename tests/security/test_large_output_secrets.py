"""A large output goes to the audit trail: a secret value in it is masked there too, as in status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.testing import ActivityEnvironment

from bot.actions.activities import build_activities
from bot.actions.base import ActionContext, ActionInput, ActionParams, action
from bot.actions.secrets import SecretStore
from bot.audit.recorder import AuditWriter
from bot.audit.store import SqliteAuditStore
from bot.playbook.outputs import OutputNeeds

SECRET = "hunter2-deploy-token-value"


class LeakParams(ActionParams):
    pass


class Leaky:
    @action("test.leak_large_output", LeakParams)
    async def leak(self, params: LeakParams, ctx: ActionContext) -> dict[str, Any]:
        """A command that echoes a token among a lot of output (a debug dump, a verbose CLI)."""
        return {"stdout": "x" * 40_000 + f" token={SECRET} ", "json": {"token": SECRET, "id": "r1"}}


async def test_a_secret_in_a_large_output_is_masked_in_the_trail_and_in_state(tmp_path: Path):
    secrets = SecretStore(environ={"PLAYBOOK_BOT_SECRET_DEPLOY_TOKEN": SECRET})
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        (run,) = build_activities([Leaky()], secrets, AuditWriter(store))
        result = await ActivityEnvironment().run(run, ActionInput(
            run_id="run-1", step_id="dump", playbook="p", action="test.leak_large_output", idempotency_key="run-1:dump",
            keep=OutputNeeds(paths=[["json", "token"]]),
        ))
        assert result.stored is not None
        stored = store.get_event(result.stored.event_id)
        assert stored is not None
        assert SECRET not in stored.details_json()
        assert SECRET not in result.model_dump_json()
        assert result.output["json"]["token"] != SECRET  # the kept field is the masked one
