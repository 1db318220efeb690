"""Loading Kubernetes clients: kubeconfig contexts, exec-plugin tokens that expire, Retry-After, names."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.actions.k8s_client import RETRY_AFTER_DEFAULT, RETRY_AFTER_MAX, KubeClients, _retry_after, dns_label, dns_subdomain
from tests.actions.fake_k8s import TOKEN, FakeKube

PLUGIN = """\
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
runs.write_text(str(int(runs.read_text() or 0) + 1) if runs.exists() else "1")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": sys.argv[2], "expirationTimestamp": sys.argv[3]}}))
"""


def exec_kubeconfig(tmp_path: Path, url: str, expires: str) -> tuple[Path, Path]:
    plugin, runs = tmp_path / "plugin.py", tmp_path / "runs"
    plugin.write_text(PLUGIN)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                     "args": [str(plugin), str(runs), TOKEN, expires]}}
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "eks",
              "clusters": [{"name": "c", "cluster": {"server": url}}],
              "users": [{"name": "u", "user": user}],
              "contexts": [{"name": "eks", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path, runs


async def test_an_expired_exec_token_is_fetched_again_before_a_request(tmp_path: Path, fake_kube: FakeKube) -> None:
    fake_kube.add_node("node-1")
    path, runs = exec_kubeconfig(tmp_path, fake_kube.base_url, "2000-01-01T00:00:00Z")
    clients = KubeClients(path, environ={})
    try:
        kube = await clients.get(None)
        for _ in range(2):
            assert (await kube.get("/api/v1/nodes/node-1"))["metadata"]["name"] == "node-1"
    finally:
        await clients.close()
    assert int(runs.read_text()) == 3  # at load, then before each request: the token had expired


async def test_a_valid_exec_token_is_reused(tmp_path: Path, fake_kube: FakeKube) -> None:
    fake_kube.add_node("node-1")
    path, runs = exec_kubeconfig(tmp_path, fake_kube.base_url, "2999-01-01T00:00:00Z")
    clients = KubeClients(path, environ={})
    try:
        kube = await clients.get(None)
        for _ in range(3):
            await kube.get("/api/v1/nodes/node-1")
    finally:
        await clients.close()
    assert runs.read_text() == "1"


def test_retry_after_is_read_in_seconds_and_capped() -> None:
    assert _retry_after({"Retry-After": "3"}) == 3.0
    assert _retry_after({"Retry-After": "86400"}) == RETRY_AFTER_MAX
    assert _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == RETRY_AFTER_DEFAULT
    assert _retry_after({}) == RETRY_AFTER_DEFAULT


@pytest.mark.parametrize("check", [dns_label, dns_subdomain])
def test_a_name_with_a_trailing_newline_is_not_a_kubernetes_name(check: Any) -> None:
    """Red-team finding (its class): a `$` pattern let `web\\n` pass as a name."""
    assert check("web") == "web"
    with pytest.raises(ValueError):
        check("web\n")
