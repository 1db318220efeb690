"""The sticky-queue redirect, end to end (docs/security.md, "A task sent to the bot's sticky queue").

Mallory can reach Temporal and holds no key. She starts a PlaybookRun on her own queue, with a
playbook the bot never catalogued, and answers its first workflow task herself over raw gRPC with
what the bot's code would have recorded: the engine's patch marker, its search attributes and an
admission that allowed the run, all copied from a genuine run's history (any history in the
namespace is readable), with the SDK metadata of that task. As the sticky queue for her next
task she names the bot's worker's, read from the same history. The server sends her next task to
the bot's worker. Its code replays her history, takes the admission as given, and runs her
`core.log` step there, as a local activity.

At f7bf966 that step wrote her run into the audit trail (run_started, step_started, step_succeeded,
run_finished) for a run that no front door started and no admission allowed. Since 5d264c5 every
local activity that acts passes the caller check. The check asks Temporal, which names her queue,
not the worker's, and refuses it. Her run's records, refused the same way, are dropped, so her
run ends instead of keeping the bot's worker retrying them as if the store were down.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

from google.protobuf.duration_pb2 import Duration
from temporalio.api.command.v1 import Command
from temporalio.api.enums.v1 import CommandType, TaskQueueKind
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import StickyExecutionAttributes, TaskQueue
from temporalio.api.workflowservice.v1 import PollWorkflowTaskQueueRequest, RespondWorkflowTaskCompletedRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from bot.audit.store import SqliteAuditStore, default_path
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.settings import Settings
from tests.conftest import ROOT
from tests.engine.support import catalog_of, playbook, run_input
from tests.waiting import eventually

GENUINE = "name: settle\nsteps: [{id: settle, action: core.sleep, with: {duration: 1h}}]\n"
FORGED = "name: forged\nsteps: [{id: note, action: core.log, with: {message: 'alice approved the wipe'}}]\n"
LOCAL_ACTIVITY = "core_local_activity"


async def events(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return list((await handle.fetch_history()).events)


def local_activity(event: HistoryEvent) -> dict[str, Any] | None:
    """A local activity's marker data (its type among it), or None for any other event."""
    marker = event.marker_recorded_event_attributes
    if not event.HasField("marker_recorded_event_attributes") or marker.marker_name != LOCAL_ACTIVITY:
        return None
    return json.loads(marker.details["data"].payloads[0].data)


def first_task_commands(genuine: list[HistoryEvent]) -> list[Command]:
    """What the bot's code recorded in its first workflow task, up to its admission's marker."""
    commands = []
    first = next(i for i, e in enumerate(genuine) if e.HasField("workflow_task_completed_event_attributes"))
    for event in genuine[first + 1:]:
        if event.HasField("upsert_workflow_search_attributes_event_attributes"):
            command = Command(command_type=CommandType.COMMAND_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES)
            command.upsert_workflow_search_attributes_command_attributes.search_attributes.CopyFrom(
                event.upsert_workflow_search_attributes_event_attributes.search_attributes)
        elif event.HasField("marker_recorded_event_attributes"):
            marker = event.marker_recorded_event_attributes
            command = Command(command_type=CommandType.COMMAND_TYPE_RECORD_MARKER)
            command.record_marker_command_attributes.marker_name = marker.marker_name
            for key, payloads in marker.details.items():
                command.record_marker_command_attributes.details[key].CopyFrom(payloads)
        else:
            break
        commands.append(command)
        if (local_activity(event) or {}).get("activity_type") == "run.admit":
            return commands
    raise AssertionError("the genuine run's first task recorded no admission")


async def test_a_forged_history_sent_to_the_bots_sticky_queue_writes_nothing_into_the_trail(
        dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    client: Client = dev_env.client
    service, namespace = client.workflow_service, client.namespace
    queue, hers = f"bot-{uuid.uuid4().hex[:8]}", f"mallory-{uuid.uuid4().hex[:8]}"
    genuine_pb, forged_pb = playbook(GENUINE), playbook(FORGED)
    settings = Settings(data_dir=tmp_path / "data", policies_dir=ROOT / "policies")
    async with worker_deps(settings, catalog=catalog_of(genuine_pb)) as deps:
        async with make_worker(client, queue, deps.activities) as worker:
            # A genuine run, woken once: its history names the worker's sticky queue.
            genuine = await client.start_workflow(PlaybookRun.run, run_input(genuine_pb),
                                                  id=f"genuine-{uuid.uuid4().hex[:8]}", task_queue=queue)

            async def sticky() -> TaskQueue | None:
                history = await events(genuine)
                for event in history:
                    scheduled = event.workflow_task_scheduled_event_attributes
                    if event.HasField("workflow_task_scheduled_event_attributes") and \
                            scheduled.task_queue.kind == TaskQueueKind.TASK_QUEUE_KIND_STICKY:
                        return scheduled.task_queue
                if any(e.HasField("timer_started_event_attributes") for e in history):  # its first task is done
                    await genuine.signal("anything")
                return None

            bots_sticky = await eventually(sticky, what="the genuine run's task on the worker's sticky queue")
            history = await events(genuine)
            metadata = next(e.workflow_task_completed_event_attributes.sdk_metadata for e in history
                            if e.HasField("workflow_task_completed_event_attributes"))

            # Mallory's run, on her queue; she answers its first task herself.
            hers_handle = await client.start_workflow(PlaybookRun.run, run_input(forged_pb),
                                                      id=f"forged-{uuid.uuid4().hex[:8]}", task_queue=hers)
            task = await service.poll_workflow_task_queue(PollWorkflowTaskQueueRequest(
                namespace=namespace, task_queue=TaskQueue(name=hers), identity="mallory"))
            await service.respond_workflow_task_completed(RespondWorkflowTaskCompletedRequest(
                namespace=namespace, task_token=task.task_token, identity="mallory",
                commands=first_task_commands(history), sdk_metadata=metadata,
                sticky_attributes=StickyExecutionAttributes(worker_task_queue=bots_sticky,
                                                            schedule_to_start_timeout=Duration(seconds=10))))
            await hers_handle.signal("mallory-wakes-it")

            async def her_step() -> dict[str, Any] | None:
                for event in await events(hers_handle):
                    if (local_activity(event) or {}).get("activity_type") == "core.log":
                        return {"failure": event.marker_recorded_event_attributes.failure.message}
                return None

            step = await eventually(her_step, what="her core.log step run by the bot's worker")

            async def ended() -> bool:  # her refused records are dropped, not retried as if the store were down
                return (await hers_handle.describe()).status != WorkflowExecutionStatus.RUNNING

            await eventually(ended, timeout=15, what="her run over, the bot's worker no longer busy with it")
            started_by = [e.workflow_task_started_event_attributes.identity for e in await events(hers_handle)
                          if e.HasField("workflow_task_started_event_attributes")]
            for handle in (hers_handle, genuine):
                with contextlib.suppress(RPCError):  # (hers has completed if her step ran)
                    await handle.terminate("test over")
        assert worker.client.identity in started_by, "the redirect happened: the bot's worker took her task"
        assert "core.log refused" in step["failure"] and f"its tasks go to queue {hers!r}" in step["failure"]
    trail = SqliteAuditStore(default_path(settings)).events()
    assert [e for e in trail if e.run_id == hers_handle.id] == [], "nothing of her run in the trail"
