"""k8s.* workload, pod and node actions against the fake Kubernetes API (tests/actions/fake_k8s.py).

The actions find the fake the way a worker finds a cluster: through a kubeconfig file (the
`kubeconfig` fixture writes one pointing at it, with a bearer token the fake checks).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.actions.base import ACTION_FAILED, ACTION_REFUSED, INVALID_PARAMS
from bot.actions.k8s import (
    CORDON_RECORD,
    RESTARTED_AT,
    REVISION,
    SCALE_RECORD,
    KubernetesActions,
)
from bot.actions.k8s_client import KubeClients
from tests.actions.fake_k8s import FakeKube

DEPLOYMENTS = ("apps/v1", "deployments")
FAST = {"interval": "5ms"}


@pytest.fixture
def k8s(kube_clients: KubeClients) -> list[object]:
    return [KubernetesActions(kube_clients)]


def deployment(fake: FakeKube, name: str = "web") -> dict:
    return fake.get(*DEPLOYMENTS, "shop", name)


# --- rollout restart ---------------------------------------------------------------------------


async def test_rollout_restart_patches_the_template_as_kubectl_does_and_waits_for_the_rollout(
    run_action, fake_kube: FakeKube, k8s
) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    result = await run_action("k8s.rollout_restart", {"namespace": "shop", "name": "web", **FAST}, k8s)

    out = result.output
    assert out["repeated"] is False and "successfully rolled out" in out["rollout"]
    after = deployment(fake_kube)
    assert after["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] == out["restarted_at"]
    status = after["status"]
    assert status["observedGeneration"] == after["metadata"]["generation"] == 2
    assert status["updatedReplicas"] == status["availableReplicas"] == status["replicas"] == 3
    patches = [r for r in fake_kube.requests if r[0] == "PATCH"]
    assert [ctype for _, _, ctype in patches] == ["application/strategic-merge-patch+json"]
    assert fake_kube.writes("GET", "/deployments/web") > 3  # it waited through the rollout's progress


async def test_a_retried_restart_after_a_timeout_that_reached_the_api_does_not_restart_again(
    run_action, run_failing, fake_kube: FakeKube, k8s
) -> None:
    fake_kube.add_deployment("shop", "web", replicas=2)
    held = fake_kube.hold("PATCH", "/deployments/web")  # the patch is applied, its answer never comes
    error = await run_failing("k8s.rollout_restart", {"namespace": "shop", "name": "web", **FAST}, k8s)
    assert error.type == ACTION_FAILED and not error.non_retryable and "TimeoutError" in error.message
    restarted = deployment(fake_kube)["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    held.release.set()

    result = await run_action("k8s.rollout_restart", {"namespace": "shop", "name": "web", **FAST}, k8s)
    assert result.output["repeated"] is True
    assert result.output["restarted_at"] == restarted
    assert fake_kube.writes("PATCH") == 1
    assert deployment(fake_kube)["metadata"]["generation"] == 2  # one template change, not two


async def test_another_step_restarts_again(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web", replicas=1)
    await run_action("k8s.rollout_restart", {"namespace": "shop", "name": "web", **FAST}, k8s, key="run-1:restart")
    second = await run_action("k8s.rollout_restart", {"namespace": "shop", "name": "web", **FAST}, k8s,
                              key="run-2:restart")
    assert second.output["repeated"] is False
    assert fake_kube.writes("PATCH") == 2


async def test_a_restart_whose_object_changed_under_it_reads_again(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web", replicas=1)
    fake_kube.interfere(*DEPLOYMENTS, "shop", "web", lambda d: d["metadata"].setdefault("labels", {}).update(team="x"))
    result = await run_action("k8s.rollout_restart", {"namespace": "shop", "name": "web", "wait": False}, k8s)
    assert result.output["repeated"] is False
    assert fake_kube.writes("PATCH") == 2  # the first was refused 409: the action read again and patched again
    after = deployment(fake_kube)
    assert after["metadata"]["labels"]["team"] == "x"  # the other writer's change stands
    assert RESTARTED_AT in after["spec"]["template"]["metadata"]["annotations"]


async def test_a_rollout_past_its_progress_deadline_fails_for_good(run_failing, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web")
    fake_kube.deadline_exceeded.add("web")
    error = await run_failing("k8s.rollout_restart", {"namespace": "shop", "name": "web", **FAST}, k8s)
    assert error.non_retryable and "exceeded its progress deadline" in error.message


async def test_a_rollout_that_never_completes_waits_until_the_step_times_out(
    run_action, fake_kube: FakeKube, k8s
) -> None:
    fake_kube.add_deployment("shop", "web")
    fake_kube.stalled.add("web")
    with pytest.raises(asyncio.TimeoutError):  # the step timeout (Temporal's) ends it; here wait_for stands in
        await asyncio.wait_for(run_action("k8s.rollout_restart", {"namespace": "shop", "name": "web", **FAST}, k8s), 1)
    assert fake_kube.writes("PATCH") == 1


async def test_a_statefulset_restart_waits_for_the_update_revision(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_statefulset("shop", "db", replicas=2)
    result = await run_action("k8s.rollout_restart", {"namespace": "shop", "name": "db", "kind": "statefulset", **FAST},
                              k8s)
    status = fake_kube.get("apps/v1", "statefulsets", "shop", "db")["status"]
    assert "rolling update complete" in result.output["rollout"]
    assert status["currentRevision"] == status["updateRevision"]


async def test_a_daemonset_restart_waits_for_every_node(run_action, fake_kube: FakeKube, k8s) -> None:
    for node in ("node-1", "node-2", "node-3"):
        fake_kube.add_node(node)
    fake_kube.add_daemonset("shop", "agent")
    result = await run_action("k8s.rollout_restart", {"namespace": "shop", "name": "agent", "kind": "daemonset",
                                                      **FAST}, k8s)
    status = fake_kube.get("apps/v1", "daemonsets", "shop", "agent")["status"]
    assert "successfully rolled out" in result.output["rollout"]
    assert status["updatedNumberScheduled"] == status["numberAvailable"] == 3


async def test_a_paused_deployment_is_not_restarted(run_failing, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web")
    fake_kube.objects[("apps/v1", "deployments", "shop", "web")]["spec"]["paused"] = True
    error = await run_failing("k8s.rollout_restart", {"namespace": "shop", "name": "web"}, k8s)
    assert error.non_retryable and "paused" in error.message
    assert fake_kube.writes("PATCH") == 0


async def test_a_missing_deployment_fails_for_good(run_failing, fake_kube: FakeKube, k8s) -> None:
    error = await run_failing("k8s.rollout_restart", {"namespace": "shop", "name": "nope"}, k8s)
    assert error.non_retryable and '"nope" not found' in error.message


# --- scale ---------------------------------------------------------------------------------------


async def test_scale_uses_the_scale_subresource_and_reports_the_count_it_found(
    run_action, fake_kube: FakeKube, k8s
) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    result = await run_action("k8s.scale", {"namespace": "shop", "name": "web", "replicas": 6}, k8s)
    assert result.output | {} == {"kind": "deployment", "namespace": "shop", "name": "web", "replicas": 6,
                                  "previous": 3, "changed": True}
    assert deployment(fake_kube)["spec"]["replicas"] == 6
    assert fake_kube.writes("PUT", "/deployments/web/scale") == 1
    record = json.loads(deployment(fake_kube)["metadata"]["annotations"][SCALE_RECORD])
    assert record == [{"key": "run-42/restart", "previous": 3, "replicas": 6}]

    back = await run_action("k8s.scale", {"namespace": "shop", "name": "web", "replicas": 3, "wait": True, **FAST},
                            k8s, key="run-42/restart:undo", compensation=True)
    assert back.output["previous"] == 6 and deployment(fake_kube)["spec"]["replicas"] == 3
    assert "successfully rolled out" in back.output["rollout"]


async def test_a_retried_scale_after_a_timeout_that_reached_the_api_keeps_the_original_count(
    run_action, run_failing, fake_kube: FakeKube, k8s
) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    held = fake_kube.hold("PUT", "/deployments/web/scale")  # scaled to 6, but the answer never comes back
    error = await run_failing("k8s.scale", {"namespace": "shop", "name": "web", "replicas": 6}, k8s)
    assert error.type == ACTION_FAILED and not error.non_retryable
    assert deployment(fake_kube)["spec"]["replicas"] == 6
    held.release.set()

    result = await run_action("k8s.scale", {"namespace": "shop", "name": "web", "replicas": 6}, k8s)
    assert result.output["previous"] == 3  # not the 6 the first attempt left
    assert result.output["changed"] is False
    assert fake_kube.writes("PUT", "/scale") == 1


async def test_a_scale_whose_deployment_changed_meanwhile_reads_it_again(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    fake_kube.interfere(*DEPLOYMENTS, "shop", "web", lambda d: d["spec"].update(replicas=4))  # an autoscaler
    result = await run_action("k8s.scale", {"namespace": "shop", "name": "web", "replicas": 6}, k8s)
    assert result.output["previous"] == 4
    assert fake_kube.writes("PATCH") == 2  # 409, then again on the fresh read
    assert deployment(fake_kube)["spec"]["replicas"] == 6


async def test_a_throttled_api_is_waited_out_as_retry_after_asks(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web", replicas=2)
    fake_kube.throttle(2, retry_after="0")
    result = await run_action("k8s.scale", {"namespace": "shop", "name": "web", "replicas": 4}, k8s)
    assert result.output["previous"] == 2 and deployment(fake_kube)["spec"]["replicas"] == 4
    assert fake_kube.writes("GET", "/deployments/web") == 3  # two 429s, then the answer


async def test_bad_scale_params_are_refused_before_any_request(run_failing, fake_kube: FakeKube, k8s) -> None:
    for params in (
        {"namespace": "shop", "name": "web", "replicas": -1},
        {"namespace": "shop", "name": "../../../api/v1/nodes/x", "replicas": 1},
        {"namespace": "Shop", "name": "web", "replicas": 1},
        {"namespace": "shop", "name": "web", "replicas": 1, "kind": "daemonset"},
        {"namespace": "shop", "name": "web", "replicas": 1, "context": "a b"},
        {"namespace": "shop", "name": "web", "replicas": 1, "replicaz": 2},
    ):
        error = await run_failing("k8s.scale", params, k8s)
        assert error.type == INVALID_PARAMS, params
    assert fake_kube.requests == []


async def test_an_undo_given_no_count_restores_what_its_step_found_once(
    run_action, run_failing, fake_kube: FakeKube, k8s
) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    await run_action("k8s.scale", {"namespace": "shop", "name": "web", "replicas": 0}, k8s)
    held = fake_kube.hold("PUT", "/deployments/web/scale")  # the undo scales back, and never hears so
    undo = {"namespace": "shop", "name": "web"}
    await run_failing("k8s.scale", undo, k8s, key="run-42/restart:undo", compensation=True)
    held.release.set()
    assert deployment(fake_kube)["spec"]["replicas"] == 3
    fake_kube.interfere(*DEPLOYMENTS, "shop", "web", lambda d: d["spec"].update(replicas=5))  # an autoscaler, since

    retry = await run_action("k8s.scale", undo, k8s, key="run-42/restart:undo", compensation=True)
    assert retry.output["replicas"] == 3  # its own record's count, not the 0 it found the first time
    assert deployment(fake_kube)["spec"]["replicas"] == 3

    error = await run_failing("k8s.scale", undo, k8s)  # a step (not an undo) must say how many
    assert error.type == INVALID_PARAMS and "give replicas" in error.message


# --- rollout undo ------------------------------------------------------------------------------------


async def test_rollout_undo_goes_back_to_the_previous_revision_once(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web", replicas=2, image="app:1")
    fake_kube.set_image("shop", "web", "app:2")
    assert deployment(fake_kube)["metadata"]["annotations"][REVISION] == "2"

    result = await run_action("k8s.rollout_undo", {"namespace": "shop", "name": "web", **FAST}, k8s)
    assert result.output["rolled_back"] is True and result.output["to_revision"] == 1
    after = deployment(fake_kube)
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == "app:1"
    assert "pod-template-hash" not in after["spec"]["template"]["metadata"]["labels"]
    assert after["metadata"]["annotations"][REVISION] == "3"  # the controller re-numbered revision 1
    assert [c for m, _, c in fake_kube.requests if m == "PATCH"] == ["application/json-patch+json"]

    # A retry of the same step: rolling back again would return to app:2 (now the previous revision).
    again = await run_action("k8s.rollout_undo", {"namespace": "shop", "name": "web", **FAST}, k8s)
    assert again.output["repeated"] is True
    assert deployment(fake_kube)["spec"]["template"]["spec"]["containers"][0]["image"] == "app:1"
    assert fake_kube.writes("PATCH") == 1


async def test_rollout_undo_from_a_revision_does_nothing_once_someone_rolled_back_since(
    run_action, fake_kube: FakeKube, k8s
) -> None:
    """Red team: on-call ran `kubectl rollout undo` while the step waited for its approval; "previous"
    was then the bad release, and the step put it back. `from_revision` (the bad release's, read
    before the wait) makes it do nothing once the deployment has moved."""
    fake_kube.add_deployment("shop", "web", replicas=2, image="app:1")
    fake_kube.set_image("shop", "web", "app:2")  # the bad release: revision 2
    fake_kube.set_image("shop", "web", "app:1")  # on-call's own rollback: revision 3
    undo = {"namespace": "shop", "name": "web", "from_revision": 2, **FAST}
    result = await run_action("k8s.rollout_undo", undo, k8s)
    assert result.output["rolled_back"] is False and result.output["from_revision"] == 3
    assert "it changed since; nothing done" in result.output["skipped"]
    assert deployment(fake_kube)["spec"]["template"]["spec"]["containers"][0]["image"] == "app:1"

    fake_kube.set_image("shop", "web", "app:4")  # a new bad release, revision 4: from_revision 4 acts
    result = await run_action("k8s.rollout_undo", {**undo, "from_revision": 4}, k8s)
    assert (result.output["rolled_back"], result.output["from_revision"]) == (True, 4)
    assert deployment(fake_kube)["spec"]["template"]["spec"]["containers"][0]["image"] == "app:1"


async def test_rollout_undo_without_history_fails_for_good(run_failing, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web")
    error = await run_failing("k8s.rollout_undo", {"namespace": "shop", "name": "web"}, k8s)
    assert error.non_retryable and "no rollout history" in error.message


async def test_rollout_undo_to_a_named_revision(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web", image="app:1")
    fake_kube.set_image("shop", "web", "app:2")
    fake_kube.set_image("shop", "web", "app:3")
    await run_action("k8s.rollout_undo", {"namespace": "shop", "name": "web", "to_revision": 1, "wait": False}, k8s)
    assert deployment(fake_kube)["spec"]["template"]["spec"]["containers"][0]["image"] == "app:1"


# --- pods and nodes ----------------------------------------------------------------------------------


async def test_delete_pod_counts_a_missing_pod_as_done(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_pod("shop", "web-1")
    first = await run_action("k8s.delete_pod", {"namespace": "shop", "name": "web-1"}, k8s)
    assert first.output["result"] == "deleted" and fake_kube.items("v1", "pods") == []
    again = await run_action("k8s.delete_pod", {"namespace": "shop", "name": "web-1"}, k8s)
    assert again.output == {"namespace": "shop", "name": "web-1", "deleted": False, "result": "not_found"}


async def test_delete_pod_with_a_uid_leaves_a_recreated_pod_alone(run_action, fake_kube: FakeKube, k8s) -> None:
    old_uid = fake_kube.add_pod("shop", "db-0")["metadata"]["uid"]
    del fake_kube.objects[("v1", "pods", "shop", "db-0")]
    fake_kube.add_pod("shop", "db-0")  # the StatefulSet made a new db-0
    result = await run_action("k8s.delete_pod", {"namespace": "shop", "name": "db-0", "uid": old_uid}, k8s)
    assert result.output["result"] == "replaced"
    assert len(fake_kube.items("v1", "pods")) == 1


async def test_cordon_and_uncordon(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_node("node-1")
    cordon = await run_action("k8s.cordon", {"node": "node-1"}, k8s)
    assert cordon.output == {"node": "node-1", "cordoned": True, "already_cordoned": False}
    assert fake_kube.get("v1", "nodes", None, "node-1")["spec"]["unschedulable"] is True

    undo = await run_action("k8s.uncordon", {"node": "node-1", "was_cordoned": False}, k8s, compensation=True)
    assert undo.output["changed"] is True
    node = fake_kube.get("v1", "nodes", None, "node-1")
    assert "unschedulable" not in node["spec"]
    assert CORDON_RECORD not in node["metadata"].get("annotations", {})


async def test_undoing_a_cordon_of_an_already_cordoned_node_leaves_it_cordoned(
    run_action, fake_kube: FakeKube, k8s
) -> None:
    fake_kube.add_node("node-1", unschedulable=True)
    cordon = await run_action("k8s.cordon", {"node": "node-1"}, k8s)
    assert cordon.output["already_cordoned"] is True
    undo = await run_action("k8s.uncordon", {"node": "node-1", "was_cordoned": True}, k8s, compensation=True)
    assert undo.output["left_cordoned"] is True
    assert fake_kube.get("v1", "nodes", None, "node-1")["spec"]["unschedulable"] is True
    assert fake_kube.writes("PATCH") == 0


async def test_a_retried_cordon_still_reports_the_node_was_schedulable(
    run_action, run_failing, fake_kube: FakeKube, k8s
) -> None:
    fake_kube.add_node("node-1")
    held = fake_kube.hold("PATCH", "/nodes/node-1")
    await run_failing("k8s.cordon", {"node": "node-1"}, k8s)
    held.release.set()
    retry = await run_action("k8s.cordon", {"node": "node-1"}, k8s)
    assert retry.output["already_cordoned"] is False  # so its undo uncordons it
    assert fake_kube.writes("PATCH") == 1


async def test_a_value_planted_under_our_record_does_not_stop_a_cordon(run_action, fake_kube: FakeKube, k8s) -> None:
    """A node's kubelet may annotate its own Node: JSON nested past the parser (or any long value)
    under our record's annotation failed every attempt, so a compromised node could not be cordoned."""
    for planted in ("[" * 5000 + "]" * 5000, json.dumps({"key": "x", "pad": "y" * 5000})):
        fake_kube.reset()
        fake_kube.add_node("node-1")
        fake_kube.objects[("v1", "nodes", None, "node-1")]["metadata"]["annotations"] = {CORDON_RECORD: planted}
        cordon = await run_action("k8s.cordon", {"node": "node-1"}, k8s)
        assert cordon.output["already_cordoned"] is False
        assert fake_kube.get("v1", "nodes", None, "node-1")["spec"]["unschedulable"] is True


