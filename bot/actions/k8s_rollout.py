"""When is a rollout done? The judgement `kubectl rollout status` makes, per workload kind.

Kept apart from the actions so it reads as the rule it is: a rollout is complete once the
controller has observed the latest spec and every replica runs the new template and is
available, with no old replica left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class RolloutFailed(Exception):
    """The controller gave up (a Deployment past its progressDeadlineSeconds): waiting longer will not help."""


@dataclass(frozen=True)
class Progress:
    done: bool
    message: str


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def rollout_progress(kind: str, obj: dict[str, Any]) -> Progress:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = meta.get("name", "?")
    generation, observed = _int(meta.get("generation")), _int(status.get("observedGeneration"))
    if observed < generation or (kind == "statefulset" and observed == 0):
        return Progress(False, f"waiting for the {kind} spec update to be observed")
    if kind == "deployment":
        return _deployment(name, spec, status)
    if kind == "statefulset":
        return _statefulset(name, spec, status)
    if kind == "daemonset":
        return _daemonset(name, status)
    raise ValueError(f"no rollout for kind {kind!r}")


def _deployment(name: str, spec: dict[str, Any], status: dict[str, Any]) -> Progress:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            raise RolloutFailed(f"deployment {name!r} exceeded its progress deadline")
    desired = _int(spec.get("replicas", 1))
    updated, total, available = (_int(status.get(k)) for k in ("updatedReplicas", "replicas", "availableReplicas"))
    if updated < desired:
        return Progress(False, f"{updated} of {desired} new replicas updated")
    if total > updated:
        return Progress(False, f"{total - updated} old replicas pending termination")
    if available < updated:
        return Progress(False, f"{available} of {updated} updated replicas available")
    return Progress(True, f"deployment {name!r} successfully rolled out")


def _statefulset(name: str, spec: dict[str, Any], status: dict[str, Any]) -> Progress:
    desired = _int(spec.get("replicas", 1))
    ready = _int(status.get("readyReplicas"))
    if ready < desired:
        return Progress(False, f"waiting for {desired - ready} pods to be ready")
    strategy = spec.get("updateStrategy") or {}
    partition = _int((strategy.get("rollingUpdate") or {}).get("partition"))
    updated = _int(status.get("updatedReplicas"))
    if strategy.get("rollingUpdate") is not None:
        if updated < desired - partition:
            return Progress(False, f"partitioned roll out: {updated} of {desired - partition} new pods updated")
        return Progress(True, f"statefulset {name!r}: partitioned roll out complete")
    if status.get("updateRevision") != status.get("currentRevision"):
        return Progress(False, f"{updated} pods at revision {status.get('updateRevision')}")
    return Progress(True, f"statefulset {name!r} rolling update complete")


def _daemonset(name: str, status: dict[str, Any]) -> Progress:
    desired = _int(status.get("desiredNumberScheduled"))
    updated, available = _int(status.get("updatedNumberScheduled")), _int(status.get("numberAvailable"))
    if updated < desired:
        return Progress(False, f"{updated} of {desired} new pods updated")
    if available < desired:
        return Progress(False, f"{available} of {desired} updated pods available")
    return Progress(True, f"daemon set {name!r} successfully rolled out")
