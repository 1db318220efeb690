"""`k8s.run_job`: run a container to completion as a Job, keep its logs, delete it.

The Job's name is derived from the step's idempotency key, so a retried step finds the Job its
earlier attempt created (the API answers 409 AlreadyExists) and waits for that one instead of
starting another. One gap is left: an attempt that deleted its finished Job and then lost its
answer leaves nothing to find, so its retry runs the Job again (keep Jobs safe to repeat).

Images must match PLAYBOOK_BOT_K8S_JOB_IMAGES: a Job runs arbitrary code in the cluster, so, like
shell.run's allow-list, an empty list refuses every image.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from typing import Any

import structlog
from pydantic import Field, field_validator
from temporalio import activity

from bot.actions.base import ActionContext, ActionFailed, ActionRefused, action, positive
from bot.actions.k8s import KubeParams, WaitParams
from bot.actions.k8s_client import KubeClients, KubeError, dns_label, path
from bot.playbook.durations import Duration

log = structlog.get_logger("bot.actions.k8s")

DELETE_BACKGROUND = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
KEY_LABEL = "playbook-bot.io/step"  # a digest of the idempotency key: which step's Job this is
MANAGED_BY = {"app.kubernetes.io/managed-by": "playbook-bot"}
TTL_AFTER_FINISHED = 3600  # seconds: the cluster removes a Job we could not delete ourselves
JOB_DEADLINE_SLACK = 60  # seconds past the step's own budget (retry intervals) before the cluster stops a Job
LOG_BYTES_MAX = 256 * 1024
TAIL_LINES = 500  # per pod: the end of a log is where a diagnostic says what it found
FETCH_BYTES = 1 << 20  # per pod read (limitBytes keeps the head of what it reads: the end is cut here)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,511}\Z")


class RunJobParams(KubeParams, WaitParams):
    namespace: str = Field(description="Namespace the Job runs in.")
    image: str = Field(description="Container image; must match PLAYBOOK_BOT_K8S_JOB_IMAGES.")
    command: list[str] | None = Field(None, min_length=1, description="Entrypoint argv (default: the image's).")
    args: list[str] | None = Field(None, description="Arguments to the entrypoint.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the container.")
    name_prefix: str = Field("playbook-bot", max_length=40, description="The Job is named <prefix>-<step digest>.")
    service_account: str | None = Field(None, description="Service account the pod runs as (default: the namespace's).")
    backoff_limit: int = Field(0, ge=0, le=10, description="Pod retries before the Job fails.")
    deadline: Duration | None = Field(None, description="activeDeadlineSeconds: the cluster stops the Job after this.")
    log_bytes: int = Field(16 * 1024, ge=0, le=LOG_BYTES_MAX, description="Log bytes kept in the output (the end).")

    _namespace = field_validator("namespace", "name_prefix")(dns_label)

    @field_validator("service_account")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        return None if value is None else dns_label(value)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not _IMAGE.match(value):
            raise ValueError(f"{value!r} is not an image reference")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: Any) -> Any:
        return None if value is None else positive("deadline")(value)


def _steps_budget() -> int | None:
    """Seconds the step still waits for its Job, over its attempts left: the Job's deadline when the
    playbook sets none, so that no Job outlives the step that waits for it (a run terminated, or its
    step's last attempt timed out, left a Job acting: review). None: unbounded (no timeout or retries)."""
    if not activity.in_activity():
        return None
    info = activity.info()
    policy = info.retry_policy
    if info.start_to_close_timeout is None or policy is None or not policy.maximum_attempts:
        return None
    attempts_left = max(1, policy.maximum_attempts - info.attempt + 1)
    return max(1, int(info.start_to_close_timeout.total_seconds() * attempts_left) + JOB_DEADLINE_SLACK)


def job_name(prefix: str, key: str) -> str:
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:63]


def _steps(job: dict[str, Any], digest: str) -> bool:
    """Whether `job` is the one this step created (its label holds the step's key digest)."""
    return ((job.get("metadata") or {}).get("labels") or {}).get(KEY_LABEL) == digest


