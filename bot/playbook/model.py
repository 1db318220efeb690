"""Playbook format v1 and its v1.1 additions (see DESIGN.md): what a YAML playbook may say,
checked before any run.

Every v1.1 field defaults to "not used" and is left out of dumps while it is (`_unused`), so a v1
playbook dumps, and hashes, exactly as it did before v1.1 existed.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from bot.playbook import patterns
from bot.playbook.cron import check_cron, check_timezone
from bot.playbook.durations import Duration

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
STEP_ID_PATTERN = r"^[a-z_][a-z0-9_-]*$"
VAR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ITEM_ADDRESS_PATTERN = r"^[a-z_][a-z0-9_-]*(\[[0-9]{1,5}\]\.[a-z_][a-z0-9_-]*)?$"  # a step, or roll[2].drain


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# Hard caps on structured params, whatever a playbook declares: values come from requesters and
# alerts (hostile), land in workflow history and in every policy input.
PARAM_MAX_ITEMS = 1000  # items in one array
PARAM_MAX_KEYS = 100  # keys in one object
PARAM_MAX_DEPTH = 6  # arrays/objects nested in one param value (and in its declaration)
PARAM_MAX_BYTES = 64 * 1024  # one param (a string's UTF-8; an array/object as JSON text, given or after typing)
# All of a run's params as JSON: they ride in its input, its `run_started` event and every policy
# question beside the alert; a 700 KB string param copied from an annotation took a policy
# question past Temporal's 2 MB and the run never started a step (red team, stop 53).
PARAMS_MAX_BYTES = 256 * 1024
PARAM_MAX_NODES = 10_000  # values (items, properties, scalars) in one param value

SCALAR_TYPES = ("string", "integer", "number", "boolean")


def valid_pattern(value: str | None) -> str | None:
    """A `pattern:` that compiles, or a load-time error saying why."""
    if value is not None:
        try:
            patterns.check(value)
        except patterns.PatternError as exc:
            raise ValueError(f"pattern {value!r} is not a valid regular expression for RE2, which checks values in linear time: {exc}") from None
    return value


def _unused(value: Any) -> bool:
    """A v1.1 field left at its default: omitted from dumps, so v1 snapshots keep their hash."""
    return value is None or value is False or value == [] or value == "fail"


class ParamSpec(_Strict):
    """A typed input; CLI, Slack and alert params are coerced and checked against it. `array` and
    `object` nest specs (`items`, `properties`), bounded by the PARAM_MAX_* caps."""

    type: Literal["string", "integer", "number", "boolean", "array", "object"] = "string"
    description: str = ""
    enum: list[Any] | None = None
    pattern: str | None = None
    default: Any = None
    required: bool | None = Field(None, description="Defaults to true when no default is given.")
    items: ParamSpec | None = Field(None, exclude_if=_unused, description="type: array: the spec every item must meet.")
    min_items: int | None = Field(None, exclude_if=_unused, ge=0, le=PARAM_MAX_ITEMS)
    max_items: int | None = Field(None, exclude_if=_unused, ge=0, le=PARAM_MAX_ITEMS, description=f"At most {PARAM_MAX_ITEMS} whatever it says.")
    properties: dict[str, ParamSpec] | None = Field(
        None, exclude_if=_unused, description="type: object: its keys and their specs; a property is required unless it has a default "
        "or says required: false.",
    )
    additional_properties: bool | None = Field(
        None, exclude_if=_unused, description="type: object: whether keys not under properties are accepted (as any JSON value); "
        "default false.",
    )

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        return valid_pattern(value)

    @field_validator("properties")
    @classmethod
    def _property_names(cls, value: dict[str, ParamSpec] | None) -> dict[str, ParamSpec] | None:
        if value is not None:
            if len(value) > PARAM_MAX_KEYS:
                raise ValueError(f"at most {PARAM_MAX_KEYS} properties")
            for name in value:
                if not re.match(VAR_NAME_PATTERN, name):
                    raise ValueError(f"property name {name!r} must be an identifier (letters, digits, _) "
                                     "so templates can read it as .name")
        return value

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        """Each keyword where its type gives it a meaning, and a declaration nested no deeper than values may be."""
        if self.type == "array":
            if self.items is None:
                raise ValueError("type: array needs items: the spec of every item, e.g. items: {type: string}")
            if self.min_items is not None and self.max_items is not None and self.min_items > self.max_items:
                raise ValueError(f"min_items ({self.min_items}) is more than max_items ({self.max_items})")
        else:
            for key in ("items", "min_items", "max_items"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is only for type: array (this param is type: {self.type})")
        if self.type != "object":
            if self.properties is not None or self.additional_properties is not None:
                key = "properties" if self.properties is not None else "additional_properties"
                raise ValueError(f"{key} is only for type: object (this param is type: {self.type})")
        if self.type in ("array", "object") and self.enum is not None:
            raise ValueError(f"enum is only for string, integer, number and boolean params (this one is type: "
                             f"{self.type}; put an enum on its items or properties)")
        if self.items is not None and (self.items.default is not None or self.items.required is not None):
            raise ValueError("items: default and required have no meaning for an item (set them on the array)")
        if self.depth() > PARAM_MAX_DEPTH:
            raise ValueError(f"arrays and objects are nested more than {PARAM_MAX_DEPTH} deep")
        return self

    def depth(self) -> int:
        """Levels of arrays/objects this spec nests (a scalar is 0, an array of strings 1)."""
        inner = [self.items] if self.items is not None else []
        inner += list((self.properties or {}).values())
        own = 1 if self.type in ("array", "object") else 0
        return own + max((spec.depth() for spec in inner), default=0)


class RetryPolicy(_Strict):
    max_attempts: int = Field(3, ge=1, le=100)
    initial_interval: Duration = timedelta(seconds=1)
    backoff: float = Field(2.0, ge=1.0, le=10.0)
    max_interval: Duration = timedelta(seconds=30)


DEFAULT_RETRY = RetryPolicy()
DEFAULT_TIMEOUT = timedelta(minutes=5)
HUMAN_ACTIONS = ("core.approve", "core.confirm")  # v1.1: wait for people; their timeout is the deadline
HUMAN_TIMEOUT = "15m"


class Compensation(_Strict):
    """The undo of a step; registered before the step runs, run in reverse on failure or cancel."""

    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    retry: RetryPolicy = DEFAULT_RETRY
    timeout: Duration = DEFAULT_TIMEOUT


class Fallback(_Strict):
    """Run instead of a step whose own action failed (after its retries); its output takes the step's place."""

    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    impact: Literal["low", "high"] = Field(
        "low", description="high: asks policy like a high step (a decision that needs approval refuses it)."
    )
    retry: RetryPolicy = DEFAULT_RETRY
    timeout: Duration = Field(DEFAULT_TIMEOUT, description="Per attempt.")


