"""The rollout judgement (`kubectl rollout status`), case by case."""

from __future__ import annotations

import pytest

from bot.actions.k8s_rollout import RolloutFailed, rollout_progress


def deployment(generation: int = 2, desired: int = 3, **status: object) -> dict:
    return {"metadata": {"name": "web", "generation": generation}, "spec": {"replicas": desired},
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3, **status}}


@pytest.mark.parametrize(
    ("obj", "done", "says"),
    [
        (deployment(), True, "successfully rolled out"),
        (deployment(generation=3), False, "spec update to be observed"),
        (deployment(updatedReplicas=1), False, "1 of 3 new replicas updated"),
        (deployment(replicas=4), False, "1 old replicas pending termination"),
        (deployment(availableReplicas=2), False, "2 of 3 updated replicas available"),
        (deployment(desired=0, replicas=0, updatedReplicas=0, availableReplicas=0), True, "rolled out"),
    ],
)
def test_deployment(obj: dict, done: bool, says: str) -> None:
    progress = rollout_progress("deployment", obj)
    assert progress.done is done and says in progress.message


def test_a_deployment_past_its_deadline_failed() -> None:
    obj = deployment(conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}])
    with pytest.raises(RolloutFailed):
        rollout_progress("deployment", obj)


def test_statefulset_and_daemonset() -> None:
    sts = {"metadata": {"name": "db", "generation": 1}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 1,
                      "currentRevision": "db-1", "updateRevision": "db-2"}}
    assert not rollout_progress("statefulset", sts).done
    sts["status"]["currentRevision"] = "db-2"
    assert rollout_progress("statefulset", sts).done
    sts["status"]["observedGeneration"] = 0
    assert not rollout_progress("statefulset", sts).done
    ds = {"metadata": {"name": "agent", "generation": 1},
          "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                     "numberAvailable": 2}}
    assert "2 of 3" in rollout_progress("daemonset", ds).message
    ds["status"]["numberAvailable"] = 3
    assert rollout_progress("daemonset", ds).done
