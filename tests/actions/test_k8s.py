"""k8s.* workload, pod and node actions against the fake Kubernetes API (tests/actions/fake_k8s.py)."""

from __future__ import annotations

from bot.actions.k8s import KubernetesActions


async def test_smoke(run_action, fake_kube, kube_clients) -> None:
    fake_kube.add_deployment("shop", "web", replicas=3)
    result = await run_action("k8s.rollout_restart", {"namespace": "shop", "name": "web", "interval": "10ms"},
                              [KubernetesActions(kube_clients)])
    print(result.output)
    print(fake_kube.requests)