class Step(_Strict):
    id: str = Field(pattern=STEP_ID_PATTERN)
    name: str = ""
    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    impact: Literal["low", "high"] = "low"
    when: str | None = Field(None, description="Template; the step is skipped when it renders false.")
    retry: RetryPolicy = DEFAULT_RETRY
    timeout: Duration = Field(DEFAULT_TIMEOUT, description="Per attempt.")
    compensate: Compensation | None = None
    on_failure: Literal["fail", "continue"] = Field(
        "fail", exclude_if=_unused,
        description="continue: a step that failed (after its retries, and its fallback) reads failed_ignored "
        "and the run goes on. Denied, rejected and cancelled steps still end the run.",
    )
    fallback: Fallback | None = Field(
        None, exclude_if=_unused, description="Run instead when this step's action fails (after its retries)."
    )
    settles: str | None = Field(
        None, exclude_if=_unused, pattern=ITEM_ADDRESS_PATTERN,
        description="An earlier step (a parallel or foreach group, or one item's step as roll[2].drain) whose "
        "compensation is dropped once this step's own action succeeds.",
    )
    irreversible: bool = Field(
        False, exclude_if=_unused,
        description="Nothing can undo this step (no compensate:); approvers and the run summary are told.",
    )


    @model_validator(mode="before")
    @classmethod
    def _human_deadline(cls, data: Any) -> Any:
        """A human step's timeout is how long people have to answer: 15m unless it says."""
        if isinstance(data, dict) and data.get("action") in HUMAN_ACTIONS and "timeout" not in data:
            return {**data, "timeout": HUMAN_TIMEOUT}
        return data


