"""Sagas over the real k8s.* activities: a PlaybookRun on the Temporal dev server whose later step
fails undoes a scale and a cordon against the fake Kubernetes API (tests/actions/fake_k8s.py)."""

from __future__ import annotations

import asyncio

from bot.actions.activities import build_activities
from bot.actions.k8s import KubernetesActions
from bot.actions.k8s_client import KubeClients
from bot.actions.secrets import SecretStore
from tests.actions.fake_k8s import FakeKube
from tests.engine.support import Recorder, cancel, playbook, run_input, start, worker

SAGA = """
name: k8s-saga
steps:
  - id: scale
    action: k8s.scale
    with: {namespace: shop, name: web, replicas: 6}
    retry: {max_attempts: 3, initial_interval: 100ms}
    compensate:
      action: k8s.scale
      with: {namespace: shop, name: web, replicas: "{{ steps.scale.output.previous }}"}
  - id: cordon
    action: k8s.cordon
    with: {node: node-1}
    compensate:
      action: k8s.uncordon
      with: {node: node-1, was_cordoned: "{{ steps.cordon.output.already_cordoned }}"}
  - id: cordon-again
    action: k8s.cordon
    with: {node: node-2}
    compensate:
      action: k8s.uncordon
      with: {node: node-2, was_cordoned: "{{ steps['cordon-again'].output.already_cordoned }}"}
  - id: boom
    action: t.fail
"""


def k8s_activities(clients: KubeClients) -> list[object]:
    return build_activities([KubernetesActions(clients)], SecretStore(environ={}))


async def test_a_failed_run_scales_back_and_uncordons_what_it_cordoned(
    dev_env, fake_kube: FakeKube, kube_clients: KubeClients
) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    fake_kube.add_node("node-1")
    fake_kube.add_node("node-2", unschedulable=True)  # cordoned by someone else before the run
    rec = Recorder()
    async with worker(dev_env.client, rec, k8s_activities(kube_clients)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(SAGA)))
        status = await handle.result()

    assert status.state == "compensated"
    assert {s.id: s.state for s in status.steps} == {
        "scale": "compensated", "cordon": "compensated", "cordon-again": "compensated", "boom": "failed"}
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3
    assert "unschedulable" not in fake_kube.get("v1", "nodes", None, "node-1")["spec"]
    assert fake_kube.get("v1", "nodes", None, "node-2")["spec"]["unschedulable"] is True  # left as found


async def test_a_scale_retried_after_a_timeout_is_still_undone_to_the_original_count(
    dev_env, fake_kube: FakeKube, kube_clients: KubeClients
) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    fake_kube.add_node("node-1")
    fake_kube.add_node("node-2")
    held = fake_kube.hold("PUT", "/deployments/web/scale")  # attempt 1 scales to 6 and never hears back
    rec = Recorder()
    try:
        async with worker(dev_env.client, rec, k8s_activities(kube_clients)) as w:
            handle = await start(dev_env.client, w, run_input(playbook(SAGA)))
            status = await handle.result()
    finally:
        held.release.set()

    scale = status.step("scale")
    assert scale.attempts == 2 and scale.state == "compensated"
    assert fake_kube.writes("PUT", "/deployments/web/scale") == 2  # attempt 1's scale, then the undo's
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3


# --- a step that acted, then failed or was cancelled: its undo reads what the step recorded ----------

RECORDED_UNDOS = """
name: k8s-recorded-undos
steps:
  - id: cordon
    action: k8s.cordon
    with: {node: node-1}
    retry: {max_attempts: 1}
    compensate:
      action: k8s.uncordon
      with: {node: node-1}
  - id: scale
    action: k8s.scale
    with: {namespace: shop, name: web, replicas: 0, wait: true, interval: 50ms}
    timeout: 2s
    retry: {max_attempts: 1}
    compensate:
      action: k8s.scale
      with: {namespace: shop, name: web}
"""


async def test_a_scale_whose_wait_timed_out_is_scaled_back(dev_env, fake_kube: FakeKube, kube_clients: KubeClients) -> None:
    """The scale acted, then its rollout never completed: the step failed with no output, so an undo
    reading `steps.scale.output.previous` was skipped ("nothing to undo") and the run still said
    `compensated` with the deployment left at 0 (red team). The undo without a count reads the step's
    record on the deployment."""
    fake_kube.add_deployment("shop", "web", replicas=3)
    fake_kube.add_node("node-1")
    fake_kube.stalled.add("web")
    async with worker(dev_env.client, Recorder(), k8s_activities(kube_clients)) as w:
        status = await (await start(dev_env.client, w, run_input(playbook(RECORDED_UNDOS)))).result()

    assert status.state == "compensated"
    assert {c.step: c.state for c in status.compensations} == {"scale": "succeeded", "cordon": "succeeded"}
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3
    assert "unschedulable" not in fake_kube.get("v1", "nodes", None, "node-1")["spec"]


async def test_a_scale_cancelled_while_it_waits_is_scaled_back(dev_env, fake_kube: FakeKube, kube_clients: KubeClients) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    fake_kube.add_node("node-1")
    fake_kube.stalled.add("web")
    async with worker(dev_env.client, Recorder(), k8s_activities(kube_clients)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(RECORDED_UNDOS.replace("timeout: 2s", "timeout: 60s"))))
        for _ in range(100):
            if fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 0:
                break
            await asyncio.sleep(0.1)
        await cancel(handle)
        status = await handle.result()

    assert status.step("scale").state != "succeeded"
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3
    assert "unschedulable" not in fake_kube.get("v1", "nodes", None, "node-1")["spec"]


