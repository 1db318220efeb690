"""The fake Kubernetes API refuses what a real API server refuses: a lenient fake would hide bugs."""

from __future__ import annotations

import json

import httpx

from tests.actions.fake_k8s import TOKEN, FakeKube

AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEB = "/apis/apps/v1/namespaces/shop/deployments/web"


def test_errors_are_status_objects(fake_kube: FakeKube) -> None:
    answer = httpx.get(fake_kube.base_url + WEB, headers=AUTH)
    assert answer.status_code == 404
    assert answer.json() | {} == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": 'deployments.apps "web" not found', "reason": "NotFound", "code": 404}
    assert httpx.get(fake_kube.base_url + WEB).status_code == 401


def test_a_stale_resource_version_is_a_conflict(fake_kube: FakeKube) -> None:
    fake_kube.add_deployment("shop", "web")
    current = httpx.get(fake_kube.base_url + WEB, headers=AUTH).json()
    fake_kube.set_image("shop", "web", "app:2")
    stale = httpx.put(fake_kube.base_url + WEB, headers=AUTH, json=current)
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "spec": {"replicas": 1}}
    stale_patch = httpx.patch(fake_kube.base_url + WEB, content=json.dumps(patch),
                              headers={**AUTH, "Content-Type": "application/merge-patch+json"})
    assert stale_patch.status_code == 409
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3


def test_unsupported_patch_types_are_415(fake_kube: FakeKube) -> None:
    fake_kube.add_deployment("shop", "web")
    for ctype in ("application/json", "application/apply-patch+yaml", "text/plain"):
        answer = httpx.patch(fake_kube.base_url + WEB, content=b'{"spec": {"replicas": 1}}',
                             headers={**AUTH, "Content-Type": ctype})
        assert answer.status_code == 415, ctype
    assert fake_kube.get("apps/v1", "deployments", "shop", "web")["spec"]["replicas"] == 3


def test_the_scale_subresource_and_429(fake_kube: FakeKube) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    scale = httpx.get(fake_kube.base_url + WEB + "/scale", headers=AUTH).json()
    assert (scale["apiVersion"], scale["kind"], scale["spec"], scale["status"]["selector"]) == (
        "autoscaling/v1", "Scale", {"replicas": 3}, "app=web")
    bad = httpx.put(fake_kube.base_url + WEB + "/scale", headers=AUTH, json={**scale, "spec": {"replicas": -2}})
    assert bad.status_code == 422
    fake_kube.throttle(1, retry_after="7")
    throttled = httpx.get(fake_kube.base_url + WEB, headers=AUTH)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"


def test_a_template_change_rolls_out_over_several_reads(fake_kube: FakeKube) -> None:
    fake_kube.add_deployment("shop", "web", replicas=2)
    fake_kube.objects[("apps/v1", "deployments", "shop", "web")]["spec"]["template"]["metadata"]["labels"]["v"] = "2"
    body = fake_kube.get("apps/v1", "deployments", "shop", "web")
    fake_kube.objects[("apps/v1", "deployments", "shop", "web")]["spec"]["template"]["metadata"]["labels"].pop("v")
    assert httpx.put(fake_kube.base_url + WEB, headers=AUTH, json=body).status_code == 200
    seen = []
    for _ in range(12):
        status = httpx.get(fake_kube.base_url + WEB, headers=AUTH).json()["status"]
        seen.append((status["observedGeneration"], status["updatedReplicas"], status["availableReplicas"],
                     status["replicas"]))
    assert seen[0] == (1, 2, 2, 2)  # the first read after the write: not observed yet
    assert seen[1][0] == 2 and seen[1][1] == 0  # observed: no pod updated yet, the old ones still there
    assert seen[-1] == (2, 2, 2, 2)
    assert len(set(seen)) > 4
