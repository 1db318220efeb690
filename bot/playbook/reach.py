"""Where requester-chosen params land in a URL or a command line, and what their declarations must
then promise; and that playbook constants (`vars`) stay constants.

A string param in a URL or a `shell.run` argv item should have a pattern or an enum (a warning:
existing playbooks keep loading). One that can start an argv item must refuse a leading '-' (else
the requester passes an option: `--kubeconfig=...`), and one that can start a URL chooses the host,
so only an enum will do (base URLs belong in `vars`): those two are errors.

An alert's fields and an earlier step's output are chosen by whoever sends the alert or answers the
step, and no declaration guards them: one that can start an argv item is an error too (`pod="--all"`
made `kubectl delete pod {{ alert.labels.pod }}` delete every pod), even after a `--` (a wrapper such as
`kubectl exec POD --` hands what follows to a command that reads options again); one that can start
a URL, a warning (it chooses the host; the egress rules still hold).

`k8s.run_job`'s command and args are argv items alike. A k8s step's `context` (the cluster and
its credentials) and a Job's `service_account` (the identity it runs as) are chosen by nothing but
the playbook's text or an enum param: data or an open param anywhere in them is an error.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

from jinja2 import TemplateSyntaxError, nodes

from bot.playbook import patterns
from bot.playbook.model import ForeachGroup, ParamSpec
from bot.playbook.templating import ENV, SECRET_REF, is_template, texts_at

Loc = tuple[str | int, ...]

DASH_PROBES = ("--x=y", "--x", "-x", "-X", "-1", "-")  # the most option-like first: it reads best in a message
SAFE_PATTERN = "^[a-z0-9][a-z0-9-]*$"


Finding = tuple[Loc, str, bool]  # where, message, whether it is only a warning
DATA_ROOTS = ("alert", "steps")  # what templates read that a sender or a target chooses, unguarded


def sink_problems(params: Mapping[str, ParamSpec], action: str, with_: Mapping[str, Any], loc: Loc,
                  foreach: ForeachGroup | None = None) -> list[Finding]:
    """(where, message, warning) for every string param that reaches a URL or argv item unguarded;
    `loc` is `with`'s; `foreach`: the group whose items the step runs in."""
    found: list[Finding] = []
    item = _item(params, foreach)
    url = with_.get("url")
    if isinstance(url, str):
        found += _check(params, url, "URL", loc + ("url",), _roots(item, lambda spec: spec.enum is not None))
    matchers = with_.get("matchers") if action == "alertmanager.silence" else None
    if isinstance(matchers, list):
        roots = _roots(item, lambda spec: not _admits(spec, MATCHER_PROBES))
        for i, entry in enumerate(matchers):
            if isinstance(entry, str):
                found += _matcher_problems(params, entry, loc + ("matchers", i), roots)
    query = with_.get("query") if action == "prometheus.query" else None
    if isinstance(query, str):
        found += _query_problems(params, query, loc + ("query",),
                                 _roots(item, lambda spec: not _admits(spec, QUERY_PROBES)))
    for field in ARGV_FIELDS.get(action, ()):  # a container's command and args are argv too
        argv = with_.get(field)
        if isinstance(argv, list):
            roots = _roots(item, lambda spec: _dash_probe(spec) is None)
            for i, entry in enumerate(argv):
                if isinstance(entry, str):
                    found += _check(params, entry, "argv item", loc + (field, i), roots)
    for field in CHOOSERS.get(action, ()) + (("context",) if action.startswith("k8s.") else ()):
        value = with_.get(field)
        if isinstance(value, str):
            found += _chooser_problems(params, value, field, loc + (field,),
                                       _roots(item, lambda spec: spec.enum is not None))
    return found


ARGV_FIELDS = {"shell.run": ("argv",), "k8s.run_job": ("command", "args")}
# Fields that choose whom an action acts as, besides every k8s.* step's `context` (the kubeconfig
# context: another cluster and its credentials): as a URL's host, only an enum may let a requester
# choose them, and no alert or step output may.
CHOOSERS: dict[str, tuple[str, ...]] = {"k8s.run_job": ("service_account",)}