async def test_a_cordon_whose_answer_was_lost_is_uncordoned(dev_env, fake_kube: FakeKube, kube_clients: KubeClients) -> None:
    """The PATCH landed and its answer never came: the step failed, the node stayed cordoned."""
    fake_kube.add_deployment("shop", "web", replicas=3)
    fake_kube.add_node("node-1")
    held = fake_kube.hold("PATCH", "/nodes/node-1")
    try:
        async with worker(dev_env.client, Recorder(), k8s_activities(kube_clients)) as w:
            status = await (await start(dev_env.client, w, run_input(playbook(RECORDED_UNDOS)))).result()
    finally:
        held.release.set()

    assert status.step("cordon").state == "compensated"
    assert "unschedulable" not in fake_kube.get("v1", "nodes", None, "node-1")["spec"]
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3  # never scaled


async def test_an_undo_without_a_record_changes_nothing(dev_env, fake_kube: FakeKube, kube_clients: KubeClients) -> None:
    """A node cordoned before the run (its cordon records nothing) stays cordoned; a scale that failed
    before it wrote anything is not "undone" to some count."""
    fake_kube.add_node("node-1", unschedulable=True)
    fake_kube.add_deployment("shop", "web", replicas=3)
    fail_first = RECORDED_UNDOS.replace("replicas: 0, wait: true", "replicas: 100000, wait: true")  # refused params
    async with worker(dev_env.client, Recorder(), k8s_activities(kube_clients)) as w:
        await (await start(dev_env.client, w, run_input(playbook(fail_first)))).result()

    assert fake_kube.get("v1", "nodes", None, "node-1")["spec"]["unschedulable"] is True
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3
    assert fake_kube.writes("PUT") == 0


DELETE_POD = """
name: k8s-delete-pod
steps:
  - id: bounce
    action: k8s.delete_pod
    with: {namespace: shop, name: db-0, grace_period_seconds: 0}
    retry: {max_attempts: 2, initial_interval: 100ms}
"""


async def test_a_retried_delete_pod_leaves_the_pod_its_controller_made_since(
    dev_env, fake_kube: FakeKube, kube_clients: KubeClients
) -> None:
    """Red team: the first attempt deleted db-0 and never heard so; the StatefulSet made db-0 again,
    and the retry deleted that one too. The retry now deletes only the pod the step found (its uid,
    carried from attempt to attempt by Temporal's heartbeat details)."""
    fake_kube.add_pod("shop", "db-0")
    held = fake_kube.hold("DELETE", "/pods/db-0")  # applied; the answer never comes (the request times out)
    replacement: dict = {}

    async def controller() -> None:  # the StatefulSet: a new db-0 once the old one is gone
        while not fake_kube.writes("DELETE", "/pods/db-0"):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        replacement.update(fake_kube.add_pod("shop", "db-0"))

    try:
        async with worker(dev_env.client, Recorder(), k8s_activities(kube_clients)) as w:
            making = asyncio.create_task(controller())
            status = await (await start(dev_env.client, w, run_input(playbook(DELETE_POD)))).result()
            await making
    finally:
        held.release.set()

    bounce = status.step("bounce")
    assert (bounce.state, bounce.attempts) == ("succeeded", 2)
    assert (bounce.output["result"], bounce.output["by_earlier_attempt"]) == ("deleted", True)
    assert [p["metadata"]["uid"] for p in fake_kube.items("v1", "pods")] == [replacement["metadata"]["uid"]]


TWO_SCALES = """
name: k8s-two-scales
steps:
  - id: down
    action: k8s.scale
    with: {namespace: shop, name: web, replicas: 0}
    compensate:
      action: k8s.scale
      with: {namespace: shop, name: web}
  - id: up
    action: k8s.scale
    with: {namespace: shop, name: web, replicas: 5}
    compensate:
      action: k8s.scale
      with: {namespace: shop, name: web}
  - id: boom
    action: t.fail
"""


async def test_two_scales_of_one_deployment_are_both_undone(dev_env, fake_kube: FakeKube, kube_clients: KubeClients) -> None:
    """Review: one record per object, overwritten by the second scale, left the first scale's undo
    nothing to read ("it scaled nothing"), and the run said compensated at 0 replicas."""
    fake_kube.add_deployment("shop", "web", replicas=3)
    async with worker(dev_env.client, Recorder(), k8s_activities(kube_clients)) as w:
        status = await (await start(dev_env.client, w, run_input(playbook(TWO_SCALES)))).result()
    assert status.state == "compensated"
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3


UNDO = "    compensate:\n      action: k8s.scale\n      with: {namespace: shop, name: web}\n"


def scales(counts: list[int]) -> str:
    steps = "".join(f"  - id: s{i}\n    action: k8s.scale\n    with: {{namespace: shop, name: web, replicas: {n}}}\n" + UNDO
                    for i, n in enumerate(counts))
    return "name: k8s-many-scales\nsteps:\n" + steps + "  - id: boom\n    action: t.fail\n"


async def test_five_scales_of_one_deployment_are_all_undone(dev_env, fake_kube: FakeKube, kube_clients: KubeClients) -> None:
    """SCALE_RECORDS_KEPT is 8, but each undo writes an entry of its own (its own key) into the same
    list: after 5 scales, the undos of s4..s1 push s0's entry out before s0's undo reads it."""
    fake_kube.add_deployment("shop", "web", replicas=3)
    async with worker(dev_env.client, Recorder(), k8s_activities(kube_clients)) as w:
        status = await (await start(dev_env.client, w, run_input(playbook(scales([2, 4, 6, 8, 10]))))).result()
    assert status.state == "compensated"
    print([(c.step, c.state) for c in status.compensations])
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3
