"""Static checks a schema cannot express, run on a validated playbook before it may ever run.

Unknown actions and `with` keys, template syntax, undeclared params, and references to steps
that have not finished yet are all caught here, at load time, instead of in the middle of an
incident. Each problem carries the document location it is about; the loader turns that into a
file and line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Iterator, Mapping

from jinja2 import TemplateSyntaxError, meta, nodes
from pydantic import BaseModel, ValidationError

from bot.alerts.matchers import MatcherError, parse_matchers
from bot.actions.base import ACTIONS, COMPENSATION_DEFAULT, ActionSpec
from bot.playbook.model import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    FAIL_ACTION,
    FOREACH_HARD_MAX,
    FOREACH_NAMES_TAKEN,
    Compensation,
    Fallback,
    ForeachGroup,
    ParallelGroup,
    ParamSpec,
    Playbook,
    RetryPolicy,
    Step,
)
from bot.playbook.params import ParamError, coerce_params, coerce_value, unknown_param_message
from bot.playbook.reach import sink_problems, unknown_var_message, vars_problems
from bot.playbook.templating import ENV, MARKER_CHARS, SECRET_NAME, SECRET_REF, is_template, texts_at

Loc = tuple[str | int, ...]
_WHOLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.S)  # as templating renders to a native value

STEP_VARS = frozenset({"params", "vars", "alert", "run", "steps"})
TRIGGER_VARS = frozenset({"alert"})
LOCK_KEY_VARS = frozenset({"params", "vars", "alert"})  # rendered at admission: no run or steps yet
_GLOBALS = frozenset(ENV.globals)
ON_FAILURE = "on_failure"  # the group the playbook's on_failure steps show under in a run's status
HUMAN_ACTIONS = ("core.approve", "core.confirm")  # wait for people in the run; no activity, nothing to undo
CONFIRM_ACTION = "core.confirm"
RUN_ACTION = "playbook.run"  # a sub-playbook (bot/actions/playbooks.py): a child run


@dataclass(frozen=True)
class Problem:
    """A finding and where in the document it is (keys and list indexes, as in the YAML)."""

    loc: Loc
    message: str
    warning: bool = False  # worth fixing, but the playbook loads (validate prints it)


def registered_actions() -> Mapping[str, ActionSpec]:
    """The action registry with the shipped catalog imported, so no caller must remember to."""
    try:
        import bot.actions.catalog  # noqa: F401  (importing it registers every shipped action)
    except ModuleNotFoundError as exc:
        if exc.name != "bot.actions.catalog":
            raise
    return ACTIONS


def check_playbook(playbook: Playbook, actions: Mapping[str, ActionSpec]) -> list[Problem]:
    """Everything wrong with a schema-valid playbook, in document order; empty when it may run."""
    checker = _Checker(playbook, actions)
    checker.run()
    return checker.problems


def dotted(loc: Loc) -> str:
    """`with.matchers[0]`: a location as an author reads it."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def error_text(err: Mapping[str, Any]) -> str:
    """A pydantic error's message without pydantic's prefixes, with the offending value."""
    ctx = err.get("ctx") or {}
    if err["type"] == "value_error" and "error" in ctx:
        return str(ctx["error"])
    message = err["msg"]
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) and err["type"] not in ("missing", "extra_forbidden"):
        message += f" (got {value!r})"
    return message