def _chooser_problems(params: Mapping[str, ParamSpec], source: str, field: str, where: Loc,
                      data: tuple[str, ...]) -> list[Finding]:
    """An error for data, or a param without an enum, anywhere in a field that chooses a cluster or
    an identity (red team: `context: "{{ alert.labels.cluster }}"` let an alert pick any cluster the
    kubeconfig holds, unseen by the policy, which reads `environment`)."""
    if (tree := _parsed(source)) is None:
        return []
    loose = {name for name, spec in _text_specs(params).items() if spec.enum is None}
    roots = sorted(_data_read(tree, loose, data))
    if not roots:
        return []
    return [(where, f"{_shown(roots)} can choose this step's {field}, and with it the cluster or identity it acts "
             f"as; map the alert's value to a param with an enum of the allowed values (trigger params) and read "
             f"that, or write it in the playbook", False)]


_WHOLE_PARAM = re.compile(r"^\s*\{\{\s*params\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*\}\}\s*$")


def _item(params: Mapping[str, ParamSpec], foreach: ForeachGroup | None) -> tuple[str, ParamSpec | None] | None:
    """A foreach step's item as its templates read it (the `as` name), with what guards its text:
    the `items` spec of the param of strings the group iterates (`{{ params.hosts }}`), None when
    nothing does (an alert's field, a step's output, anything else). None: the playbook's own list."""
    if foreach is None or not isinstance(foreach.foreach, str):
        return None  # (the playbook's own list)
    name, source = foreach.as_, foreach.foreach
    tree = _parsed(source)
    if tree is not None and {n.name for n in _names(tree)} <= {"vars"}:
        return None  # (constants: the playbook's vars)
    whole = _WHOLE_PARAM.match(source)
    spec = params.get(whole["name"]) if whole else None
    if spec is not None and spec.type == "array" and spec.items is not None and spec.items.type == "string":
        return name, spec.items
    return name, None


def _roots(item: tuple[str, ParamSpec | None] | None, guarded: Any) -> tuple[str, ...]:
    """DATA_ROOTS, and the foreach item's name unless `guarded(its spec)` says its declaration holds."""
    if item is None or (item[1] is not None and guarded(item[1])):
        return DATA_ROOTS
    return (*DATA_ROOTS, item[0])


def _admits(spec: ParamSpec, probes: tuple[str, ...]) -> bool:
    return spec.enum is None and (spec.pattern is None or any(patterns.found(spec.pattern, p) for p in probes))


def _shown(roots: list[str]) -> str:
    return " and ".join(f"{root}.*" if root in DATA_ROOTS else root if "." in root else f"the foreach item {root!r}"
                        for root in roots)


def _check(params: Mapping[str, ParamSpec], source: str, kind: str, where: Loc,
           roots: tuple[str, ...] = DATA_ROOTS) -> list[Finding]:
    if (tree := _parsed(source)) is None:
        return []
    texts = _text_specs(params)
    strings = set(texts)
    read = _params_read(tree, strings)
    first = _leading(tree)
    starting = _params_read(first, strings) if first is not None else set()
    out = _data_first(first, kind, where, roots) if first is not None else []
    for name in sorted(read):
        spec = texts[name]
        if name in starting and kind == "URL":
            if spec.enum is None:
                out.append((where, f"param {name!r} can start this URL, so whoever starts the run could choose "
                            f"the host; give it an enum of the allowed values, or put the base URL in vars and "
                            f"read it as {{{{ vars.NAME }}}}", False))
        elif name in starting:
            probe = _dash_probe(spec)
            if probe is not None:
                why = "has no pattern or enum" if spec.pattern is None else f"its pattern {spec.pattern} admits {probe!r}"
                out.append((where, f"param {name!r} can start this argv item and {why}: the command would read "
                            f"such a value as an option; give it an enum, or a pattern that refuses a leading '-' "
                            f"(e.g. {SAFE_PATTERN})", False))
        elif spec.enum is None and spec.pattern is None:
            out.append((where, f"string param {name!r} goes into this {kind} unchecked; give it a pattern "
                        f"(e.g. {SAFE_PATTERN}) or an enum", True))
    return out


