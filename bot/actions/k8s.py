"""The k8s.* actions on workloads, pods and nodes (jobs: bot/actions/k8s_jobs.py).

Every write is safe to retry. A step that changes an object records, in the same write, an
annotation naming the step's idempotency key and what it found; a retry that finds its own
record does not act twice and reports what the first attempt saw (the replica count before the
scale, whether the node was already cordoned). Writes carry the resourceVersion they were based
on: a 409 means someone else changed the object in between, so the step reads it again and
decides again.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Literal, TypeVar

import structlog
from pydantic import Field, field_validator, model_validator

from bot.actions.base import (
    COMPENSATION_DEFAULT,
    ActionContext,
    ActionFailed,
    ActionParams,
    InvalidParams,
    action,
    positive,
)
from bot.actions.k8s_client import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    Kube,
    KubeClients,
    KubeError,
    dns_label,
    dns_subdomain,
    path,
)
from bot.actions.k8s_rollout import RolloutFailed, rollout_progress
from bot.actions.paging import step_key
from bot.playbook.durations import Duration

log = structlog.get_logger("bot.actions.k8s")

CONFLICT_TRIES = 5  # 409s in a row (someone else keeps writing) before the attempt fails, retryably
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets
REVISION = "deployment.kubernetes.io/revision"
POD_TEMPLATE_HASH = "pod-template-hash"
# Our records on the objects we change: JSON naming the step's idempotency key.
RESTART_RECORD = "playbook-bot.io/restart"
SCALE_RECORD = "playbook-bot.io/scale"
CORDON_RECORD = "playbook-bot.io/cordon"
ROLLBACK_RECORD = "playbook-bot.io/rollback"
# Kept from the deployment, never copied from the ReplicaSet, on a rollback (as kubectl does).
ROLLBACK_KEEPS = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
})
OBJECT_MAX_BYTES = 64 * 1024  # k8s.get: a larger object keeps metadata and status only
# Our records are a few fields; anything longer under their annotation is not ours (whoever may
# annotate the object can write there: a node's own kubelet may, on its Node).
RECORD_MAX_CHARS = 4096
# A scale record keeps the entries of the object's last few scales, each under its step's key: a
# run that scales one deployment twice (down, then up) must find both steps' counts for the undos
# (review: one entry, overwritten by the second scale, left the first undo nothing to read).
SCALE_RECORDS_KEPT = 8
MAX_REPLICAS = 10_000

WORKLOAD_PLURALS = {"deployment": "deployments", "statefulset": "statefulsets", "daemonset": "daemonsets",
                    "replicaset": "replicasets"}

Workload = Literal["deployment", "statefulset", "daemonset"]
Scalable = Literal["deployment", "statefulset", "replicaset"]


class KubeParams(ActionParams):
    context: str | None = Field(
        None, min_length=1, max_length=253, pattern=r"^[\x21-\x7e]+$",
        description="kubeconfig context (default: the kubeconfig's current context, or in-cluster).",
    )


class NamespacedParams(KubeParams):
    namespace: str = Field(description="Namespace of the object.")
    name: str = Field(description="Name of the object.")

    _namespace = field_validator("namespace")(dns_label)
    _name = field_validator("name")(dns_subdomain)


class WaitParams(ActionParams):
    interval: Duration = Field("2s", validate_default=True, description="Wait between reads while waiting.")

    _positive = field_validator("interval")(positive("interval"))


class RolloutRestartParams(NamespacedParams, WaitParams):
    kind: Workload = "deployment"
    wait: bool = Field(True, description="Wait until the rollout completes (the step timeout ends the wait).")


class ScaleParams(NamespacedParams, WaitParams):
    kind: Scalable = "deployment"
    replicas: int | None = Field(
        None, ge=0, le=MAX_REPLICAS,
        description="The replica count to set. Left out in a compensation: the count its step found, "
                    "read from the step's record on the object (so a step that scaled, then failed "
                    "or was cancelled, is undone too).",
        json_schema_extra={COMPENSATION_DEFAULT: True},  # required anywhere else (bot/playbook/checks.py)
    )
    wait: bool = Field(False, description="Wait until the rollout reports every replica updated and available.")


class RolloutUndoParams(NamespacedParams, WaitParams):
    to_revision: int | None = Field(None, ge=1, description="The revision to go back to (default: the previous).")
    from_revision: int | None = Field(
        None, ge=1, description="Act only while the deployment is at this revision (the bad release, read before "
        "an approval wait): if someone rolled it back or forward since, the step does nothing.",
    )
    wait: bool = Field(True, description="Wait until the rollout completes (the step timeout ends the wait).")


class DeletePodParams(NamespacedParams):
    uid: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$",
        description="Delete only the pod with this uid (a pod recreated under the same name is left alone).",
    )
    grace_period_seconds: int | None = Field(None, ge=0, le=86_400)


class NodeParams(KubeParams):
    node: str = Field(description="Node name.")

    _node = field_validator("node")(dns_subdomain)


class UncordonParams(NodeParams):
    was_cordoned: bool | None = Field(
        None, description="True leaves the node cordoned. Left out in a compensation: read from its "
                          "cordon's record on the node (no record: that cordon changed nothing).",
    )


# kind -> (API path prefix, plural, namespaced). Secrets are not readable: outputs land in history.
READABLE: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "Pod": (("api", "v1"), "pods", True),
    "Service": (("api", "v1"), "services", True),
    "ConfigMap": (("api", "v1"), "configmaps", True),
    "PersistentVolumeClaim": (("api", "v1"), "persistentvolumeclaims", True),
    "Node": (("api", "v1"), "nodes", False),
    "Namespace": (("api", "v1"), "namespaces", False),
    "Deployment": (("apis", "apps", "v1"), "deployments", True),
    "StatefulSet": (("apis", "apps", "v1"), "statefulsets", True),
    "DaemonSet": (("apis", "apps", "v1"), "daemonsets", True),
    "ReplicaSet": (("apis", "apps", "v1"), "replicasets", True),
    "Job": (("apis", "batch", "v1"), "jobs", True),
    "CronJob": (("apis", "batch", "v1"), "cronjobs", True),
    "HorizontalPodAutoscaler": (("apis", "autoscaling", "v2"), "horizontalpodautoscalers", True),
}


class GetParams(KubeParams, WaitParams):
    kind: Literal[tuple(READABLE)] = Field(description="The object's kind (Secrets are never read).")  # type: ignore[valid-type]
    name: str
    namespace: str | None = Field(None, description="Required for namespaced kinds; none for Node, Namespace.")
    missing_ok: bool = Field(False, description="A missing object is output found: false instead of a failure.")
    expect: dict[str, Any] | None = Field(
        None, description="Wait until each dotted field equals its value, e.g. {'status.phase': 'Running'}.",
    )

    _name = field_validator("name")(dns_subdomain)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        return None if value is None else dns_label(value)

    @field_validator("expect")
    @classmethod
    def _fields(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for field in value or {}:
            if not field or any(not part for part in field.split(".")):
                raise ValueError(f"bad field path {field!r}: use dotted names like status.readyReplicas")
        return value

    @model_validator(mode="after")
    def _scope(self) -> GetParams:
        namespaced = READABLE[self.kind][2]
        if namespaced and self.namespace is None:
            raise ValueError(f"{self.kind} is namespaced: give namespace")
        if not namespaced and self.namespace is not None:
            raise ValueError(f"{self.kind} is cluster-scoped: leave namespace out")
        return self


def workload_path(kind: str, namespace: str, name: str) -> str:
    group = ("apis", "apps", "v1")
    return path(*group, "namespaces", namespace, WORKLOAD_PLURALS[kind], name)


def node_path(name: str) -> str:
    return path("api", "v1", "nodes", name)


def records(obj: dict[str, Any], annotation: str) -> list[dict[str, Any]]:
    """Our records under `annotation` (one, or a list of them), oldest first. Anything else there
    (too long to be ours, not JSON, nested past the parser) is none: a value planted there must
    not fail every attempt of the step."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(annotation)
    if not isinstance(raw, str) or len(raw) > RECORD_MAX_CHARS:
        return []
    try:
        found = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    entries = found if isinstance(found, list) else [found]
    return [entry for entry in entries if isinstance(entry, dict)]