def suggestion(word: str, choices: list[str]) -> str:
    """`; did you mean 'x'?` for the closest choice, or nothing: most unknown names are typos."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class _Scope:
    """What a template may read: which variables, and which steps have finished by then."""

    variables: frozenset[str]
    finished: frozenset[str] = frozenset()
    own: str | None = None  # the step the template belongs to (compensations may read it)
    own_readable: bool = False
    group: ParallelGroup | None = None  # the parallel group the template's step runs in
    in_when: bool = False
    secrets: bool = False  # secret() may be called (a step's or a compensation's with:)
    foreach: ForeachGroup | None = None  # the foreach group whose items the template's step runs in
    call: bool = False  # a playbook.run step's with: (its values become a child run's params)


class _Checker:
    def __init__(self, playbook: Playbook, actions: Mapping[str, ActionSpec]) -> None:
        self.playbook = playbook
        self.actions = actions
        self.problems: list[Problem] = []
        self.leaf_ids = [step.id for step in playbook.leaf_steps()]
        self.groups = {item.id: item for item in playbook.steps if isinstance(item, ParallelGroup)}
        self.foreach = {item.id: item for item in playbook.steps if isinstance(item, ForeachGroup)}
        self.inner = {step.id: group for group in self.foreach.values() for step in group.steps}
        self.top_ids = [item.id for item in playbook.steps]
        # core.confirm steps whose choices are written out: a when comparing their answer to anything else is a typo
        self.choices = {
            step.id: list(step.with_["choices"]) for step in playbook.leaf_steps()
            if step.action == CONFIRM_ACTION and isinstance(step.with_.get("choices"), list)
            and all(isinstance(c, str) and not _dynamic(c) for c in step.with_["choices"])
        }

    def add(self, loc: Loc, message: str, *, warning: bool = False) -> None:
        self.problems.append(Problem(loc, message, warning))

    def run(self) -> None:
        self.check_params()
        for where, message in vars_problems(self.playbook.vars):
            self.add(where, message)
        self.check_triggers()
        self.check_concurrency()
        finished: set[str] = set()
        for i, item in enumerate(self.playbook.steps):
            loc: Loc = ("steps", i)
            if isinstance(item, ParallelGroup):
                if item.when is not None:
                    scope = _Scope(STEP_VARS, frozenset(finished), own=item.id, group=item, in_when=True)
                    self.check_template(item.when, loc + ("when",), "when", scope)
                    self.check_choices(item.when, loc + ("when",))
                for j, step in enumerate(item.parallel):
                    self.check_step(step, loc + ("parallel", j), frozenset(finished), item)
                finished.update(step.id for step in item.parallel)
            elif isinstance(item, ForeachGroup):
                self.check_foreach(item, loc, frozenset(finished))
                finished.add(item.id)
            else:
                self.check_step(item, loc, frozenset(finished), None)
                finished.add(item.id)
        self.check_on_failure(finished)

    # -- params and triggers --------------------------------------------------------------

    def check_params(self) -> None:
        for name, spec in self.playbook.params.items():
            loc: Loc = ("params", name)
            if not name.isidentifier():
                self.add(loc, f"params: param name {name!r} must be an identifier (letters, digits, _) "
                         "so templates can read params.<name>")
            self.check_spec(name, spec, loc, f"params.{name}")

    def check_spec(self, name: str, spec: ParamSpec, loc: Loc, label: str) -> None:
        """One param's declaration and, for arrays and objects, every nested one: a rule that no value
        could meet, or a default its own spec refuses, is caught here rather than at the first run."""
        if spec.pattern is not None and spec.type != "string":
            self.add(loc + ("pattern",), f"{label}.pattern: only string params can have a pattern")
        for k, option in enumerate(spec.enum or []):
            try:
                coerce_value(name, spec.model_copy(update={"enum": None, "pattern": None}), option)
            except ValueError as exc:
                self.add(loc + ("enum", k), f"{label}.enum[{k}]: {exc}")
        if spec.items is not None:
            self.check_spec(f"{name}[]", spec.items, loc + ("items",), f"{label}.items")
        for key, prop in (spec.properties or {}).items():
            self.check_spec(f"{name}.{key}", prop, loc + ("properties", key), f"{label}.properties.{key}")
        if spec.default is not None:
            if spec.required:
                self.add(loc + ("required",), f"{label}: required: true makes the default unused")
            try:
                coerce_value(name, spec, spec.default)
            except ValueError as exc:
                self.add(loc + ("default",), f"{label}.default: {exc}")

    def check_triggers(self) -> None:
        for k, trigger in enumerate(self.playbook.triggers.alertmanager):
            found = 0
            for j, line in enumerate(trigger.matchers):
                try:
                    found += len(parse_matchers(line))
                except MatcherError as exc:
                    found += 1
                    self.add(("triggers", "alertmanager", k, "matchers", j), f"triggers.alertmanager[{k}].matchers[{j}]: {exc}")
            if not found:
                self.add(
                    ("triggers", "alertmanager", k, "matchers"),
                    f"triggers.alertmanager[{k}].matchers: no matcher given, so every alert would start this playbook",
                )
            self.check_trigger_params("alertmanager", k, trigger.params)
        for kind, triggers in (("pagerduty", self.playbook.triggers.pagerduty),
                               ("opsgenie", self.playbook.triggers.opsgenie)):
            for k, other in enumerate(triggers):
                self.check_trigger_params(kind, k, other.params)
        self.check_schedules()

    def check_schedules(self) -> None:
        """A schedule's params are literals every firing uses: checked now, not at 03:00."""
        seen: dict[str, int] = {}
        for k, entry in enumerate(self.playbook.triggers.schedule):
            label = f"triggers.schedule[{k}]"
            key = entry.id or str(k)
            if key in seen:
                self.add(("triggers", "schedule", k, "id"), f"{label}.id: {key!r} is also triggers.schedule[{seen[key]}]'s id")
            seen.setdefault(key, k)
            loc: Loc = ("triggers", "schedule", k, "params")
            templates = list(_strings(entry.params, loc))
            for where, _ in templates:
                self.add(where, f"{dotted(where)}: schedule params are literal values (no templates: nothing is "
                         "known before a scheduled run starts)")
            if templates:
                continue
            try:
                coerce_params(self.playbook, entry.params)
            except ParamError as exc:
                for name, message in exc.problems:
                    self.add(loc + ((name,) if name in entry.params else ()), f"{label}.params: {message}")

    def check_trigger_params(self, kind: str, k: int, params: dict[str, Any]) -> None:
        """A trigger's params: declared, templates over `alert` only, constants of the declared type."""
        declared = self.playbook.params
        loc: Loc = ("triggers", kind, k, "params")
        label = f"triggers.{kind}[{k}].params"
        for key, value in params.items():
            if key not in declared:
                self.add(loc + (key,), f"{label}: {unknown_param_message(key, declared)}")
                continue
            templates = list(_strings(value, loc + (key,)))
            for where, source in templates:
                self.check_template(source, where, dotted(where), _Scope(TRIGGER_VARS))
            if not templates and value is not None:
                try:
                    coerce_value(key, declared[key], value)
                except ValueError as exc:
                    self.add(loc + (key,), f"{label}.{key}: {exc}")
        for name, spec in declared.items():
            if spec.is_required and params.get(name) is None:
                self.add(loc, f"{label}: required param {name!r} is not set, so an alert could never start a run")

    def check_concurrency(self) -> None:
        lock = self.playbook.concurrency
        if lock is None:
            return
        loc: Loc = ("concurrency", "key")
        if not is_template(lock.key):
            self.add(loc, f"concurrency.key: {lock.key!r} is the same for every run, so all runs of every playbook "
                     "with this key share one lock; if that is meant, fine, else template it, e.g. "
                     "\"{{ params.service }}\"", warning=True)
        self.check_template(lock.key, loc, "concurrency.key", _Scope(LOCK_KEY_VARS))

    # -- steps ----------------------------------------------------------------------------

    # -- foreach groups (format v1.1) ------------------------------------------------------

    def check_foreach(self, group: ForeachGroup, loc: Loc, finished: frozenset[str]) -> None:
        """The items' source, the `as` name, and each inner step with this item's scope: the
        outer steps finished before the group, this item's earlier steps, the `as` name and index."""
        outer = _Scope(STEP_VARS, finished, own=group.id)
        if group.when is not None:
            self.check_template(group.when, loc + ("when",), "when", replace(outer, in_when=True))
        source = group.foreach
        if isinstance(source, list):
            if len(source) > FOREACH_HARD_MAX:
                self.add(loc + ("foreach",), f"foreach: {len(source)} items listed; at most {FOREACH_HARD_MAX} "
                         "(and the worker's PLAYBOOK_BOT_FOREACH_MAX, default 500, per run)")
        elif not is_template(source):
            self.add(loc + ("foreach",), f"foreach: {source!r} is not a list: give a list ([a, b]) or a template "
                     "that renders to one (\"{{ params.hosts }}\")")
        else:
            self.check_template(source, loc + ("foreach",), "foreach", outer)
            self.check_foreach_source(source, loc + ("foreach",))
        name = group.as_
        if name in FOREACH_NAMES_TAKEN or name in _GLOBALS:
            taken = "a template global" if name in _GLOBALS else "what templates already read by that name"
            self.add(loc + ("as",), f"as: {name!r} would hide {taken}; pick another name (e.g. host)")
        elif name in self.playbook.params:
            self.add(loc + ("as",), f"as: {name!r} is also a param's name; templates read params.{name} anyway, "
                     "but pick another name so nobody reads one for the other")
        if isinstance(group.max_failures, int) and group.max_failures > FOREACH_HARD_MAX:
            self.add(loc + ("max_failures",), f"max_failures: at most {FOREACH_HARD_MAX}; say \"all\" to keep going")
        variables = STEP_VARS | {name, "index"}
        done = set(finished)
        for j, step in enumerate(group.steps):
            self.check_step(step, loc + ("steps", j), frozenset(done), None, foreach=group, variables=variables)
            done.add(step.id)

    def check_foreach_source(self, source: str, loc: Loc) -> None:
        """Only a whole `{{ expression }}` renders to a list; over a single-valued param it never can."""
        whole = _WHOLE_EXPR.match(source)
        if not whole or "{{" in whole.group("expr") or "}}" in whole.group("expr"):
            self.add(loc, "foreach: the template must be one {{ expression }} that gives a list (text around it, "
                     "or {% %} blocks, make a string)")
            return
        try:
            tree = ENV.parse("{{" + whole.group("expr") + "}}")
        except TemplateSyntaxError:
            return  # reported by check_template
        output = tree.body[0] if tree.body else None
        expr = output.nodes[0] if isinstance(output, nodes.Output) and output.nodes else None
        if isinstance(expr, nodes.Getattr) and isinstance(expr.node, nodes.Name) and expr.node.name == "params":
            spec = self.playbook.params.get(expr.attr)
            if spec is not None and spec.type in ("string", "integer", "number", "boolean"):
                self.add(loc, f"foreach: params.{expr.attr} is a {spec.type}, not a list; declare it "
                         "type: array (given as JSON or a,b,c)")
        elif isinstance(expr, (nodes.Const, nodes.Dict)):
            self.add(loc, "foreach: that expression is not a list")

    def check_step(self, step: Step, loc: Loc, finished: frozenset[str], group: ParallelGroup | None,
                   *, on_failure: bool = False, foreach: ForeachGroup | None = None,
                   variables: frozenset[str] = STEP_VARS) -> None:
        scope = _Scope(variables, finished, own=step.id, group=group, foreach=foreach)
        self.check_action(step.action, step.with_, loc, "")
        if step.action == RUN_ACTION:
            self.check_call(step, loc)
        self.check_timing(step.timeout, step.retry, loc, "")
        if step.when is not None:
            self.check_template(step.when, loc + ("when",), "when", replace(scope, in_when=True))
            self.check_choices(step.when, loc + ("when",))
        if step.action in HUMAN_ACTIONS:
            self.check_human(step, loc, on_failure)
        self.check_spelled_refs(step.with_, loc, len(loc))
        call = step.action == RUN_ACTION  # a child's params are data: a secret would land in its history
        for where, source in _strings(step.with_, loc + ("with",)):
            self.check_template(source, where, dotted(where[len(loc):]), replace(scope, secrets=not call, call=call))
        for where, message, warning in sink_problems(self.playbook.params, step.action, step.with_, loc + ("with",),
                                                     foreach):
            self.add(where, f"{dotted(where[len(loc):])}: {message}", warning=warning)
        if step.compensate is not None:
            self.check_compensation(step.compensate, loc + ("compensate",), replace(scope, own_readable=True))
        if step.fallback is not None:
            self.check_fallback(step.fallback, loc + ("fallback",), replace(scope, secrets=True))
        if not on_failure:  # check_on_failure says what its steps may not use
            self.check_failure_fields(step, loc, group, foreach)

    def check_call(self, step: Step, loc: Loc) -> None:
        """playbook.run: a literal child name (so cycles are found at load), and none of the fields
        that would retry, time out or undo the call as a whole: the child's own steps do that."""
        name = step.with_.get("name")
        if isinstance(name, str) and is_template(name):
            self.add(loc + ("with", "name"), "with.name: must be a literal playbook name, not a template: the "
                     "child is known when the playbook loads, so unknown names and cycles are caught then")
        if step.compensate is not None:
            self.add(loc + ("compensate",), "compensate: a playbook.run step is undone by its child run's own "
                     "compensations, in reverse; remove compensate:")
        if step.retry != DEFAULT_RETRY:
            self.add(loc + ("retry",), "retry: a playbook.run step is never retried as a whole (its child's steps "
                     "retry on their own); remove retry:")
        if step.timeout != DEFAULT_TIMEOUT:
            self.add(loc + ("timeout",), "timeout: a playbook.run step waits for its child as long as it takes; "
                     "to limit that, say with.timeout (the child is cancelled and undoes itself when it passes)")

    def check_failure_fields(self, step: Step, loc: Loc, group: ParallelGroup | None,
                             foreach: ForeachGroup | None = None) -> None:
        """v1.1 failure paths: what core.fail, irreversible and settles may be combined with."""
        if step.action == FAIL_ACTION:
            for key, used in (("on_failure", step.on_failure == "continue"), ("fallback", step.fallback is not None),
                              ("compensate", step.compensate is not None), ("settles", step.settles is not None),
                              ("irreversible", step.irreversible)):
                if used:
                    self.add(loc + (key,), f"{key}: a core.fail step ends the run on purpose; remove {key}:")
        if step.irreversible and step.compensate is not None:
            self.add(loc + ("irreversible",), "irreversible: true and compensate: contradict each other: an "
                     "irreversible step has no undo; remove one of them")
        if step.settles is not None:
            if foreach is not None:
                self.check_item_settles(step, loc + ("settles",), foreach)
            else:
                self.check_settles(step, loc + ("settles",), group)

    def check_human(self, step: Step, loc: Loc, on_failure: bool) -> None:
        """core.approve / core.confirm wait for people inside the run: nothing to undo or fall back to."""
        if on_failure:
            self.add(loc + ("action",), f"action: {step.action} cannot run in on_failure: nobody is asked once the "
                     "run has ended; post to Slack instead (slack.post)")
            return
        why = {
            "on_failure": "an approval or answer that could not be asked must never read as given",
            "compensate": "it changes nothing, so there is nothing to undo",
            "fallback": "a rejection or timeout is not a failure to fall back from",
            "settles": "it does no work that could settle another step's undo",
            "irreversible": "it changes nothing",
        }
        for key, used in (("on_failure", step.on_failure != "fail"), ("compensate", step.compensate is not None),
                          ("fallback", step.fallback is not None),
                          ("settles", step.settles is not None), ("irreversible", step.irreversible)):
            if used:
                self.add(loc + (key,), f"{key}: not allowed on a {step.action} step: {why[key]}; remove {key}:")
        if step.action == CONFIRM_ACTION and ("choices" in step.with_) == ("input" in step.with_):
            self.add(loc + ("with",), "with: a core.confirm step takes exactly one of choices: [..] (pick one) or "
                     "input: {type, pattern} (type a value)")
        if step.action == CONFIRM_ACTION and step.impact == "high":
            self.add(loc + ("impact",), "impact: a core.confirm step cannot also wait for approval; put a "
                     "core.approve step before it (or make the steps it leads to impact: high)")

    def check_choices(self, source: str, loc: Loc) -> None:
        """`steps.pick.output.choice == 'scael'` against a step with literal choices: never true, a typo."""
        try:
            tree = ENV.parse(source)
        except TemplateSyntaxError:
            return  # check_template reports it
        for compare in tree.find_all(nodes.Compare):
            sides = [compare.expr, *(operand.expr for operand in compare.ops)]
            for i, operand in enumerate(compare.ops):
                if operand.op not in ("eq", "ne", "in", "notin"):
                    continue
                left, right = sides[i], sides[i + 1]
                for ref, other in ((left, right), (right, left)):
                    step_id = _choice_ref(ref)
                    if step_id is None or step_id not in self.choices:
                        continue
                    if operand.op in ("in", "notin") and other is left:
                        continue  # `'x' in steps.pick.output.choice` is a substring test
                    for word in _literal_words(other):
                        if word not in self.choices[step_id]:
                            known = self.choices[step_id]
                            self.add(loc, f"when: compares steps.{step_id}.output.choice with {word!r}, which is not "
                                     f"one of its choices{suggestion(word, known)} (choices: {', '.join(known)})")

    def check_item_settles(self, step: Step, loc: Loc, foreach: ForeachGroup) -> None:
        """Inside an item: an earlier step of the same item, or a step finished before the group."""
        target = step.settles
        assert target is not None
        label = f"settles: {target!r}"
        inner = [s.id for s in foreach.steps]
        if "[" in target:
            self.add(loc, f"{label}: inside an item, name this item's step by its id (settles: drain)")
        elif target == step.id:
            self.add(loc, f"{label} is this step itself; a step can only settle an earlier step's compensation")
        elif target in inner:
            if inner.index(target) > inner.index(step.id):
                self.add(loc, f"{label} runs later in the item; a step can only settle a step that finished before it")
            elif foreach.steps[inner.index(target)].compensate is None:
                self.add(loc, f"{label} has no compensate:, so there is nothing to settle", warning=True)
        elif target in self.inner:
            self.add(loc, f"{label} is a step of foreach {self.inner[target].id!r}; name it per item (settles: "
                     f"{self.inner[target].id}[0].{target}) or settle the whole group")
        else:
            self.check_settles(step, loc, None, own_top=self.top_ids.index(foreach.id))

    def check_settles(self, step: Step, loc: Loc, group: ParallelGroup | None, own_top: int | None = None) -> None:
        """`settles` names a step (or group) that has finished before this one starts."""
        target = step.settles
        assert target is not None
        label = f"settles: {target!r}"
        if target == step.id:
            self.add(loc, f"{label} is this step itself; a step can only settle an earlier step's compensation")
            return
        if "[" in target or target in self.foreach or target in self.inner:
            self.check_settles_foreach(target, loc, label, own_top if own_top is not None else
                                       self.top_ids.index(group.id if group is not None else step.id))
            return
        known = self.leaf_ids + list(self.groups)
        if target not in known:
            self.add(loc, f"{label}: unknown step{suggestion(target, known)} (steps: {', '.join(self.leaf_ids)})")
            return
        mine = group.id if group is not None else step.id
        own_top = own_top if own_top is not None else self.top_ids.index(mine)
        target_top = next(
            (i for i, item in enumerate(self.playbook.steps)
             if item.id == target or (isinstance(item, ParallelGroup) and target in {s.id for s in item.parallel})),
            None,
        )
        if target_top is None or target_top >= own_top:
            where = "runs in parallel with this step" if target_top == own_top else "runs later"
            self.add(loc, f"{label} {where}; a step can only settle a step that finished before it starts")
            return
        settled = self.groups[target].parallel if target in self.groups else [
            s for s in self.playbook.leaf_steps() if s.id == target
        ]
        if not any(s.compensate is not None for s in settled):
            self.add(loc, f"{label} has no compensate:, so there is nothing to settle", warning=True)

    def check_settles_foreach(self, target: str, loc: Loc, label: str, own_top: int) -> None:
        """A whole foreach group, or one item's step as `roll[2].drain`, from after the group."""
        group_id, _, rest = target.partition("[")
        if target in self.inner:
            group = self.inner[target]
            self.add(loc, f"{label} runs once per item of foreach {group.id!r}: settle the whole group "
                     f"(settles: {group.id}) or one item's step (settles: {group.id}[0].{target})")
            return
        group = self.foreach.get(group_id)
        if group is None:
            known = list(self.foreach)
            self.add(loc, f"{label}: {group_id!r} is not a foreach group{suggestion(group_id, known)}"
                     + (f" (foreach groups: {', '.join(known)})" if known else ""))
            return
        if rest:
            inner = rest.partition("].")[2]
            if inner not in {s.id for s in group.steps}:
                ids = [s.id for s in group.steps]
                self.add(loc, f"{label}: foreach {group.id!r} has no step {inner!r}{suggestion(inner, ids)} "
                         f"(its steps: {', '.join(ids)})")
                return
        target_top = self.top_ids.index(group.id)
        if target_top >= own_top:
            where = "is the group this step runs in" if target_top == own_top else "runs later"
            self.add(loc, f"{label} {where}; a step can only settle a step that finished before it starts")
            return
        if not any(s.compensate is not None for s in group.steps):
            self.add(loc, f"{label} has no compensate:, so there is nothing to settle", warning=True)

    def check_fallback(self, fallback: Fallback, loc: Loc, scope: _Scope) -> None:
        if fallback.action == RUN_ACTION:
            self.add(loc + ("action",), "fallback.action: playbook.run cannot be a fallback; make the child its own "
                     "step (with when:) instead")
            return
        if fallback.action == FAIL_ACTION:
            self.add(loc + ("action",), "fallback.action: core.fail is what a failed step does anyway; "
                     "remove the fallback (or say why in a core.log)")
            return
        self.check_stand_in(fallback, loc, "fallback.", scope)

    def check_on_failure(self, finished: set[str]) -> None:
        """Playbook-level on_failure: plain steps after the saga, reading any step and run.error."""
        done = set(finished)
        if self.playbook.on_failure and ON_FAILURE in self.groups:
            i = self.top_ids.index(ON_FAILURE)
            self.add(("steps", i, "id"), f"id: a parallel group cannot be called {ON_FAILURE!r} in a playbook with "
                     "on_failure: steps (that is how they are grouped in the run's status); rename it")
        for i, step in enumerate(self.playbook.on_failure):
            loc: Loc = ("on_failure", i)
            for key, used in (("compensate", step.compensate is not None), ("settles", step.settles is not None),
                              ("on_failure", step.on_failure == "continue")):
                if used:
                    why = {"compensate": "they run after the saga, so nothing would ever undo them",
                           "settles": "the saga has already run", "on_failure": "each of them goes on anyway"}[key]
                    self.add(loc + (key,), f"on_failure[{i}].{key}: not allowed in on_failure steps: {why}")
            if step.action == FAIL_ACTION:
                self.add(loc + ("action",), f"on_failure[{i}].action: core.fail cannot run in on_failure: "
                         "the run has already failed")
            self.check_step(step, loc, frozenset(done), None, on_failure=True)
            done.add(step.id)

    def check_compensation(self, comp: Compensation, loc: Loc, scope: _Scope) -> None:
        if comp.action == RUN_ACTION:
            self.add(loc + ("action",), "compensate.action: playbook.run cannot undo a step (a child run would "
                     "need undoing itself); use the actions that undo it")
            return
        self.check_stand_in(comp, loc, "compensate.", replace(scope, secrets=True))

    def check_stand_in(self, call: Compensation | Fallback, loc: Loc, prefix: str, scope: _Scope) -> None:
        """An undo or a fallback: an action call of its own, checked as a step's is."""
        self.check_action(call.action, call.with_, loc, prefix)
        self.check_timing(call.timeout, call.retry, loc, prefix)
        self.check_spelled_refs(call.with_, loc, len(loc) - 1)
        for where, source in _strings(call.with_, loc + ("with",)):
            self.check_template(source, where, dotted(where[len(loc) - 1 :]), scope)
        for where, message, warning in sink_problems(self.playbook.params, call.action, call.with_, loc + ("with",),
                                                     scope.foreach):
            self.add(where, f"{dotted(where[len(loc) - 1 :])}: {message}", warning=warning)

    def check_timing(self, timeout: timedelta, retry: RetryPolicy, loc: Loc, prefix: str) -> None:
        if timeout <= timedelta(0):
            self.add(loc + ("timeout",), f"{prefix}timeout: must be more than 0s")
        if retry.initial_interval <= timedelta(0):
            self.add(loc + ("retry", "initial_interval"), f"{prefix}retry.initial_interval: must be more than 0s")
        if retry.max_interval < retry.initial_interval:
            self.add(loc + ("retry", "max_interval"),
                     f"{prefix}retry.max_interval: must not be shorter than initial_interval")

    def check_action(self, name: str, with_: dict[str, Any], loc: Loc, prefix: str) -> None:
        spec = self.actions.get(name)
        if spec is None:
            known = sorted(self.actions)
            listed = f"known: {', '.join(known)}" if known else "no actions are registered"
            self.add(loc + ("action",), f"{prefix}unknown action {name!r}{suggestion(name, known)} ({listed})")
            return
        model = spec.params
        accepted: dict[str, str] = {}
        shown: list[str] = []
        for field_name, field in model.model_fields.items():
            accepted[field_name] = field_name
            if field.alias:
                accepted[field.alias] = field_name
            if isinstance(field.validation_alias, str):
                accepted[field.validation_alias] = field_name
            shown.append(field.alias or field_name)
        label = f"{prefix}with"
        if model.model_config.get("extra") == "forbid":
            for key in with_:
                if key not in accepted:
                    self.add(loc + ("with", key), f"{label}: unknown key {key!r} for {name}"
                             f"{suggestion(str(key), shown)} (allowed: {', '.join(shown) or 'none'})")
        given = {accepted[key] for key in with_ if key in accepted}
        for field_name, field in model.model_fields.items():
            undo_default = isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(COMPENSATION_DEFAULT)
            if field_name in given or not (field.is_required() or (undo_default and prefix != "compensate.")):
                continue
            why = " (only a compensation may leave it out)" if undo_default else ""
            self.add(loc + ("with",), f"{label}: missing required key {field.alias or field_name!r} for {name}{why}")
        self.check_literals(model, with_, accepted, loc + ("with",), label)

    def check_literals(self, model: type[BaseModel], with_: dict[str, Any], accepted: dict[str, str],
                       loc: Loc, label: str) -> None:
        """Validate what is already known; values with templates are checked by the action after rendering."""
        try:
            model.model_validate(with_)
        except ValidationError as exc:
            found: dict[Loc, list[tuple[Loc, str, str]]] = {}  # by top-level key: (where, union branch, text)
            templated: set[str] = set()  # fields where some error touched a template: they may render valid
            for err in exc.errors(include_url=False):
                if err["type"] in ("missing", "extra_forbidden") or not err["loc"]:
                    continue  # reported above, or a whole-model rule that may depend on templated values
                located = _literal_path(with_, err["loc"], accepted)
                if located is None:
                    templated.add(accepted.get(str(err["loc"][0]), str(err["loc"][0])))
                else:
                    where, branch = located
                    found.setdefault(where[:1], []).append((where, branch, error_text(err)))
            for top, errors in found.items():
                if accepted.get(str(top[0])) in templated:
                    continue
                if any(branch for _, branch, _ in errors):  # a union: say why each allowed form failed
                    reasons = "; ".join(f"as {branch}{dotted(where[1:]) and ' at ' + dotted(where[1:])}: {text}"
                                        for where, branch, text in errors)
                    self.add(loc + top, f"{label}.{dotted(top)}: matches none of its allowed forms ({reasons})")
                else:
                    for where, _, text in errors:
                        self.add(loc + where, f"{label}.{dotted(where)}: {text}")
        except Exception:  # noqa: BLE001  a validator that chokes on a literal: the action reports it when run
            return

    # -- templates ------------------------------------------------------------------------

    def check_template(self, source: str, loc: Loc, label: str, scope: _Scope) -> None:
        try:
            tree = ENV.parse(source)
            undeclared = meta.find_undeclared_variables(tree)  # (compiles it: an unknown filter is refused here)
        except TemplateSyntaxError as exc:  # (and TemplateAssertionError, its kind)
            self.add(loc, f"{label}: template syntax error (line {exc.lineno} of the template): {exc.message}")
            return
        for name in sorted(undeclared - _GLOBALS - scope.variables):
            if scope.variables == TRIGGER_VARS:
                why = "trigger params can only use alert: params, steps and run do not exist before the run starts"
            elif scope.variables == LOCK_KEY_VARS:
                why = "a concurrency key is decided before the run starts: it can use params, vars and alert"
            else:
                why = f"templates can use {', '.join(sorted(scope.variables))}"
            self.add(loc, f"{label}: unknown template variable {name!r} ({why})")
        if "params" in scope.variables:
            for name in sorted(_attr_refs(tree, "params")):
                if name not in self.playbook.params:
                    self.add(loc, f"{label}: template reads {unknown_param_message(name, self.playbook.params)}")
        if "vars" in scope.variables:
            for name in sorted(_attr_refs(tree, "vars") - set(self.playbook.vars)):
                self.add(loc, f"{label}: template reads {unknown_var_message(name, self.playbook.vars)}")
        if "steps" in scope.variables:
            for ref in sorted(_attr_refs(tree, "steps")):
                why = self.step_ref_problem(ref, scope)
                if why:
                    self.add(loc, f"{label}: template reads steps.{ref}: {why}")
        self.check_secrets(tree, loc, label, scope)

    def check_secrets(self, tree: nodes.Template, loc: Loc, label: str, scope: _Scope) -> None:
        """secret() only in a with:, called directly, with a literal name the playbook declares."""
        callees: set[int] = set()
        for call in tree.find_all(nodes.Call):
            if not (isinstance(call.node, nodes.Name) and call.node.name == "secret"):
                continue
            callees.add(id(call.node))
            literal = (
                len(call.args) == 1 and not call.kwargs and not call.dyn_args and not call.dyn_kwargs
                and isinstance(call.args[0], nodes.Const) and isinstance(call.args[0].value, str)
                and SECRET_NAME.match(call.args[0].value)
            )
            if scope.in_when:
                self.add(loc, f"{label}: secret() cannot decide a when: secrets are only resolved inside actions")
            elif scope.call:
                self.add(loc, f"{label}: secret() cannot be passed to a child run: its params are plain data, kept in "
                         "its history; let the child playbook declare and read the secret itself")
            elif not scope.secrets:
                self.add(loc, f"{label}: secret() is only allowed in a step's or a compensation's with:, "
                         "where the action resolves it")
            elif not literal:
                self.add(loc, f"{label}: secret() takes one literal name like secret(\"DEPLOY_TOKEN\")")
            elif (name := call.args[0].value) not in self.playbook.secrets:
                declared = list(self.playbook.secrets)
                self.add(loc, f"{label}: secret {name!r} is not declared: add it to the playbook's secrets: list"
                         f"{suggestion(name, declared)}")
        for node in tree.find_all((nodes.Name, nodes.Macro)):
            if node.name == "secret" and id(node) not in callees:
                self.add(loc, f"{label}: secret can only be called, as secret(\"NAME\"); it cannot be read, "
                         "stored, passed on or redefined")
        for const in tree.find_all(nodes.Const):
            if isinstance(const.value, str) and any(ch in const.value for ch in MARKER_CHARS):
                self.add(loc, f"{label}: the characters U+E000 and U+E001 are reserved for secret references")

    def check_spelled_refs(self, with_: dict[str, Any], loc: Loc, start: int) -> None:
        """`${secret:X}` written out is plain text (only secret() makes a reference): say so at load."""
        for where, text in texts_at(with_, loc + ("with",)):
            for match in SECRET_REF.finditer(text):
                name = match.group(1)
                self.add(where, f"{dotted(where[start:])}: {match.group(0)} is plain text, not a secret reference: "
                         f"write {{{{ secret(\"{name}\") }}}} and list {name} under secrets:")

    def step_ref_problem(self, ref: str, scope: _Scope) -> str | None:
        """Why a template may not read `steps.<ref>` here, or None: only finished steps have output."""
        if ref in scope.finished:
            return None
        later = "a template can only read steps that finished before it"
        if ref == scope.own:
            if scope.own_readable:
                return None
            if scope.group is not None and ref == scope.group.id:
                return "that is this parallel group itself; its when is decided before its steps run"
            return f"that is this step itself; {later}"
        if scope.group is not None and ref in {step.id for step in scope.group.parallel}:
            if scope.own == scope.group.id:
                return f"{ref!r} is a step of this group; its when is decided before its steps run"
            return f"{ref!r} runs in parallel with this step (group {scope.group.id!r}); {later}"
        if scope.group is not None and ref == scope.group.id:
            return f"that is the parallel group this step belongs to; {later}"
        if scope.foreach is not None and ref == scope.foreach.id:
            return f"that is the foreach group this step runs in; {later}"
        if scope.foreach is not None and ref in {step.id for step in scope.foreach.steps}:
            return f"step {ref!r} runs later in the item; {later}"
        if ref in self.inner:
            group = self.inner[ref].id
            if group in scope.finished:
                return (f"{ref!r} runs once per item of foreach {group!r}: read steps.{group}.output "
                        f"(a list, one mapping per item: steps.{group}.output[0].{ref})")
            return f"{ref!r} is a step of foreach {group!r}, which runs later; {later}"
        if ref in self.foreach:
            return f"foreach group {ref!r} runs later; {later}"
        if ref in self.groups:
            members = ", ".join(step.id for step in self.groups[ref].parallel)
            return f"{ref!r} is a parallel group and has no output of its own; read one of its steps ({members})"
        if ref in self.leaf_ids:
            return f"step {ref!r} runs later; {later}"
        return f"unknown step {ref!r}{suggestion(ref, self.leaf_ids)} (steps: {', '.join(self.leaf_ids)})"