def _data_read(node: nodes.Node, loose: set[str], data: tuple[str, ...]) -> set[str]:
    """What data `node` reads: each of `data` it names, and `params.<name>` for each loose param."""
    return {n.name for n in _names(node) if n.name in data} | {f"params.{name}" for name in _params_read(node, loose)}


def _parsed(source: str) -> nodes.Template | None:
    """The template's tree; None for plain text, or a template the template checks report."""
    if not is_template(source):
        return None
    try:
        return ENV.parse(source)
    except TemplateSyntaxError:
        return None


def _data_first(first: nodes.Node, kind: str, where: Loc, data: tuple[str, ...]) -> list[Finding]:
    """A finding when data (an alert's fields, a step's output, an unguarded foreach item) can
    start the value (`first`)."""
    roots = sorted({name.name for name in _names(first) if name.name in data})
    if not roots:
        return []
    what = _shown(roots)
    if kind == "URL":
        return [(where, f"{what} can start this URL, so whoever sends the alert or answers the step chooses the "
                 "host (the egress rules still apply); put the base URL in vars and the data after it", True)]
    return [(where, f"{what} can start this argv item, and whoever sends the alert or answers the step chooses it: "
             "the command would read a value such as '--all' as an option; put literal text first "
             "(--name={{ ... }}, pod/{{ ... }}), or pass it through a param whose pattern refuses a leading '-' "
             "(a '--' before it is no help: `kubectl exec POD -- kill {{ ... }}` hands it to a command that reads "
             "options again)", False)]


_MATCHER_HEAD = re.compile(r'^\s*[A-Za-z_][A-Za-z0-9_]*\s*(?P<op>=~|!~|!=|=)\s*(?P<quote>"?)(?P<value>.*)$', re.S)
MATCHER_PROBES = ('~.+', '".+"', ".+", ".*", "a|b")  # what a value may hold to change a silence's operator or reach


def _matcher_problems(params: Mapping[str, ParamSpec], source: str, where: Loc,
                      data: tuple[str, ...] = DATA_ROOTS) -> list[Finding]:
    """A silence matcher whose operator, or regex, data can choose (red-team: an unquoted
    `pod={{ alert.labels.pod }}` given `~.+` became `pod=~".+"` and silenced every pod): data may
    fill only a quoted `=` or `!=` value. Data: an alert's fields, a step's output, a param whose
    declaration admits a value such as `~.+`."""
    if (tree := _parsed(source)) is None:
        return []
    texts = _text_specs(params)
    loose = {name for name, spec in texts.items() if _admits(spec, MATCHER_PROBES)}
    before, problem = "", None
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            if _data_read(node, loose, data):
                problem = "a block ({% ... %}) that reads data can put it anywhere in this matcher"
                break
            before += "x"  # (a block of constants)
            continue
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                before += child.data
                continue
            roots = sorted(_data_read(child, loose, data))
            if not roots:
                before += "x"  # (a constant: vars, a guarded param)
                continue
            head = _MATCHER_HEAD.match(before)
            what = _shown(roots)
            if head is None:
                problem = f"{what} can choose this matcher's label or operator"
            elif head["op"] in ("=~", "!~"):
                problem = f"{what} can choose this matcher's regex (a value such as .+ silences far more)"
            elif not head["quote"]:
                problem = (f"{what} fills this matcher's value unquoted, so a value such as ~.+ turns it into "
                           f"a regex; quote it: name=\"{{{{ ... }}}}\" (a quote in the data is then refused)")
            if problem is not None:
                break
            before += "x"
        if problem is not None:
            break
    if problem is None:
        return []
    return [(where, f"{problem}: whoever sends the alert, answers the step or starts the run would choose what "
             "the silence covers", False)]


