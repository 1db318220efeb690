"""Sagas over the real k8s.* activities: a PlaybookRun on the Temporal dev server whose later step
fails undoes a scale and a cordon against the fake Kubernetes API (tests/actions/fake_k8s.py)."""

from __future__ import annotations

from bot.actions.activities import build_activities
from bot.actions.k8s import KubernetesActions
from bot.actions.k8s_client import KubeClients
from bot.actions.secrets import SecretStore
from tests.actions.fake_k8s import FakeKube
from tests.engine.support import Recorder, playbook, run_input, start, worker

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