def _finished(job: dict[str, Any]) -> str | None:
    """'Complete' or 'Failed' once the Job controller says so (a True condition), else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


@functools.lru_cache(maxsize=256)
def image_pattern(pattern: str) -> re.Pattern[str]:
    """A K8S_JOB_IMAGES pattern: `*` and `?` stay within one path segment (fnmatch's `*` also
    matched `/`, so `registry.internal/diag/*` allowed every image below diag/, at any depth)."""
    parts = ("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts))


class KubernetesJobActions:
    def __init__(self, clients: KubeClients, images: list[str]) -> None:
        self._clients = clients
        self._images = images

    def _allowed(self, image: str) -> bool:
        return any(image_pattern(pattern).fullmatch(image) for pattern in self._images)

    @action("k8s.run_job", RunJobParams)
    async def run_job(self, params: RunJobParams, ctx: ActionContext) -> dict[str, Any]:
        """Run a Job to completion, keep the tail of its pods' logs in the output, delete it."""
        name = "k8s.run_job"
        if not self._allowed(params.image):
            raise ActionRefused(f"{name}: image {params.image!r} is not allowed: add a matching pattern to "
                                "PLAYBOOK_BOT_K8S_JOB_IMAGES (empty: no image is)")
        kube = await self._clients.get(params.context)
        job = job_name(params.name_prefix, ctx.idempotency_key)
        jobs = path("apis", "batch", "v1", "namespaces", params.namespace, "jobs")
        url = f"{jobs}/{job}"
        digest = _key_digest(ctx.idempotency_key)
        try:
            reused = await self._create(kube, name, jobs, self._manifest(params, job, digest))
            state, found = await self._wait(kube, name, url, digest, params.interval.total_seconds())
            logs, pods = await self._logs(kube, name, params, job)
        except asyncio.CancelledError:
            details = activity.cancellation_details() if activity.in_activity() else None
            if details is not None and details.cancel_requested:
                # The run was cancelled: so is its Job. (Not on `not_found`: an attempt that timed out
                # on the server hears that too, while its retry is waiting for this same Job, review.)
                await asyncio.shield(self._stop(kube, url, job, digest))
            raise  # (timed out, or the worker stopping: a retry finds the Job and waits for it again)
        try:
            await kube.delete(url, DELETE_BACKGROUND)
        except KubeError as exc:
            if exc.status != 404:
                raise exc.failed(name) from None
        status = found.get("status") or {}
        out = {"job": job, "namespace": params.namespace, "succeeded": state == "Complete", "reused": reused,
               "logs": logs, "pods": pods, "pod_succeeded": status.get("succeeded", 0),
               "pod_failed": status.get("failed", 0)}
        if state != "Complete":
            raise ActionFailed(f"{name}: job {job} failed (pods failed: {out['pod_failed']})", retryable=False,
                               output=out)
        return out

    @staticmethod
    async def _create(kube: Any, name: str, jobs: str, manifest: dict[str, Any]) -> bool:
        """Create the Job; True if an earlier attempt of this step had (the API answers AlreadyExists)."""
        try:
            await kube.post(jobs, manifest)
            return False
        except KubeError as exc:
            if exc.status != 409 or exc.reason != "AlreadyExists":
                raise exc.failed(name) from None
            return True

    @staticmethod
    async def _stop(kube: Any, url: str, job: str, digest: str) -> None:
        """Delete this step's Job (its pods with it), when its run is cancelled while it runs: the run
        ended `cancelled` while the Job kept acting (red team). Only a Job labelled as this step's, by
        its uid. Best effort: a failure is logged, and the Job's deadline, if any, still ends it."""
        try:
            found = await kube.get(url)
            if not _steps(found, digest):
                return  # not this step's: never touched
            await kube.delete(url, {**DELETE_BACKGROUND, "preconditions": {"uid": found["metadata"]["uid"]}})
            log.info("job deleted: its run was cancelled", job=job)
        except Exception as exc:  # noqa: BLE001  the cancel goes on; the TTL or deadline ends the Job
            log.warning("job not deleted on cancel; it runs until it ends", job=job, error=str(exc))

    def _manifest(self, params: RunJobParams, job: str, digest: str) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "job", "image": params.image}
        if params.command:
            container["command"] = params.command
        if params.args is not None:
            container["args"] = params.args
        if params.env:
            container["env"] = [{"name": k, "value": v} for k, v in sorted(params.env.items())]
        pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        if params.service_account:
            pod_spec["serviceAccountName"] = params.service_account
        spec: dict[str, Any] = {
            "backoffLimit": params.backoff_limit,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
            "template": {"metadata": {"labels": {**MANAGED_BY, KEY_LABEL: digest}}, "spec": pod_spec},
        }
        if params.deadline is not None:
            spec["activeDeadlineSeconds"] = max(1, int(params.deadline.total_seconds()))
        elif (budget := _steps_budget()) is not None:
            spec["activeDeadlineSeconds"] = budget
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": job, "labels": {**MANAGED_BY, KEY_LABEL: digest}}, "spec": spec}

    async def _wait(self, kube: Any, name: str, url: str, digest: str, interval: float) -> tuple[str, dict[str, Any]]:
        """Until the Job completes or fails; a Job of that name that is not this step's is refused."""
        while True:
            try:
                found = await kube.get(url)
            except KubeError as exc:
                if exc.status == 404:
                    raise ActionFailed(f"{name}: {exc} (deleted while it ran)", retryable=False) from None
                raise exc.failed(name) from None
            if not _steps(found, digest):
                raise ActionFailed(f"{name}: a job named {url.rsplit('/', 1)[-1]} exists that this step did not "
                                   "create; not touching it", retryable=False)
            state = _finished(found)
            if state is not None:
                return state, found
            log.info("job running", action=name, active=(found.get("status") or {}).get("active", 0))
            await asyncio.sleep(interval)

    async def _logs(self, kube: Any, name: str, params: RunJobParams, job: str) -> tuple[str, list[dict[str, Any]]]:
        """The last TAIL_LINES lines of each pod's log, oldest pod first; past `log_bytes` in all, the end is kept."""
        listing = path("api", "v1", "namespaces", params.namespace, "pods")
        try:
            found = await kube.get(listing, labelSelector=f"job-name={job}")
        except KubeError as exc:
            raise exc.failed(name) from None
        items = sorted(found.get("items") or [], key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                                                               p["metadata"]["name"]))
        pods, texts = [], []
        for pod in items:
            pod_name = pod["metadata"]["name"]
            pods.append({"name": pod_name, "phase": (pod.get("status") or {}).get("phase")})
            if params.log_bytes == 0:
                continue
            try:
                text = await kube.request("GET", f"{listing}/{pod_name}/log",
                                          query={"container": "job", "tailLines": TAIL_LINES,
                                                 "limitBytes": FETCH_BYTES}, text=True)
            except KubeError as exc:  # a pod already gone or never started: say so in the logs
                text = f"(no log: {exc.reason or exc.status})\n"
            texts.append(f"--- {pod_name}\n{text}" if len(items) > 1 else text)
        logs = "".join(texts)
        if len(logs.encode()) > params.log_bytes:
            logs = logs.encode()[-params.log_bytes:].decode("utf-8", errors="ignore")
        return logs, pods
