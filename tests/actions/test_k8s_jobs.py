"""k8s.run_job against the fake Kubernetes API (tests/actions/fake_k8s.py)."""

from __future__ import annotations

import pytest

from bot.actions.base import ACTION_FAILED, ACTION_REFUSED, INVALID_PARAMS
from bot.actions.k8s_client import KubeClients
from bot.actions.k8s_jobs import KubernetesJobActions, job_name
from tests.actions.conftest import KEY
from tests.actions.fake_k8s import FakeKube

DIAG = "registry.internal/diag/netcheck:1.2"
PARAMS = {"namespace": "shop", "image": DIAG, "command": ["netcheck", "--all"], "interval": "5ms"}


@pytest.fixture
def jobs(kube_clients: KubeClients) -> list[object]:
    return [KubernetesJobActions(kube_clients, ["registry.internal/diag/*"])]


async def test_run_job_waits_keeps_the_logs_and_deletes_the_job_and_its_pods(
    run_action, fake_kube: FakeKube, jobs
) -> None:
    fake_kube.job_outcomes[DIAG] = (True, "".join(f"line {i}\n" for i in range(1000)))
    result = await run_action("k8s.run_job", {**PARAMS, "log_bytes": 64}, jobs)

    out = result.output
    assert out["succeeded"] is True and out["reused"] is False and out["job"] == job_name("playbook-bot", KEY)
    assert out["logs"].endswith("line 999\n") and len(out["logs"].encode()) <= 64
    assert len(out["pods"]) == 1
    assert fake_kube.items("batch/v1", "jobs") == []
    assert fake_kube.items("v1", "pods") == []  # deleted with propagationPolicy Background, not orphaned
    created = next(r for r in fake_kube.requests if r[0] == "POST")
    assert created[1] == "/apis/batch/v1/namespaces/shop/jobs"


async def test_a_failed_job_fails_the_step_for_good_with_its_logs(run_failing, fake_kube: FakeKube, jobs) -> None:
    fake_kube.job_outcomes[DIAG] = (False, "cannot reach db:5432\n")
    error = await run_failing("k8s.run_job", PARAMS, jobs)
    assert error.type == ACTION_FAILED and error.non_retryable
    assert error.details[0]["output"]["logs"] == "cannot reach db:5432\n"
    assert fake_kube.items("batch/v1", "jobs") == []


async def test_a_retry_after_a_timeout_that_created_the_job_finds_it(
    run_action, run_failing, fake_kube: FakeKube, jobs
) -> None:
    held = fake_kube.hold("POST", "/jobs")  # the Job is created; the answer never arrives
    await run_failing("k8s.run_job", PARAMS, jobs)
    assert len(fake_kube.items("batch/v1", "jobs")) == 1
    held.release.set()

    result = await run_action("k8s.run_job", PARAMS, jobs)
    assert result.output["reused"] is True and result.output["succeeded"] is True
    assert len(result.output["pods"]) == 1  # one Job ran, once


async def test_a_job_of_that_name_that_is_not_ours_is_left_alone(run_failing, fake_kube: FakeKube, jobs) -> None:
    name = job_name("playbook-bot", KEY)
    fake_kube._create(("batch/v1", "jobs", "shop", name), {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "shop"},
        "spec": {"template": {"metadata": {}, "spec": {"restartPolicy": "Never",
                                                       "containers": [{"name": "x", "image": "x"}]}}}})
    error = await run_failing("k8s.run_job", PARAMS, jobs)
    assert error.non_retryable and "did not create" in error.message
    assert len(fake_kube.items("batch/v1", "jobs")) == 1


async def test_images_outside_the_allow_list_are_refused(run_failing, fake_kube: FakeKube, kube_clients) -> None:
    allow_some = [KubernetesJobActions(kube_clients, ["registry.internal/diag/*"])]
    for image in ("docker.io/attacker/miner:latest", "registry.internal/diag",
                  "registry.internal/diag/anything/below:1"):  # `*` stays within one path segment
        error = await run_failing("k8s.run_job", {**PARAMS, "image": image}, allow_some)
        assert error.type == ACTION_REFUSED and "PLAYBOOK_BOT_K8S_JOB_IMAGES" in error.message
    error = await run_failing("k8s.run_job", PARAMS, [KubernetesJobActions(kube_clients, [])])
    assert error.type == ACTION_REFUSED
    assert fake_kube.requests == []


async def test_bad_job_params_are_refused(run_failing, fake_kube: FakeKube, jobs) -> None:
    for bad in ({"image": "a b"}, {"env": {"BAD-NAME": "x"}}, {"namespace": "../kube-system"},
                {"log_bytes": 10**9}, {"command": []}, {"deadline": "0s"}, {"privileged": True}):
        error = await run_failing("k8s.run_job", {**PARAMS, **bad}, jobs)
        assert error.type == INVALID_PARAMS, bad
    assert fake_kube.requests == []


JOB_RUN = """
name: k8s-job
steps:
  - id: fix
    action: k8s.run_job
    with: {namespace: shop, image: registry.internal/diag/fixer:1, command: [fix], interval: 30s}
    timeout: 5m
    retry: {max_attempts: 1}
"""


async def test_a_run_cancelled_while_its_job_runs_deletes_the_job(
    dev_env, fake_kube: FakeKube, kube_clients: KubeClients
) -> None:
    """Red team: the activity stopped, the run ended `cancelled`, and the Job went on acting. (The
    fake's Job completes on the second read, 30 s in: it is still running when the run is cancelled.)"""
    import asyncio

    from bot.actions.activities import build_activities
    from bot.actions.secrets import SecretStore
    from tests.engine.support import Recorder, cancel, playbook, run_input, start, worker

    acts = build_activities([KubernetesJobActions(kube_clients, ["registry.internal/diag/*"])], SecretStore(environ={}))
    async with worker(dev_env.client, Recorder(), acts) as w:
        handle = await start(dev_env.client, w, run_input(playbook(JOB_RUN)))
        for _ in range(100):
            if fake_kube.items("batch/v1", "jobs"):
                break
            await asyncio.sleep(0.1)
        assert fake_kube.items("batch/v1", "jobs")
        await cancel(handle)
        status = await handle.result()
    assert status.step("fix").state == "cancelled"
    assert fake_kube.items("batch/v1", "jobs") == []


async def test_a_job_without_a_deadline_gets_the_steps_own_budget(
    run_action, fake_kube: FakeKube, jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: with no `deadline`, a Job whose run was terminated, or whose step's last attempt timed
    out, went on acting. Its deadline is now what the step still waits for it: 5 min x 2 attempts left."""
    import dataclasses
    from datetime import timedelta

    from temporalio.common import RetryPolicy
    from temporalio.testing import ActivityEnvironment

    made: list[dict] = []
    manifest = KubernetesJobActions._manifest
    monkeypatch.setattr(KubernetesJobActions, "_manifest", lambda self, *a: made.append(manifest(self, *a)) or made[-1])
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, start_to_close_timeout=timedelta(minutes=5),
                                   retry_policy=RetryPolicy(maximum_attempts=3))
    await run_action("k8s.run_job", PARAMS, jobs, env=env)
    await run_action("k8s.run_job", {**PARAMS, "deadline": "90s"}, jobs, key="other", env=env)
    assert [m["spec"].get("activeDeadlineSeconds") for m in made] == [2 * 300 + 60, 90]