class ParallelGroup(_Strict):
    """Steps that run concurrently; the group waits for all of them."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    name: str = ""
    when: str | None = None
    parallel: list[Step] = Field(min_length=1)


FOREACH_ACTION = "foreach"  # the action a foreach group's StepStatus shows
FAIL_ACTION = "core.fail"  # v1.1: ends the run on purpose (its saga still undoes), in the workflow
FOREACH_HARD_MAX = 10_000  # items in a literal list; the worker's PLAYBOOK_BOT_FOREACH_MAX bounds every run
FOREACH_NAMES_TAKEN = frozenset({"params", "vars", "alert", "run", "steps", "index", "secret"})


class ForeachGroup(_Strict):
    """Format v1.1: `steps` run once per item of a list, at most `concurrency` items at once, in
    index order; past `max_failures` failed items no new item starts and the group fails."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    name: str = ""
    when: str | None = None
    foreach: str | list[JsonValue] = Field(description=(
        "The items: a template that renders to a list (\"{{ params.hosts }}\") or a literal list. At most "
        "PLAYBOOK_BOT_FOREACH_MAX items (default 500) per run."
    ))
    as_: str = Field("item", alias="as", pattern=VAR_NAME_PATTERN, max_length=64,
                     description="The name templates read the item by; `index` (0-based) is set too.")
    concurrency: int = Field(1, ge=1, le=100, description="Items at once; 1 = rolling, one after another.")
    max_failures: int | Literal["all"] = Field(0, description=(
        "More failed items than this: no new item starts, running ones finish, the group fails. "
        "all: keep going, fail only if every item failed."
    ))
    steps: list[Step] = Field(min_length=1, max_length=50, description=(
        "Run in order for each item, with their own when/retry/compensate/on_failure/fallback; templates read "
        "this item's steps as steps.<id>."
    ))

    @field_validator("max_failures")
    @classmethod
    def _non_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("max_failures must be 0 or more, or \"all\"")
        return value


def _step_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "parallel" if "parallel" in value else "foreach" if "foreach" in value else "step"
    if isinstance(value, ForeachGroup):
        return "foreach"
    return "parallel" if isinstance(value, ParallelGroup) else "step"


StepItem = Annotated[
    Union[Annotated[Step, Tag("step")], Annotated[ParallelGroup, Tag("parallel")],
          Annotated[ForeachGroup, Tag("foreach")]],
    Discriminator(_step_kind),
]


def members(item: Step | ParallelGroup | ForeachGroup) -> list[Step]:
    """The steps a top-level entry holds (a plain step holds none besides itself)."""
    if isinstance(item, ParallelGroup):
        return list(item.parallel)
    if isinstance(item, ForeachGroup):
        return list(item.steps)
    return []


class AlertTrigger(_Strict):
    matchers: list[str] = Field(min_length=1, description="Alertmanager matcher syntax.")
    params: dict[str, Any] = Field(default_factory=dict)
    on_resolved: Literal["cancel", "continue"] = "cancel"
    on_rerun: Literal["already_handled", "start"] = Field("already_handled", description=(
        "A firing delivery for an episode that already ran, once Temporal no longer has its run "
        "(its retention ended): already_handled starts nothing; start runs it again under the same id."
    ))


SCHEDULE_ID_PATTERN = r"^[a-z][a-z0-9-]*$"


class ScheduleTrigger(_Strict):
    """Format v1.1: a Temporal Schedule starts the playbook at `cron` times, as principal `schedule`
    (bot/engine/schedules.py keeps the schedules in step with the playbooks)."""

    cron: str = Field(max_length=200, description=(
        "Five fields, minute hour day-of-month month day-of-week (\"0 3 * * *\": 03:00 daily), or a macro "
        "(@daily, @hourly, @weekly, @monthly, @yearly)."
    ))
    timezone: str = Field("UTC", max_length=64, description="IANA zone the cron times are read in (Europe/Berlin).")
    params: dict[str, JsonValue] = Field(default_factory=dict, description=(
        "Literal params for every scheduled run, typed and defaulted like any other run's."
    ))
    id: str | None = Field(None, pattern=SCHEDULE_ID_PATTERN, max_length=40, description=(
        "Names the schedule (playbook-schedule:<playbook>:<id>); default: the entry's index. Give one to reorder "
        "entries without replacing their schedules."
    ))
    overlap: Literal["skip", "buffer_one", "buffer_all", "allow_all"] = Field("skip", description=(
        "When a firing comes while the previous scheduled run still runs: skip it (default), buffer one or all "
        "to run after it, or allow_all to run both."
    ))

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)


class PagerDutyTrigger(_Strict):
    """A PagerDuty V3 webhook's incident (incident.triggered starts, incident.resolved resolves)."""

    services: list[str] = Field(min_length=1, description=(
        "Service ids (PF9KMXH) or names (the service's summary) whose incidents start this playbook."))
    urgency: Literal["high", "low"] | None = Field(None, description="Only incidents of this urgency; unset: any.")
    params: dict[str, Any] = Field(default_factory=dict)
    on_resolved: Literal["cancel", "continue"] = "cancel"
    on_rerun: Literal["already_handled", "start"] = "already_handled"