# --- get ---------------------------------------------------------------------------------------------


async def test_get_returns_the_object_without_managed_fields(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web", replicas=2)
    fake_kube.objects[("apps/v1", "deployments", "shop", "web")]["metadata"]["managedFields"] = [{"manager": "x"}]
    result = await run_action("k8s.get", {"kind": "Deployment", "namespace": "shop", "name": "web"}, k8s)
    assert result.output["found"] is True and result.output["truncated"] is False
    assert result.output["object"]["spec"]["replicas"] == 2
    assert "managedFields" not in result.output["object"]["metadata"]


async def test_get_bounds_a_large_object(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web")
    container = fake_kube.objects[("apps/v1", "deployments", "shop", "web")]["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": f"V{i}", "value": "x" * 100} for i in range(1000)]
    result = await run_action("k8s.get", {"kind": "Deployment", "namespace": "shop", "name": "web"}, k8s)
    assert result.output["truncated"] is True
    assert set(result.output["object"]) == {"apiVersion", "kind", "metadata", "status"}


async def test_get_a_missing_object(run_action, run_failing, fake_kube: FakeKube, k8s) -> None:
    error = await run_failing("k8s.get", {"kind": "Node", "name": "gone"}, k8s)
    assert error.non_retryable and "not found" in error.message
    result = await run_action("k8s.get", {"kind": "Node", "name": "gone", "missing_ok": True}, k8s)
    assert result.output["found"] is False


async def test_get_with_expect_waits_until_the_fields_hold(run_action, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_deployment("shop", "web", replicas=1)
    await run_action("k8s.scale", {"namespace": "shop", "name": "web", "replicas": 3}, k8s)
    result = await run_action("k8s.get", {"kind": "Deployment", "namespace": "shop", "name": "web", **FAST,
                                          "expect": {"status.availableReplicas": 3}}, k8s)
    assert result.output["object"]["status"]["availableReplicas"] == 3 and result.output["polls"] > 1


async def test_get_refuses_secrets_and_wrong_scopes(run_failing, fake_kube: FakeKube, k8s) -> None:
    for params in (
        {"kind": "Secret", "namespace": "shop", "name": "db-password"},
        {"kind": "Pod", "name": "web-1"},
        {"kind": "Node", "namespace": "shop", "name": "node-1"},
        {"kind": "Pod", "namespace": "shop", "name": "web-1", "expect": {"status..phase": "Running"}},
    ):
        error = await run_failing("k8s.get", params, k8s)
        assert error.type == INVALID_PARAMS, params
    assert fake_kube.requests == []


# --- configuration -----------------------------------------------------------------------------------


async def test_without_configuration_the_actions_refuse(run_failing, fake_kube: FakeKube) -> None:
    providers = [KubernetesActions(KubeClients(None, environ={}))]
    error = await run_failing("k8s.cordon", {"node": "node-1"}, providers)
    assert error.type == ACTION_REFUSED and "PLAYBOOK_BOT_KUBECONFIG" in error.message


async def test_an_unknown_context_is_refused(run_failing, fake_kube: FakeKube, k8s) -> None:
    error = await run_failing("k8s.cordon", {"node": "node-1", "context": "prod"}, k8s)
    assert error.type == ACTION_REFUSED and "prod" in error.message


async def test_a_context_picks_its_user(run_failing, fake_kube: FakeKube, k8s) -> None:
    fake_kube.add_node("node-1")
    error = await run_failing("k8s.cordon", {"node": "node-1", "context": "wrong-user"}, k8s)
    assert error.non_retryable and "401" in error.message  # the fake refuses that user's token
    assert fake_kube.get("v1", "nodes", None, "node-1")["spec"] == {}


async def test_in_cluster_refuses_a_context(run_failing, fake_kube: FakeKube, tmp_path: Path) -> None:
    providers = [KubernetesActions(KubeClients(None, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}))]
    error = await run_failing("k8s.cordon", {"node": "node-1", "context": "other"}, providers)
    assert error.type == ACTION_REFUSED and "needs a kubeconfig" in error.message


async def test_in_cluster_without_a_service_account_is_refused(run_failing, fake_kube: FakeKube) -> None:
    providers = [KubernetesActions(KubeClients(None, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}))]
    error = await run_failing("k8s.cordon", {"node": "node-1"}, providers)
    assert error.type == ACTION_REFUSED and "in-cluster configuration failed" in error.message


async def test_one_client_per_context_is_kept(kube_clients: KubeClients, fake_kube: FakeKube) -> None:
    first = await kube_clients.get(None)
    assert await kube_clients.get(None) is first
    assert await kube_clients.get("wrong-user") is not first