QUERY_PROBES = ('x"} or vector(1) #', "x\\")  # what ends a PromQL string and adds to the query


def _query_problems(params: Mapping[str, ParamSpec], source: str, where: Loc, data: tuple[str, ...]) -> list[Finding]:
    """A warning for data put into a PromQL query as it is (red-team, stop 48): a label value such
    as `x"} or vector(1) #` ends its string and rewrites the query, so an `expect` can pass when
    nothing is well. `| tojson` writes it as a quoted, escaped string PromQL reads alike."""
    if (tree := _parsed(source)) is None:
        return []
    texts = _text_specs(params)
    loose = {name for name, spec in texts.items() if _admits(spec, QUERY_PROBES)}
    roots: set[str] = set()
    for output in tree.find_all(nodes.Output):
        for child in output.nodes:
            if isinstance(child, nodes.TemplateData) or (isinstance(child, nodes.Filter) and child.name == "tojson"):
                continue
            roots |= _data_read(child, loose, data)
    if not roots:
        return []
    return [(where, f"{_shown(sorted(roots))} goes into this PromQL query as it is: a value such as "
             "'x\"} or vector(1) #' ends its string and rewrites the query (an expect could then pass when "
             "nothing is well); write label={{ ... | tojson }}, which PromQL reads as one quoted string", True)]


def _text_specs(params: Mapping[str, ParamSpec]) -> dict[str, ParamSpec]:
    """The params whose text can reach a sink, with the spec that guards it: a string param's own,
    an array of strings' `items` (any item, or all of them joined, can land there)."""
    out: dict[str, ParamSpec] = {}
    for name, spec in params.items():
        if spec.type == "string":
            out[name] = spec
        elif spec.type == "array" and spec.items is not None and spec.items.type == "string":
            out[name] = spec.items
    return out


def _dash_probe(spec: ParamSpec) -> str | None:
    """A value starting with '-' the param would accept (as params.coerce_value matches), or None."""
    if spec.enum is not None:
        return None  # the author listed every value
    if spec.pattern is None:
        return DASH_PROBES[0]
    return next((probe for probe in DASH_PROBES if patterns.found(spec.pattern, probe)), None)


def _leading(tree: nodes.Template) -> nodes.Node | None:
    """What renders first: None when literal text does; a block ({% if %}) may put anything first."""
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return tree
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                if child.data.strip():
                    return None
                continue  # leading blanks: the next expression still starts the value
            return child
    return None


def _params_read(node: nodes.Node, names: set[str]) -> set[str]:
    """The params `node` reads (`params.x`, `params['x']`); all of them if it reads `params` otherwise."""
    named: set[str] = set()
    bases: set[int] = set()
    accesses = [node] if isinstance(node, (nodes.Getattr, nodes.Getitem)) else []
    for access in [*accesses, *node.find_all((nodes.Getattr, nodes.Getitem))]:
        if isinstance(access.node, nodes.Name) and access.node.name == "params":
            if isinstance(access, nodes.Getattr):
                named.add(access.attr)
            elif isinstance(access.arg, nodes.Const) and isinstance(access.arg.value, str):
                named.add(access.arg.value)
            else:
                continue
            bases.add(id(access.node))
    whole = any(n.name == "params" and id(n) not in bases for n in _names(node))
    return set(names) if whole else named & names


def _names(node: nodes.Node) -> Iterator[nodes.Name]:
    if isinstance(node, nodes.Name):
        yield node
    yield from node.find_all(nodes.Name)


def vars_problems(values: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Constants are literal: a template or secret reference in one would make data of it."""
    found = []
    for name, value in values.items():
        for where, text in texts_at(value, ("vars", name)):
            if is_template(text) or SECRET_REF.search(text):
                found.append((where, f"vars.{name}: constants are literal values; a template or secret reference "
                              f"cannot go here (put it in the step's `with`)"))
    return found


def unknown_var_message(name: str, declared: Mapping[str, Any]) -> str:
    listed = ", ".join(declared) if declared else "none are declared"
    return f"vars.{name}, which is not declared (vars: {listed})"