class OpsgenieTrigger(_Strict):
    """An Opsgenie webhook integration's alert (action Create starts, Close resolves)."""

    tags: list[str] = Field(default_factory=list, description="Every one of these tags must be on the alert.")
    priorities: list[Literal["P1", "P2", "P3", "P4", "P5"]] = Field(
        default_factory=list, description="Only alerts of one of these priorities; empty: any.")
    params: dict[str, Any] = Field(default_factory=dict)
    on_resolved: Literal["cancel", "continue"] = "cancel"
    on_rerun: Literal["already_handled", "start"] = "already_handled"

    @model_validator(mode="after")
    def _narrowed(self) -> OpsgenieTrigger:
        if not self.tags and not self.priorities:
            raise ValueError("give tags or priorities: a trigger without either would start on every Opsgenie alert")
        return self


class Triggers(_Strict):
    alertmanager: list[AlertTrigger] = Field(default_factory=list)
    schedule: list[ScheduleTrigger] = Field(default_factory=list, exclude_if=_unused, max_length=20)


    pagerduty: list[PagerDutyTrigger] = Field(default_factory=list)
    opsgenie: list[OpsgenieTrigger] = Field(default_factory=list)


LOCK_KEY_MAX = 200  # characters of a rendered concurrency key


class Concurrency(_Strict):
    """One run per target at a time: runs whose rendered `key` is equal share `limit` slots,
    across every front door and worker (a lock workflow per key)."""

    key: str = Field(min_length=1, max_length=1000, description=(
        "Template over params, vars and alert (e.g. \"{{ params.service }}\"); the rendered key is global: "
        f"prefix it with the playbook name for a per-playbook lock. At most {LOCK_KEY_MAX} characters rendered."
    ))
    limit: int = Field(1, ge=1, le=100, description="How many runs may hold the key at once.")
    on_busy: Literal["queue", "refuse", "attach"] = Field("queue", description=(
        "queue: wait (state queued) until a slot frees; refuse: answer busy naming the holder; "
        "attach: answer with the holder's run, like a duplicate alert."
    ))


class Playbook(_Strict):
    version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    summary: str = ""
    owner: str = ""
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    vars: dict[Annotated[str, StringConstraints(pattern=VAR_NAME_PATTERN)], JsonValue] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False},
        description="Constants templates read as vars.NAME (base URLs of services): literal JSON, no templates.",
    )
    triggers: Triggers = Triggers()
    channel: str | None = None
    secrets: list[Annotated[str, Field(pattern=SECRET_NAME_PATTERN)]] = Field(
        default_factory=list,
        description="Secrets this playbook may read with secret(\"NAME\") in a step's with:; no other resolves.",
    )
    steps: list[StepItem] = Field(min_length=1)
    on_failure: list[Step] = Field(
        default_factory=list, exclude_if=_unused,
        description="Steps run after the saga whenever the run does not complete; templates read run.error and "
        "run.failed_step. Their own failure is recorded and changes nothing else.",
    )
    concurrency: Concurrency | None = Field(None, description="Format v1.1: a per-target lock (one run per key).")

    @field_validator("secrets")
    @classmethod
    def _unique_secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            if value.count(name) > 1:
                raise ValueError(f"secret {name!r} is listed twice")
        return value

    @model_validator(mode="after")
    def _unique_step_ids(self) -> Playbook:
        seen: set[str] = set()
        for item in [*self.steps, *self.on_failure]:
            ids = [item.id] + [s.id for s in members(item)]
            for step_id in ids:
                if step_id in seen:
                    raise ValueError(f"duplicate step id {step_id!r}: step ids must be unique")
                seen.add(step_id)
        return self

    def leaf_steps(self) -> list[Step]:
        """Every executable step in order, groups flattened."""
        out: list[Step] = []
        for item in self.steps:
            if isinstance(item, ForeachGroup):
                continue  # its steps run per item, under addresses (roll[2].drain): see item_steps()
            out.extend(item.parallel if isinstance(item, ParallelGroup) else [item])
        return out

    def foreach_groups(self) -> list[ForeachGroup]:
        return [item for item in self.steps if isinstance(item, ForeachGroup)]

    def content_hash(self) -> str:
        """sha256 of the canonical JSON form: what ran is what the hash names."""
        data = self.model_dump(mode="json", by_alias=True)
        if data.get("concurrency") is None:
            data.pop("concurrency", None)  # a v1 playbook hashes as it always did
        for kind in ("pagerduty", "opsgenie"):  # added later: a playbook without them hashes as it did
            if not data["triggers"][kind]:
                data["triggers"].pop(kind)
        for trigger in data["triggers"]["alertmanager"]:
            if trigger.get("on_rerun") == "already_handled":
                trigger.pop("on_rerun")  # the default, added later: the hash stays as it was
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