def record_of(obj: dict[str, Any], annotation: str, key: str) -> dict[str, Any] | None:
    """Our record under `annotation` that this step (its idempotency key) wrote, else None."""
    return next((entry for entry in reversed(records(obj, annotation)) if entry.get("key") == key), None)


def with_record(obj: dict[str, Any], annotation: str, entry: dict[str, Any], kept: int,
                replaces: str | None = None) -> str:
    """The annotation's value with `entry` added in place of those of its key (and of `replaces`: an
    undo takes its step's place, so undos never push out the records other undos need), the last
    `kept` entries, the oldest dropped first until it fits in RECORD_MAX_CHARS."""
    gone = {entry.get("key"), replaces}
    entries = [*(r for r in records(obj, annotation) if r.get("key") not in gone), entry][-kept:]
    while len(entries) > 1 and len(json.dumps(entries)) > RECORD_MAX_CHARS:
        entries.pop(0)
    return json.dumps(entries)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


T = TypeVar("T")


async def on_conflict_reread(name: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt` (read, decide, write with the resourceVersion read) again after a 409."""
    for tries in range(1, CONFLICT_TRIES + 1):
        try:
            return await attempt()
        except KubeError as exc:
            if exc.status != 409 or tries == CONFLICT_TRIES:
                raise exc.failed(name) from None
            log.info("object changed under us (409); reading it again", action=name, tries=tries)
    raise AssertionError("unreachable")


async def read(kube: Kube, name: str, url_path: str) -> dict[str, Any]:
    """GET an object the step needs: a 404 fails the step for good (retrying will not create it)."""
    try:
        return await kube.get(url_path)
    except KubeError as exc:
        if exc.status == 404:
            raise ActionFailed(f"{name}: {exc}", retryable=False) from None
        raise exc.failed(name) from None


async def wait_for_rollout(kube: Kube, name: str, kind: str, url_path: str, interval: float) -> str:
    """Poll until the rollout completes; the step's timeout ends a rollout that never does."""
    while True:
        obj = await read(kube, name, url_path)
        try:
            progress = rollout_progress(kind, obj)
        except RolloutFailed as exc:
            raise ActionFailed(f"{name}: {exc}", retryable=False) from None
        if progress.done:
            return progress.message
        log.info("rollout in progress", action=name, progress=progress.message)
        await asyncio.sleep(interval)


def _field(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def bounded(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The object without managedFields and last-applied copies; past OBJECT_MAX_BYTES, metadata and status only."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != "kubectl.kubernetes.io/last-applied-configuration"}
    if annotations or "annotations" in meta:
        meta["annotations"] = annotations
    slim = {**obj, "metadata": meta}
    if len(json.dumps(slim, separators=(",", ":"))) <= OBJECT_MAX_BYTES:
        return slim, False
    keep = {k: slim[k] for k in ("apiVersion", "kind", "metadata", "status") if k in slim}
    return keep, True


class KubernetesActions:
    def __init__(self, clients: KubeClients) -> None:
        self._clients = clients

    @action("k8s.rollout_restart", RolloutRestartParams)
    async def rollout_restart(self, params: RolloutRestartParams, ctx: ActionContext) -> dict[str, Any]:
        """Restart a workload's pods as `kubectl rollout restart` does, then wait for the rollout."""
        name = "k8s.rollout_restart"
        kube = await self._clients.get(params.context)
        url = workload_path(params.kind, params.namespace, params.name)

        async def restart() -> tuple[str, bool]:
            obj = await read(kube, name, url)
            record = record_of(obj, RESTART_RECORD, ctx.idempotency_key)
            template_annotations = ((obj["spec"].get("template") or {}).get("metadata") or {}).get("annotations") or {}
            if record and template_annotations.get(RESTARTED_AT) == record.get("restartedAt"):
                log.info("this step already restarted it; waiting for that rollout", restarted_at=record["restartedAt"])
                return record["restartedAt"], True
            if params.kind == "deployment" and obj["spec"].get("paused"):
                raise ActionFailed(f"{name}: deployment {params.name!r} is paused: resume it first", retryable=False)
            restarted_at = _now()
            mine = json.dumps({"key": ctx.idempotency_key, "restartedAt": restarted_at})
            await kube.patch(url, {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"], "annotations": {RESTART_RECORD: mine}},
                "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}},
            }, STRATEGIC_PATCH)
            return restarted_at, False

        restarted_at, repeated = await on_conflict_reread(name, restart)
        out: dict[str, Any] = {"kind": params.kind, "namespace": params.namespace, "name": params.name,
                               "restarted_at": restarted_at, "repeated": repeated}
        if params.wait:
            out["rollout"] = await wait_for_rollout(kube, name, params.kind, url, params.interval.total_seconds())
        return out

    @action("k8s.scale", ScaleParams)
    async def scale(self, params: ScaleParams, ctx: ActionContext) -> dict[str, Any]:
        """Set a workload's replicas through its scale subresource; output `previous` is the count it found."""
        name = "k8s.scale"
        kube = await self._clients.get(params.context)
        url = workload_path(params.kind, params.namespace, params.name)
        if params.replicas is None:
            restore = await self._scaled_from(kube, name, url, ctx)
            if restore is None:
                return {"kind": params.kind, "namespace": params.namespace, "name": params.name, "changed": False,
                        "skipped": "its step left no record here: it scaled nothing"}
            params = params.model_copy(update={"replicas": restore})

        async def record_previous() -> int:
            obj = await read(kube, name, url)
            record = record_of(obj, SCALE_RECORD, ctx.idempotency_key)
            if record is not None and isinstance(record.get("previous"), int):
                return record["previous"]  # a retry: the count the first attempt found, not its own result
            previous = obj["spec"].get("replicas", 1)
            mine = with_record(obj, SCALE_RECORD, {"key": ctx.idempotency_key, "previous": previous,
                                                   "replicas": params.replicas}, SCALE_RECORDS_KEPT,
                               replaces=step_key(ctx) if ctx.compensation else None)
            await kube.patch(url, {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"],
                                                "annotations": {SCALE_RECORD: mine}}}, MERGE_PATCH)
            return previous

        async def set_replicas() -> bool:
            scale = await read(kube, name, url + "/scale")
            if (scale.get("spec") or {}).get("replicas") == params.replicas:
                return False
            scale["spec"] = {**(scale.get("spec") or {}), "replicas": params.replicas}
            await kube.put(url + "/scale", scale)  # carries the resourceVersion read: 409 if it moved
            return True

        previous = await on_conflict_reread(name, record_previous)
        changed = await on_conflict_reread(name, set_replicas)
        log.info("scaled", kind=params.kind, previous=previous, replicas=params.replicas, changed=changed)
        out: dict[str, Any] = {"kind": params.kind, "namespace": params.namespace, "name": params.name,
                               "replicas": params.replicas, "previous": previous, "changed": changed}
        if params.wait and params.kind != "replicaset":
            out["rollout"] = await wait_for_rollout(kube, name, params.kind, url, params.interval.total_seconds())
        return out

    @staticmethod
    async def _scaled_from(kube: Kube, name: str, url: str, ctx: ActionContext) -> int | None:
        """For a compensation given no count: the count its step found (from the step's record),
        or, on a retry of this undo after its own write, the count this undo set; None if the step
        recorded nothing here (it failed before it scaled)."""
        if not ctx.compensation:
            raise InvalidParams(f"{name}: give replicas; only a compensation defaults to the count its step found")
        obj = await read(kube, name, url)
        step = record_of(obj, SCALE_RECORD, step_key(ctx))
        own = record_of(obj, SCALE_RECORD, ctx.idempotency_key)
        found = step.get("previous") if step is not None else own.get("replicas") if own is not None else None
        if found is None:
            return None
        if not isinstance(found, int) or isinstance(found, bool) or not 0 <= found <= MAX_REPLICAS:
            raise ActionFailed(f"{name}: the step's record holds no replica count ({found!r})", retryable=False)
        return found

    @action("k8s.rollout_undo", RolloutUndoParams)
    async def rollout_undo(self, params: RolloutUndoParams, ctx: ActionContext) -> dict[str, Any]:
        """Roll a deployment back to its previous ReplicaSet revision, as `kubectl rollout undo` does."""
        name = "k8s.rollout_undo"
        kube = await self._clients.get(params.context)
        url = workload_path("deployment", params.namespace, params.name)

        async def undo() -> dict[str, Any]:
            deployment = await read(kube, name, url)
            record = record_of(deployment, ROLLBACK_RECORD, ctx.idempotency_key)
            if record is not None:  # a retry: rolling back again would undo our own rollback
                return {"rolled_back": True, "to_revision": record.get("to_revision"), "repeated": True}
            if deployment["spec"].get("paused"):
                raise ActionFailed(f"{name}: deployment {params.name!r} is paused: resume it first", retryable=False)
            at = _revision_of(deployment)
            if params.from_revision is not None and at != params.from_revision:
                # Someone rolled it back (or out) since the step was asked for: "previous" is now
                # the bad release (red team: the step put it back after on-call's own rollback).
                return {"rolled_back": False, "to_revision": None, "from_revision": at, "repeated": False,
                        "skipped": f"the deployment is at revision {at}, not {params.from_revision}: "
                                   "it changed since; nothing done"}
            target, revision = await self._revision(kube, name, deployment, params.to_revision)
            template = json.loads(json.dumps(target["spec"]["template"]))
            (template.get("metadata") or {}).get("labels", {}).pop(POD_TEMPLATE_HASH, None)
            if _same_template(template, deployment["spec"]["template"]):
                return {"rolled_back": False, "to_revision": revision, "repeated": False,
                        "skipped": f"the current template already matches revision {revision}"}
            current = deployment["metadata"].get("annotations") or {}
            annotations = {k: v for k, v in current.items() if k in ROLLBACK_KEEPS}
            annotations.update({k: v for k, v in (target["metadata"].get("annotations") or {}).items()
                                if k not in ROLLBACK_KEEPS})
            annotations[ROLLBACK_RECORD] = json.dumps({"key": ctx.idempotency_key, "to_revision": revision})
            await kube.patch(url, [
                {"op": "replace", "path": "/metadata/resourceVersion", "value": deployment["metadata"]["resourceVersion"]},
                {"op": "replace", "path": "/spec/template", "value": template},
                {"op": "add", "path": "/metadata/annotations", "value": annotations},
            ], JSON_PATCH)
            return {"rolled_back": True, "to_revision": revision, "from_revision": at, "repeated": False}

        out = {"namespace": params.namespace, "name": params.name, **await on_conflict_reread(name, undo)}
        if params.wait and out["rolled_back"]:
            out["rollout"] = await wait_for_rollout(kube, name, "deployment", url, params.interval.total_seconds())
        return out

    async def _revision(
        self, kube: Kube, name: str, deployment: dict[str, Any], to_revision: int | None
    ) -> tuple[dict[str, Any], int]:
        """The deployment's ReplicaSet at `to_revision`, or at the revision before the newest."""
        meta = deployment["metadata"]
        labels = (deployment["spec"].get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        listing = path("apis", "apps", "v1", "namespaces", meta["namespace"], "replicasets")
        try:
            found = await kube.get(listing, **({"labelSelector": selector} if selector else {}))
        except KubeError as exc:
            raise exc.failed(name) from None
        owned: list[tuple[int, dict[str, Any]]] = []
        for rs in found.get("items") or []:
            refs = (rs.get("metadata") or {}).get("ownerReferences") or []
            if not any(ref.get("uid") == meta.get("uid") and ref.get("controller") for ref in refs):
                continue
            try:
                owned.append((int(rs["metadata"]["annotations"][REVISION]), rs))
            except (KeyError, TypeError, ValueError):
                continue
        owned.sort(key=lambda pair: pair[0])
        if to_revision is not None:
            for revision, rs in owned:
                if revision == to_revision:
                    return rs, revision
            raise ActionFailed(f"{name}: deployment {meta['name']!r} has no revision {to_revision}", retryable=False)
        if len(owned) < 2:
            raise ActionFailed(f"{name}: no rollout history found for deployment {meta['name']!r}", retryable=False)
        revision, rs = owned[-2]
        return rs, revision

    @action("k8s.delete_pod", DeletePodParams)
    async def delete_pod(self, params: DeletePodParams, ctx: ActionContext) -> dict[str, Any]:
        """Delete a pod (its controller makes a new one); a pod already gone counts as done. It deletes
        the pod it found (its uid, noted for a retry): a retry after a lost answer leaves alone the
        pod the controller has made under the same name since (red team: it deleted that one too)."""
        name = "k8s.delete_pod"
        kube = await self._clients.get(params.context)
        url = path("api", "v1", "namespaces", params.namespace, "pods", params.name)
        out: dict[str, Any] = {"namespace": params.namespace, "name": params.name}
        noted = ctx.noted.get("pod_uid") if isinstance(ctx.noted, dict) else None  # an earlier attempt's pod
        uid = params.uid or (noted if isinstance(noted, str) else None)
        if uid is None:
            try:
                uid = (await kube.get(url))["metadata"]["uid"]
            except KubeError as exc:
                if exc.status == 404:
                    return {**out, "deleted": False, "result": "not_found"}
                raise exc.failed(name) from None
            ctx.note({"pod_uid": uid})
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
        if params.grace_period_seconds is not None:
            options["gracePeriodSeconds"] = params.grace_period_seconds
        try:
            await kube.delete(url, options)
        except KubeError as exc:
            if exc.status not in (404, 409):  # (409: the uid precondition: another pod has its name now)
                raise exc.failed(name) from None
            if isinstance(noted, str):  # the pod an earlier attempt deleted, whose answer was lost
                return {**out, "uid": uid, "deleted": True, "result": "deleted", "by_earlier_attempt": True}
            return {**out, "uid": uid, "deleted": False, "result": "not_found" if exc.status == 404 else "replaced"}
        return {**out, "uid": uid, "deleted": True, "result": "deleted"}

    @action("k8s.cordon", NodeParams)
    async def cordon(self, params: NodeParams, ctx: ActionContext) -> dict[str, Any]:
        """Mark a node unschedulable; output already_cordoned says whether it was before this step."""
        name = "k8s.cordon"
        kube = await self._clients.get(params.context)
        url = node_path(params.node)

        async def cordon() -> bool:
            node = await read(kube, name, url)
            record = record_of(node, CORDON_RECORD, ctx.idempotency_key)
            unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
            already = bool(record["was_cordoned"]) if record is not None else unschedulable
            if not unschedulable:
                mine = json.dumps({"key": ctx.idempotency_key, "was_cordoned": already})
                await kube.patch(url, {
                    "metadata": {"resourceVersion": node["metadata"]["resourceVersion"],
                                 "annotations": {CORDON_RECORD: mine}},
                    "spec": {"unschedulable": True},
                }, STRATEGIC_PATCH)
            return already

        already = await on_conflict_reread(name, cordon)
        return {"node": params.node, "cordoned": True, "already_cordoned": already}

    @action("k8s.uncordon", UncordonParams)
    async def uncordon(self, params: UncordonParams, ctx: ActionContext) -> dict[str, Any]:
        """Mark a node schedulable again, unless it was cordoned before the cordon this undoes."""
        name = "k8s.uncordon"
        if params.was_cordoned:
            return {"node": params.node, "cordoned": True, "changed": False, "left_cordoned": True}
        # Left out in a compensation: what its cordon recorded decides (it records only a change).
        by_record = params.was_cordoned is None and ctx.compensation
        kube = await self._clients.get(params.context)
        url = node_path(params.node)

        async def uncordon() -> bool | None:
            node = await read(kube, name, url)
            if not (node.get("spec") or {}).get("unschedulable"):
                return False  # (schedulable: nothing to undo, or this undo's earlier attempt did it)
            if by_record and record_of(node, CORDON_RECORD, step_key(ctx)) is None:
                return None  # cordoned, but not by that cordon: left as it is
            await kube.patch(url, {
                "metadata": {"resourceVersion": node["metadata"]["resourceVersion"],
                             "annotations": {CORDON_RECORD: None}},
                "spec": {"unschedulable": None},
            }, STRATEGIC_PATCH)
            return True

        changed = await on_conflict_reread(name, uncordon)
        if changed is None:
            return {"node": params.node, "cordoned": True, "changed": False, "left_cordoned": True,
                    "skipped": "cordoned, but its cordon left no record here: someone else cordoned it"}
        return {"node": params.node, "cordoned": False, "changed": changed, "left_cordoned": False}

    @action("k8s.get", GetParams)
    async def get(self, params: GetParams, ctx: ActionContext) -> dict[str, Any]:
        """Read one object (for `when:`); with `expect`, wait until its fields hold those values."""
        name = "k8s.get"
        kube = await self._clients.get(params.context)
        prefix, plural, namespaced = READABLE[params.kind]
        scope = ("namespaces", params.namespace) if namespaced and params.namespace else ()
        url = path(*prefix, *scope, plural, params.name)
        polls = 0
        while True:
            polls += 1
            try:
                obj = await kube.get(url)
            except KubeError as exc:
                if exc.status == 404 and params.missing_ok and not params.expect:
                    return {"found": False, "object": None, "truncated": False, "polls": polls}
                if exc.status == 404 and not params.expect:
                    raise ActionFailed(f"{name}: {exc}", retryable=False) from None
                if exc.status != 404:
                    raise exc.failed(name) from None
                obj = None
            if obj is not None:
                unmet = {f: _field(obj, f) for f, want in (params.expect or {}).items() if _field(obj, f) != want}
                if not unmet:
                    slim, truncated = bounded(obj)
                    return {"found": True, "object": slim, "truncated": truncated, "polls": polls}
                log.info("waiting for fields", action=name, unmet=unmet, poll=polls)
            await asyncio.sleep(params.interval.total_seconds())


def _revision_of(deployment: dict[str, Any]) -> int | None:
    """The revision the deployment controller says the deployment is at (None: it has not said)."""
    try:
        return int((deployment["metadata"].get("annotations") or {})[REVISION])
    except (KeyError, TypeError, ValueError):
        return None


def _same_template(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def bare(template: dict[str, Any]) -> dict[str, Any]:
        copy = json.loads(json.dumps(template))
        (copy.get("metadata") or {}).get("labels", {}).pop(POD_TEMPLATE_HASH, None)
        return copy

    return bare(a) == bare(b)
