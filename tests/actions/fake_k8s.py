"""A small fake Kubernetes API server for the k8s.* action tests: no real API server runs here.

Only the endpoints the actions use, with the semantics the Kubernetes API documents ("API
Concepts", the API conventions, kubectl's rollout behaviour):

- every object carries metadata.resourceVersion (one counter for the store), uid,
  creationTimestamp; workloads and Jobs a generation that grows with each spec change;
- PUT with a stale metadata.resourceVersion, and a PATCH whose result carries a stale one, are
  409 Conflict; a DELETE whose preconditions.uid does not match is 409 too;
- PATCH takes merge-patch (RFC 7386), strategic-merge-patch (here: maps merge as in a merge
  patch, the only shape the actions send) and json-patch (RFC 6902 add/replace/remove/test);
  any other content type (server-side apply included) is 415, which is stricter than a real
  server and fails a test loudly instead of hiding a shape we do not model;
- the scale subresource answers autoscaling/v1 Scale objects;
- a Deployment, StatefulSet or DaemonSet whose spec changed rolls out over several reads
  (observedGeneration first, then one replica updated and then available at a time, old
  replicas last), and a Deployment's template change makes or adopts a ReplicaSet revision as
  the deployment controller does; a Job runs over two reads and leaves a pod with a log;
- deleting a Job removes its pods only with propagationPolicy Background/Foreground (the
  batch/v1 default orphans them);
- errors are Status objects; `throttle(n)` answers the next n requests 429 with Retry-After;
  requests without the kubeconfig's bearer token are 401.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from tests.http_server import serving

TOKEN = "fake-k8s-token"
KINDS = {  # (group/version, plural) -> (kind, namespaced)
    ("apps/v1", "deployments"): ("Deployment", True),
    ("apps/v1", "statefulsets"): ("StatefulSet", True),
    ("apps/v1", "daemonsets"): ("DaemonSet", True),
    ("apps/v1", "replicasets"): ("ReplicaSet", True),
    ("batch/v1", "jobs"): ("Job", True),
    ("v1", "pods"): ("Pod", True),
    ("v1", "nodes"): ("Node", False),
}
WORKLOADS = ("deployments", "statefulsets", "daemonsets")
PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json", "application/json-patch+json")
HOLD_MAX = 10.0  # seconds a held response waits for its release


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.headers = code, reason, message, headers or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resource_name(gv: str, plural: str) -> str:
    group = gv.split("/")[0] if "/" in gv else ""
    return f"{plural}.{group}" if group else plural


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(doc: Any, pointer: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    if not parts:
        raise ApiError(422, "Invalid", "json patch: the root cannot be changed")
    for part in parts[:-1]:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise ApiError(422, "Invalid", f"json patch: path {pointer} does not exist")
    return doc, parts[-1]


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902, the operations the API accepts that the tests need: add, replace, remove, test."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or op.get("op") not in ("add", "replace", "remove", "test") or "path" not in op:
            raise ApiError(422, "Invalid", f"json patch: unsupported operation {op!r}")
        parent, last = _pointer(doc, op["path"])
        if not isinstance(parent, dict):
            raise ApiError(422, "Invalid", f"json patch: {op['path']} is not in an object")
        if op["op"] in ("replace", "remove", "test") and last not in parent:
            raise ApiError(422, "Invalid", f"json patch: {op['op']} of missing path {op['path']}")
        if op["op"] == "test" and parent[last] != op.get("value"):
            raise ApiError(422, "Invalid", f"json patch: test of {op['path']} failed")
        if op["op"] == "remove":
            del parent[last]
        elif op["op"] in ("add", "replace"):
            parent[last] = copy.deepcopy(op.get("value"))
    return doc


def _template_hash(template: Any) -> str:
    bare = copy.deepcopy(template)
    ((bare.get("metadata") or {}).get("labels") or {}).pop("pod-template-hash", None)
    return hashlib.sha256(json.dumps(bare, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Hold:
    """Apply a matching write, then keep its response back (the client times out; the change stands)."""

    method: str
    suffix: str
    release: threading.Event = field(default_factory=threading.Event)
    applied: threading.Event = field(default_factory=threading.Event)


@dataclass
class FakeKube:
    base_url: str = ""
    objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, content type
    job_outcomes: dict[str, tuple[bool, str]] = field(default_factory=dict)  # image -> (succeeds, log)
    stalled: set[str] = field(default_factory=set)  # workloads whose rollout never progresses
    deadline_exceeded: set[str] = field(default_factory=set)  # deployments past progressDeadlineSeconds
    holds: list[Hold] = field(default_factory=list)
    interference: dict[tuple[str, str, str | None, str], Callable[[dict[str, Any]], None]] = field(default_factory=dict)
    throttled: int = 0
    retry_after: str = "1"
    _rv: int = 100
    _rollouts: dict[tuple[str, str, str | None, str], dict[str, int]] = field(default_factory=dict)
    _jobs: dict[tuple[str, str, str | None, str], int] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # --- what tests set up and read --------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.objects.clear()
            self.requests.clear()
            self.job_outcomes.clear()
            self.stalled.clear()
            self.deadline_exceeded.clear()
            self.holds.clear()
            self.interference.clear()
            self._rollouts.clear()
            self._jobs.clear()
            self.throttled = 0

    def throttle(self, count: int, retry_after: str = "1") -> None:
        """Answer the next `count` requests 429 Too Many Requests with this Retry-After."""
        with self._lock:
            self.throttled, self.retry_after = count, retry_after

    def hold(self, method: str, suffix: str) -> Hold:
        hold = Hold(method, suffix)
        self.holds.append(hold)
        return hold

    def interfere(self, gv: str, plural: str, namespace: str | None, name: str,
                  change: Callable[[dict[str, Any]], None]) -> None:
        """Before the next write to this object, another client changes it (its resourceVersion moves)."""
        self.interference[(gv, plural, namespace, name)] = change

    def get(self, gv: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.objects[(gv, plural, namespace, name)])

    def items(self, gv: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for (g, p, ns, _), o in self.objects.items()
                    if (g, p) == (gv, plural) and (namespace is None or ns == namespace)]

    def writes(self, method: str, suffix: str = "") -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.endswith(suffix))

    def add_deployment(self, namespace: str, name: str, replicas: int = 3, image: str = "app:1") -> dict[str, Any]:
        labels = {"app": name}
        template = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": image}]}}
        obj = self._create(("apps/v1", "deployments", namespace, name), {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
        })
        self._settle(("apps/v1", "deployments", namespace, name))
        return obj

    def add_statefulset(self, namespace: str, name: str, replicas: int = 2) -> dict[str, Any]:
        labels = {"app": name}
        obj = self._create(("apps/v1", "statefulsets", namespace, name), {
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "serviceName": name,
                     "updateStrategy": {"type": "RollingUpdate"},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "db", "image": "db:1"}]}}},
        })
        self._settle(("apps/v1", "statefulsets", namespace, name))
        return obj

    def set_image(self, namespace: str, name: str, image: str) -> None:
        """Someone deploys a new image (a template change: a new revision rolls out)."""
        with self._lock:
            key = ("apps/v1", "deployments", namespace, name)
            new = copy.deepcopy(self.objects[key])
            new["spec"]["template"]["spec"]["containers"][0]["image"] = image
            self._store(key, new, self.objects[key])
            self._settle(key)

    def add_daemonset(self, namespace: str, name: str) -> dict[str, Any]:
        """Desired on every node the fake knows (one when it knows none)."""
        labels = {"app": name}
        obj = self._create(("apps/v1", "daemonsets", namespace, name), {
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": labels}, "updateStrategy": {"type": "RollingUpdate"},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}}},
        })
        self._settle(("apps/v1", "daemonsets", namespace, name))
        return obj

    def add_node(self, name: str, unschedulable: bool = False) -> dict[str, Any]:
        spec = {"unschedulable": True} if unschedulable else {}
        return self._create(("v1", "nodes", None, name), {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec})

    def add_pod(self, namespace: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return self._create(("v1", "pods", namespace, name), {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                           "labels": labels or {}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}, "status": {"phase": "Running"}})

    # --- the store -------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(self, key: tuple[str, str, str | None, str], obj: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), creationTimestamp=_now())
            if key[1] in (*WORKLOADS, "jobs", "replicasets"):
                meta["generation"] = 1
                obj.setdefault("status", {})
            self.objects[key] = obj
            if key[1] in WORKLOADS:
                self._rollouts[key] = {"updated": 0, "old": 0, "available": 0}
                if key[1] == "deployments":
                    self._revise(key, obj)
            if key[1] == "jobs":
                self._jobs[key] = 0
            return copy.deepcopy(obj)

    def _settle(self, key: tuple[str, str, str | None, str]) -> None:
        """A workload made by a test starts fully rolled out."""
        with self._lock:
            while True:
                before = json.dumps(self.objects[key].get("status"), sort_keys=True)
                self._tick(key)
                if json.dumps(self.objects[key].get("status"), sort_keys=True) == before:
                    return

    def _store(self, key: tuple[str, str, str | None, str], new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        """Write `new` over `old` as the API does: checks, generation, resourceVersion, controllers."""
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        given = meta.get("resourceVersion")
        if given is not None and given != old_meta["resourceVersion"]:
            gv, plural, _, name = key
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {_resource_name(gv, plural)} "{name}": '
                           "the object has been modified; please apply your changes to the latest version and try again")
        for immutable in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if immutable in old_meta:
                meta[immutable] = old_meta[immutable]
        new["status"] = old.get("status", new.get("status"))
        self._validate(key, new)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return copy.deepcopy(old)  # no change: no new resourceVersion
        if "generation" in old_meta and new.get("spec") != old.get("spec"):
            meta["generation"] = old_meta["generation"] + 1
        meta["resourceVersion"] = self._next_rv()
        self.objects[key] = new
        if key[1] in WORKLOADS and (new.get("spec") or {}).get("template") != (old.get("spec") or {}).get("template"):
            state = self._rollouts[key]
            state.update(old=state["updated"] + state["old"], updated=0, available=0)
            if key[1] == "deployments":
                self._revise(key, new)
        return copy.deepcopy(new)

    def _validate(self, key: tuple[str, str, str | None, str], obj: dict[str, Any]) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        for field_name in ("annotations", "labels"):
            values = meta.get(field_name) or {}
            if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                raise ApiError(400, "BadRequest", f"metadata.{field_name}: values must be strings")
        if key[1] in (*WORKLOADS, "replicasets") and key[1] != "daemonsets":
            replicas = spec.get("replicas", 1)
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise ApiError(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}: must be >= 0")
        if key[1] == "nodes" and not isinstance(spec.get("unschedulable", False), bool):
            raise ApiError(400, "BadRequest", "spec.unschedulable must be a boolean")
        if key[1] == "jobs":
            pod = ((spec.get("template") or {}).get("spec")) or {}
            if not pod.get("containers"):
                raise ApiError(422, "Invalid", "spec.template.spec.containers: Required value")
            if pod.get("restartPolicy") not in ("Never", "OnFailure"):
                raise ApiError(422, "Invalid", 'spec.template.spec.restartPolicy: Unsupported value: must be "Never" '
                               'or "OnFailure"')

    # --- controllers, advanced one step per read --------------------------------------------

    def _revise(self, key: tuple[str, str, str | None, str], deployment: dict[str, Any]) -> None:
        """The deployment controller: the ReplicaSet for this template gets the next revision."""
        _, _, namespace, name = key
        digest = _template_hash(deployment["spec"]["template"])
        owned = [(k, rs) for k, rs in self.objects.items() if k[1] == "replicasets" and k[2] == namespace
                 and any(ref.get("uid") == deployment["metadata"]["uid"] for ref in rs["metadata"].get("ownerReferences", []))]
        revision = 1 + max((int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) for _, rs in owned),
                           default=0)
        match = next((k for k, rs in owned if _template_hash(rs["spec"]["template"]) == digest), None)
        if match is None:
            template = copy.deepcopy(deployment["spec"]["template"])
            template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = digest
            rs_key = ("apps/v1", "replicasets", namespace, f"{name}-{digest}")
            self._create(rs_key, {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_key[3], "namespace": namespace,
                             "labels": {**deployment["spec"]["selector"]["matchLabels"], "pod-template-hash": digest},
                             "annotations": {},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                  "uid": deployment["metadata"]["uid"], "controller": True}]},
                "spec": {"replicas": 0, "selector": deployment["spec"]["selector"], "template": template},
            })
            match = rs_key
        self.objects[match]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = str(revision)
        deployment["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = str(revision)

    def _tick(self, key: tuple[str, str, str | None, str]) -> None:
        obj = self.objects[key]
        plural, name = key[1], key[3]
        if plural == "jobs":
            self._tick_job(key, obj)
            return
        if plural not in WORKLOADS or name in self.stalled:
            return
        status, meta = obj.setdefault("status", {}), obj["metadata"]
        if name in self.deadline_exceeded:
            status["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
            status["observedGeneration"] = meta["generation"]
            return
        if status.get("observedGeneration", 0) < meta["generation"]:
            status["observedGeneration"] = meta["generation"]
            self._render(key, obj)
            return
        desired = self._desired(key, obj)
        state = self._rollouts[key]
        if state["updated"] > desired:
            state["updated"] = desired
            state["available"] = min(state["available"], desired)
        elif state["available"] < state["updated"]:
            state["available"] += 1
        elif state["updated"] < desired:
            state["updated"] += 1
            if plural == "daemonsets" and state["old"] > 0:  # one pod per node: the old one goes first
                state["old"] -= 1
        elif state["old"] > 0:
            state["old"] -= 1
        self._render(key, obj)

    def _desired(self, key: tuple[str, str, str | None, str], obj: dict[str, Any]) -> int:
        if key[1] == "daemonsets":
            return sum(1 for k in self.objects if k[1] == "nodes") or 1
        return obj["spec"].get("replicas", 1)

    def _render(self, key: tuple[str, str, str | None, str], obj: dict[str, Any]) -> None:
        state, status = self._rollouts[key], obj["status"]
        updated, old, available = state["updated"], state["old"], state["available"] + state["old"]
        if key[1] == "daemonsets":
            status.update(desiredNumberScheduled=self._desired(key, obj), currentNumberScheduled=updated + old,
                          updatedNumberScheduled=updated, numberAvailable=available, numberReady=available)
            return
        status.update(replicas=updated + old, updatedReplicas=updated, readyReplicas=available,
                      availableReplicas=available)
        if key[1] == "statefulsets":
            revision = f"{key[3]}-{_template_hash(obj['spec']['template'])}"
            status["updateRevision"] = revision
            rolled = old == 0 and updated == self._desired(key, obj) and available == updated
            if rolled or "currentRevision" not in status:
                status["currentRevision"] = revision

    def _tick_job(self, key: tuple[str, str, str | None, str], job: dict[str, Any]) -> None:
        step = self._jobs[key]
        if step >= 2:
            return
        self._jobs[key] = step + 1
        _, _, namespace, name = key
        image = job["spec"]["template"]["spec"]["containers"][0]["image"]
        succeeds, log = self.job_outcomes.get(image, (True, "done\n"))
        pod_key = ("v1", "pods", namespace, f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:5]}")
        if step == 0:
            labels = {**(job["spec"]["template"]["metadata"].get("labels") or {}), "job-name": name,
                      "batch.kubernetes.io/job-name": name, "controller-uid": job["metadata"]["uid"]}
            self._create(pod_key, {"apiVersion": "v1", "kind": "Pod",
                                   "metadata": {"name": pod_key[3], "namespace": namespace, "labels": labels},
                                   "spec": job["spec"]["template"]["spec"], "status": {"phase": "Running"},
                                   "log": log})
            job["status"] = {"active": 1, "startTime": _now()}
        else:
            self.objects[pod_key]["status"] = {"phase": "Succeeded" if succeeds else "Failed"}
            done = "Complete" if succeeds else "Failed"
            job["status"] = {"succeeded" if succeeds else "failed": 1, "active": 0,
                             "conditions": [{"type": done, "status": "True"}]}
        job["metadata"]["resourceVersion"] = self._next_rv()

    # --- HTTP --------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append((method, raw_path, headers.get("content-type", "")))
            if headers.get("authorization") != f"Bearer {TOKEN}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if self.throttled > 0:
                self.throttled -= 1
                raise ApiError(429, "TooManyRequests", "Too many requests, please try again later.",
                               {"Retry-After": self.retry_after})
            gv, plural, namespace, name, sub = self._route(raw_path)
            key = (gv, plural, namespace, name) if name else None
            if key is not None and method != "GET" and key in self.interference:
                change = self.interference.pop(key)
                if key in self.objects:
                    change(self.objects[key])
                    self.objects[key]["metadata"]["resourceVersion"] = self._next_rv()
            payload = self._payload(method, headers, body)
            return self._dispatch(method, gv, plural, namespace, name, sub, query, headers, payload)

    def _route(self, raw_path: str) -> tuple[str, str, str | None, str | None, str | None]:
        parts = raw_path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or (gv, rest[0]) not in KINDS or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if KINDS[(gv, rest[0])][1] != (namespace is not None):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return gv, rest[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None

    def _payload(self, method: str, headers: dict[str, str], body: bytes) -> Any:
        if method not in ("PUT", "POST", "PATCH") and not body:
            return None
        ctype = headers.get("content-type", "").split(";")[0].strip()
        accepted = PATCH_TYPES if method == "PATCH" else ("application/json",)
        if ctype not in accepted:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           f"accepted media types include: {', '.join(accepted)}")
        try:
            return json.loads(body) if body else None
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not JSON") from None

    def _missing(self, gv: str, plural: str, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{_resource_name(gv, plural)} "{name}" not found')

    def _dispatch(self, method: str, gv: str, plural: str, namespace: str | None, name: str | None,
                  sub: str | None, query: dict[str, list[str]], headers: dict[str, str],
                  payload: Any) -> tuple[int, Any, dict[str, str]]:
        if name is None:
            if method == "GET":
                return 200, self._list(gv, plural, namespace, query), {}
            if method == "POST":
                return self._post(gv, plural, namespace, payload)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection here")
        key = (gv, plural, namespace, name)
        if key not in self.objects:
            raise self._missing(gv, plural, name)
        if sub == "scale" and plural in ("deployments", "statefulsets", "replicasets"):
            return self._scale(method, key, payload)
        if sub == "log" and plural == "pods" and method == "GET":
            return self._log(key, query)
        if sub is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET":
            shown = self._shown(self.objects[key])
            self._tick(key)  # the controllers move on after this read: the next one sees more
            return 200, shown, {}
        if method == "PUT":
            if not isinstance(payload, dict):
                raise ApiError(400, "BadRequest", "the body must be an object")
            return 200, self._shown(self._store(key, payload, self.objects[key])), {}
        if method == "PATCH":
            ctype = headers["content-type"].split(";")[0].strip()
            current = self.objects[key]
            if ctype == "application/json-patch+json":
                patched = json_patch(current, payload)
            else:
                if not isinstance(payload, dict):
                    raise ApiError(400, "BadRequest", "a merge patch must be an object")
                patched = merge_patch(current, payload)
            return 200, self._shown(self._store(key, patched, current)), {}
        if method == "DELETE":
            return self._delete(key, query, payload)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed")

    def _shown(self, obj: dict[str, Any]) -> dict[str, Any]:
        shown = copy.deepcopy(obj)
        shown.pop("log", None)
        return shown

    def _list(self, gv: str, plural: str, namespace: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        wanted: dict[str, str] = {}
        for term in (query.get("labelSelector") or [""])[0].split(","):
            if term:
                if "=" not in term or "!" in term:
                    raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r} (this fake: k=v only)")
                label, value = term.split("=", 1)
                wanted[label.strip()] = value.lstrip("=").strip()
        items = [self._shown(o) for (g, p, ns, _), o in sorted(self.objects.items(), key=lambda kv: kv[0][3])
                 if (g, p) == (gv, plural) and (namespace is None or ns == namespace)
                 and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())]
        return {"apiVersion": gv, "kind": f"{KINDS[(gv, plural)][0]}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _post(self, gv: str, plural: str, namespace: str | None, payload: Any) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(payload, dict) or not (payload.get("metadata") or {}).get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        name = payload["metadata"]["name"]
        if payload.get("kind") != KINDS[(gv, plural)][0]:
            raise ApiError(400, "BadRequest", f"kind {payload.get('kind')!r} does not match {plural}")
        key = (gv, plural, namespace, name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{_resource_name(gv, plural)} "{name}" already exists')
        payload = copy.deepcopy(payload)
        payload["metadata"]["namespace"] = namespace
        payload.setdefault("status", {})
        self._validate(key, payload)
        return 201, self._shown(self._create(key, payload)), {}

    def _scale(self, method: str, key: tuple[str, str, str | None, str], payload: Any) -> tuple[int, Any, dict[str, str]]:
        obj = self.objects[key]
        if method == "PUT":
            if not isinstance(payload, dict) or payload.get("kind") != "Scale" or payload.get("apiVersion") != "autoscaling/v1":
                raise ApiError(400, "BadRequest", "the body must be an autoscaling/v1 Scale")
            given = (payload.get("metadata") or {}).get("resourceVersion")
            new = copy.deepcopy(obj)
            new["metadata"]["resourceVersion"] = given if given else obj["metadata"]["resourceVersion"]
            new["spec"]["replicas"] = (payload.get("spec") or {}).get("replicas", 0)
            self._store(key, new, obj)
        elif method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{method} on scale is not modelled here")
        obj = self.objects[key]
        labels = obj["spec"]["selector"]["matchLabels"]
        return 200, {
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                          "creationTimestamp")},
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {"replicas": obj["status"].get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))},
        }, {}

    def _log(self, key: tuple[str, str, str | None, str], query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        text = self.objects[key].get("log", "")
        if "tailLines" in query:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(query["tailLines"][0]):]) if int(query["tailLines"][0]) else ""
        if "limitBytes" in query:
            text = text.encode()[: int(query["limitBytes"][0])].decode("utf-8", errors="ignore")
        return 200, text, {"Content-Type": "text/plain"}

    def _delete(self, key: tuple[str, str, str | None, str], query: dict[str, list[str]],
                payload: Any) -> tuple[int, Any, dict[str, str]]:
        options = payload if isinstance(payload, dict) else {}
        obj = self.objects[key]
        want_uid = (options.get("preconditions") or {}).get("uid")
        if want_uid is not None and want_uid != obj["metadata"]["uid"]:
            raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {want_uid}, "
                           f"UID in object meta: {obj['metadata']['uid']}")
        policy = options.get("propagationPolicy") or (query.get("propagationPolicy") or [None])[0]
        del self.objects[key]
        if key[1] == "jobs" and policy in ("Background", "Foreground"):
            for pod_key in [k for k, o in self.objects.items() if k[1] == "pods" and k[2] == key[2]
                            and (o["metadata"].get("labels") or {}).get("controller-uid") == obj["metadata"]["uid"]]:
                del self.objects[pod_key]
        return 200, self._shown(obj), {}


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                code, answer, extra = fake.handle(self.command, parts.path, parse_qs(parts.query), headers, body)
            except ApiError as exc:
                code, extra = exc.code, exc.headers
                answer = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": exc.message, "reason": exc.reason, "code": exc.code}
            for hold in list(fake.holds):
                if hold.method == self.command and parts.path.endswith(hold.suffix) and not hold.applied.is_set():
                    hold.applied.set()
                    hold.release.wait(HOLD_MAX)
            if isinstance(answer, str):
                data, ctype = answer.encode(), "text/plain"
            else:
                data, ctype = json.dumps(answer).encode(), "application/json"
            try:
                self.send_response(code)
                self.send_header("Content-Type", extra.pop("Content-Type", ctype))
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


def running() -> Iterator[FakeKube]:
    fake = FakeKube()
    with serving(_handler(fake)) as fake.base_url:
        yield fake