def _dynamic(value: str) -> bool:
    return is_template(value) or bool(SECRET_REF.search(value))


def _strings(value: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Every template string in a nested value, with where it sits."""
    return ((where, text) for where, text in texts_at(value, loc) if is_template(text))


def _has_dynamic(value: Any) -> bool:
    if isinstance(value, str):
        return _dynamic(value)
    if isinstance(value, dict):
        return any(_has_dynamic(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_dynamic(item) for item in value)
    return False


def _literal_path(with_: dict[str, Any], err_loc: tuple[Any, ...],
                  accepted: dict[str, str]) -> tuple[Loc, str] | None:
    """Where in `with` a params error points and through which union branch, or None when a template
    is involved (it may render to something valid)."""
    first = accepted.get(str(err_loc[0]), err_loc[0])
    key = next((k for k in with_ if accepted.get(k) == first), None)
    if key is None:
        return None
    where: list[str | int] = [key]
    branch: list[str] = []
    node: Any = with_[key]
    for part in err_loc[1:]:
        if isinstance(node, dict) and part in node:
            node = node[part]
            where.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            where.append(part)
        elif isinstance(node, str) and _dynamic(node):
            return None
        else:  # a union member's tag (`int`, `list[int]`): no key in the document
            branch.append(str(part))
    return (None if _has_dynamic(node) else (tuple(where), ".".join(branch)))


def _choice_ref(node: nodes.Node) -> str | None:
    """The step id in `steps.<id>.output.choice` (attribute or ['key'] spelling), else None."""
    path: list[str] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            path.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            path.append(node.arg.value)
        else:
            return None
        node = node.node
    if isinstance(node, nodes.Name) and node.name == "steps" and len(path) == 3 and path[:2] == ["choice", "output"]:
        return path[2]
    return None


def _literal_words(node: nodes.Node) -> list[str]:
    """A literal string, or the literal strings of a literal list/tuple; anything else: nothing known."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (nodes.List, nodes.Tuple)):
        return [item.value for item in node.items if isinstance(item, nodes.Const) and isinstance(item.value, str)]
    return []


def _attr_refs(tree: nodes.Template, root: str) -> set[str]:
    """Names read as `root.<name>` or `root['<name>']`, as `templating.referenced_steps` does for steps."""
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name) and node.node.name == root:
            if isinstance(node, nodes.Getattr):
                found.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                found.add(node.arg.value)
    return found
