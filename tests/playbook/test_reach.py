"""Load-time checks on where params land: URLs and argv items need checked params; a param that can
start an argv item must refuse a leading '-', one that can start a URL needs an enum; `vars` are
constants templates read as vars.NAME."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bot.actions.base import ActionSpec
from bot.playbook.checks import registered_actions
from bot.playbook.loader import PlaybookLoadErrors, load_directory, load_text
from bot.playbook.reach import DASH_PROBES, SAFE_PATTERN

from .conftest import DUMMY_ACTIONS

ROOT = Path(__file__).resolve().parents[2]
ACTIONS: dict[str, ActionSpec] = {**DUMMY_ACTIONS, **registered_actions()}  # the real http.request and shell.run


def load(text: str):
    return load_text(textwrap.dedent(text).lstrip("\n"), path="pb.yaml", actions=ACTIONS)


def errors(text: str) -> list[str]:
    with pytest.raises(PlaybookLoadErrors) as caught:
        load(text)
    return [str(error) for error in caught.value.errors]


def one_error(text: str) -> str:
    [error] = errors(text)
    return error


def one_warning(text: str) -> str:
    """A playbook that loads, with exactly one warning."""
    [warning] = load(text).warnings
    return warning


def playbook(params: str, with_: str, action: str = "http.request", compensate: str = "") -> str:
    return f"""
    name: p
    params: {{{params}}}
    steps:
      - id: call
        action: {action}
        with: {with_}
    {compensate}"""


# -- URLs --------------------------------------------------------------------------------------


def test_a_param_in_a_url_should_have_a_pattern_or_enum() -> None:
    """A warning, not an error: playbooks written before the check keep loading (the acceptance
    smoke playbooks among them); validate and the services' logs say what to fix."""
    warning = one_warning(playbook("svc: {type: string}", '{url: "https://deploy.internal/v1/{{ params.svc }}/restart"}'))
    assert warning.startswith("pb.yaml:6: step 'call': with.url: string param 'svc' goes into this URL unchecked")
    assert f"give it a pattern (e.g. {SAFE_PATTERN}) or an enum" in warning

    for spec in (f'svc: {{type: string, pattern: "{SAFE_PATTERN}"}}', "svc: {type: string, enum: [api, web]}",
                 "svc: {type: integer}"):
        assert load(playbook(spec, '{url: "https://deploy.internal/v1/{{ params.svc }}/restart"}')).warnings == ()


def test_a_param_that_can_start_a_url_needs_an_enum() -> None:
    with_ = '{url: "{{ params.base }}/v1/restart"}'
    error = one_error(playbook('base: {type: string, pattern: "^https://[a-z.]+$"}', with_))
    assert "with.url: param 'base' can start this URL, so whoever starts the run could choose the host" in error
    assert "give it an enum of the allowed values, or put the base URL in vars" in error
    load(playbook('base: {type: string, enum: ["https://deploy.internal", "https://deploy.staging.internal"]}', with_))


@pytest.mark.parametrize(
    "url",
    [
        "{{ params.base ~ '/x' }}",
        "  {{ params.base }}/x",  # leading blanks: the param still comes first
        "{% if true %}{{ params.base }}{% endif %}/x",  # a block first: anything may
        "{{ params['base'] }}/x",
        "{{ (params | dictsort | first)[1] }}/x",  # reads params as a whole
    ],
)
def test_every_way_of_starting_a_url_is_seen(url: str) -> None:
    error = one_error(playbook('base: {type: string, pattern: "^https://"}', f'{{url: "{url}"}}'))
    assert "param 'base' can start this URL" in error


def test_urls_of_every_url_taking_action_and_of_compensations_are_checked() -> None:
    params = "am: {type: string, pattern: '^h'}, q: {type: string}"
    found = errors(playbook(params, '{matchers: [a="b"], duration: 5m, url: "{{ params.am }}"}', "alertmanager.silence",
                            compensate='    compensate: {action: http.request, with: {url: "https://x/{{ params.q }}"}}'))
    assert any("step 'call': with.url: param 'am' can start this URL" in e for e in found), found
    warned = load(playbook("q: {type: string}", '{url: "https://x/"}',
                           compensate='    compensate: {action: http.request, with: {url: "https://x/{{ params.q }}"}}'))
    assert any("step 'call': compensate.with.url: string param 'q' goes into this URL unchecked" in w
               for w in warned.warnings), warned.warnings


# -- argv ---------------------------------------------------------------------------------------


def test_a_param_that_can_start_an_argv_item_must_refuse_a_leading_dash() -> None:
    argv = '{argv: [kubectl, -n, "{{ params.ns }}", get, pods]}'
    error = one_error(playbook('ns: {type: string, pattern: "^[a-z0-9-]+$"}', argv, "shell.run"))
    assert error.startswith("pb.yaml:6: step 'call': with.argv[2]: param 'ns' can start this argv item")
    assert "its pattern ^[a-z0-9-]+$ admits '--x': the command would read such a value as an option" in error
    assert f"give it an enum, or a pattern that refuses a leading '-' (e.g. {SAFE_PATTERN})" in error

    no_pattern = one_error(playbook("ns: {type: string}", argv, "shell.run"))
    assert "param 'ns' can start this argv item and has no pattern or enum" in no_pattern
    unanchored = one_error(playbook('ns: {type: string, pattern: "[a-z]+"}', argv, "shell.run"))
    assert "admits '--x=y'" in unanchored  # re.search, as params are matched: unanchored admits anything
    only_dash = one_error(playbook('ns: {type: string, pattern: "^(-|[a-z]+)$"}', argv, "shell.run"))
    assert "admits '-'" in only_dash

    for spec in (f'ns: {{type: string, pattern: "{SAFE_PATTERN}"}}', "ns: {type: string, enum: [default, kube-system]}",
                 'ns: {type: string, pattern: "^[a-z]+$"}'):
        load(playbook(spec, argv, "shell.run"))


def test_an_alert_field_or_a_step_output_that_can_start_an_argv_item_is_an_error() -> None:
    """Red-team finding (stop 48): the sender of an alert chose `pod="--all"`, and `kubectl -n shop
    delete pod {{ alert.labels.pod }}` deleted every pod of the namespace: only params were checked.
    Data is safe after literal text (`--pod=...`); not after `--`, which a wrapper such as
    `kubectl exec POD --` ends for itself only (review: `kill {{ alert.labels.pid }}` given -1)."""
    def steps(argv: str) -> str:
        return f"""
        name: p
        steps:
          - {{id: probe, action: core.log, with: {{message: probing}}}}
          - id: call
            action: shell.run
            with: {{argv: {argv}}}
        """

    error = one_error(steps('[kubectl, -n, shop, delete, pod, "{{ alert.labels.pod }}"]'))
    assert error.startswith("pb.yaml:6: step 'call': with.argv[5]: alert.* can start this argv item")
    assert "'--all' as an option" in error and "put literal text first" in error
    output = one_error(steps('[kubectl, delete, pod, "{{ steps.probe.output.name | lower }}"]'))
    assert "with.argv[3]: steps.* can start this argv item" in output
    wrapped = one_error(steps('[kubectl, exec, web-0, --, kill, -s, TERM, "{{ alert.labels.pid }}"]'))
    assert "with.argv[7]: alert.* can start this argv item" in wrapped and "a '--' before it is no help" in wrapped
    for argv in ('[kubectl, delete, "pod/{{ alert.labels.pod }}"]',
                 '[kubectl, delete, pod, "--selector=app={{ alert.labels.app }}"]',
                 '[kubectl, delete, pod, "pod/{{ steps.probe.output.name }}"]'):
        load(steps(argv))


def test_a_jobs_command_and_args_are_argv_items_too() -> None:
    """Red team: the check above covered shell.run only, so `k8s.run_job` with `command: [kubectl]`,
    `args: [delete, pod, "{{ alert.labels.pod }}"]` loaded, and `pod="--all"` deleted every pod."""
    def job(field: str, argv: str, params: str = "") -> str:
        return f"""
        name: p
        {params}
        steps:
          - id: diag
            action: k8s.run_job
            with: {{namespace: shop, image: registry.internal/diag/kubectl:1.30, {field}: {argv}}}
        """

    error = one_error(job("args", '[delete, pod, "{{ alert.labels.pod }}"]'))
    assert error.startswith("pb.yaml:6: step 'diag': with.args[2]: alert.* can start this argv item")
    assert "with.command[1]: param 'pod' can start this argv item" in one_error(
        job("command", '[kubectl, "{{ params.pod }}"]', "params: {pod: {type: string}}"))
    load(job("args", '[delete, "pod/{{ alert.labels.pod }}"]'))
    load(job("args", '[delete, pod, "{{ params.pod }}"]', 'params: {pod: {type: string, pattern: "^[a-z0-9][a-z0-9-]*$"}}'))


def test_data_or_an_open_param_may_not_choose_a_k8s_context_or_service_account() -> None:
    """Red team: `context: "{{ alert.labels.cluster }}"` (or a param without an enum) picked any cluster
    the kubeconfig holds, with its credentials, while the policy judged the step by `environment`."""
    def scale(context: str, params: str = "") -> str:
        return f"""
        name: p
        {params}
        steps:
          - id: s
            action: k8s.scale
            with: {{context: "{context}", namespace: shop, name: web, replicas: 0}}
        """

    error = one_error(scale("{{ alert.labels.cluster }}"))
    assert error.startswith("pb.yaml:6: step 's': with.context: alert.* can choose this step's context")
    assert "a param with an enum" in error
    assert "params.cluster can choose this step's context" in one_error(
        scale("prod-{{ params.cluster }}", 'params: {cluster: {type: string, pattern: "^[a-z]+$", default: eu}}'))
    load(scale("{{ params.cluster }}", "params: {cluster: {type: string, enum: [staging, prod], default: staging}}"))
    load(scale("{{ vars.cluster }}", "vars: {cluster: prod-eu}"))
    job = """
    name: p
    steps:
      - id: diag
        action: k8s.run_job
        with: {namespace: shop, image: registry.internal/diag/x:1, service_account: "{{ alert.labels.sa }}"}
    """
    assert "with.service_account: alert.* can choose this step's service_account" in one_error(job)


def test_an_alert_field_that_can_start_a_url_is_a_warning() -> None:
    warning = one_warning(playbook("", '{url: "{{ alert.annotations.runbook_url }}"}'))
    assert "with.url: alert.* can start this URL, so whoever sends the alert or answers the step chooses the host" in warning
    assert not load(playbook("", '{url: "https://deploy.internal/{{ alert.labels.service }}"}')).warnings


def test_data_may_fill_only_a_quoted_equality_value_of_a_silence_matcher() -> None:
    """Red-team finding (stop 48): an unquoted `pod={{ alert.labels.pod }}`, the label `~.+`, became
    `pod=~".+"`: a real Alertmanager then silenced every pod's alerts. Data chose the operator."""
    def silence(matcher: str, params: str = "") -> str:
        return playbook(params, f"{{matchers: ['{matcher}'], duration: 30m}}", "alertmanager.silence")

    unquoted = one_error(silence("pod={{ alert.labels.pod }}"))
    assert unquoted.startswith("pb.yaml:6: step 'call': with.matchers[0]: alert.* fills this matcher's value unquoted")
    assert "a value such as ~.+ turns it into a regex; quote it" in unquoted
    assert "can choose this matcher's regex" in one_error(silence('pod=~"{{ alert.labels.pod }}.*"'))
    assert "can choose this matcher's label or operator" in one_error(silence('{{ alert.labels.name }}="x"'))
    assert "params.svc fills this matcher's value unquoted" in one_error(silence("service={{ params.svc }}", "svc: {type: string}"))
    # a pattern that refuses quotes and `~` still admits `.*` in a regex (review)
    assert "params.p can choose this matcher's regex" in one_error(
        silence('pod=~"{{ params.p }}"', 'p: {type: string, pattern: "^[^\\"~+]+$"}'))
    assert "a block ({% ... %}) that reads data" in one_error(silence('pod="{% if alert %}{{ alert.labels.pod }}{% endif %}"'))
    load(silence('severity="{% if true %}critical{% else %}warning{% endif %}"'))  # a block of constants
    for matcher, params in (('pod="{{ alert.labels.pod }}"', ""), ('pod!="{{ alert.labels.pod }}-canary"', ""),
                            ("service={{ params.svc }}", f'svc: {{type: string, pattern: "{SAFE_PATTERN}"}}'),
                            ('instance=~"{{ params.svc }}(:[0-9]+)?"', f'svc: {{type: string, pattern: "{SAFE_PATTERN}"}}')):
        load(silence(matcher, params))


def test_a_foreach_item_from_data_is_data_in_argv_and_matchers() -> None:
    """Review (stop 48): a foreach item read by its `as` name escaped both checks, the `--all`
    attack one step removed. An item of a param of strings is guarded by the param's `items`;
    one of the playbook's own list or vars is a constant."""
    def each(source: str, inner: str, params: str = "") -> str:
        return f"""
        name: p
        params: {{{params}}}
        vars: {{pods: [web-0, web-1]}}
        steps:
          - {{id: find, action: core.log, with: {{message: finding}}}}
          - id: each
            foreach: {source}
            as: pod
            steps:
              - {inner}
        """

    argv = '{id: kill, action: shell.run, with: {argv: [kubectl, delete, pod, "{{ pod }}"]}}'
    matcher = "{id: quiet, action: alertmanager.silence, with: {matchers: ['pod={{ pod }}'], duration: 5m}}"
    for source in ('"{{ steps.find.output.pods }}"', '"{{ alert.labels.pods | fromjson }}"'):
        assert "the foreach item 'pod' can start this argv item" in one_error(each(source, argv))
        assert "the foreach item 'pod' fills this matcher's value unquoted" in one_error(each(source, matcher))
    loose = "pods: {type: array, items: {type: string}}"
    assert "the foreach item 'pod' can start this argv item" in one_error(each('"{{ params.pods }}"', argv, loose))
    safe = f'pods: {{type: array, items: {{type: string, pattern: "{SAFE_PATTERN}"}}}}'
    for source, params in (('"{{ params.pods }}"', safe), ("[web-0, web-1]", ""), ('"{{ vars.pods }}"', "")):
        load(each(source, argv, params))
        load(each(source, matcher, params))


def test_data_put_into_a_promql_query_as_it_is_is_a_warning() -> None:
    """Red-team note (stop 48): a label value `x"} or vector(1) #` ends its PromQL string and rewrites
    the query, so an `expect` can pass when nothing is well. `| tojson` quotes and escapes it."""
    def query(q: str, params: str = "") -> str:
        return playbook(params, f"{{query: '{q}', expect: '< 1'}}", "prometheus.query")

    warning = one_warning(query('sum(up{job="{{ alert.labels.job }}"})'))
    assert "with.query: alert.* goes into this PromQL query as it is" in warning and "| tojson" in warning
    assert "params.svc goes into this PromQL query" in one_warning(query('up{job="{{ params.svc }}"}', "svc: {type: string, pattern: \"^.+$\"}"))
    for q, params in (("sum(up{job={{ alert.labels.job | tojson }}})", ""),
                      ('up{job="{{ params.svc }}"}', f'svc: {{type: string, pattern: "{SAFE_PATTERN}"}}')):
        assert not load(query(q, params)).warnings


def test_probes_are_options() -> None:
    assert {"-", "-x", "--x", "--x=y"} <= set(DASH_PROBES) and all(p.startswith("-") for p in DASH_PROBES)


def test_a_param_inside_an_argv_item_needs_a_pattern_but_may_admit_dashes() -> None:
    argv = '{argv: [kubectl, scale, "deployment/{{ params.d }}", "--replicas={{ params.n }}"]}'
    load(playbook('d: {type: string, pattern: "^[a-z0-9-]+$"}, n: {type: integer}', argv, "shell.run"))
    warning = one_warning(playbook("d: {type: string}, n: {type: integer}", argv, "shell.run"))
    assert "with.argv[2]: string param 'd' goes into this argv item unchecked" in warning


def test_argv_of_other_actions_and_other_keys_are_not_sinks() -> None:
    load(playbook("m: {type: string}", '{message: "{{ params.m }}"}', "core.log"))
    load(playbook("m: {type: string}", '{url: "https://x/", json: {who: "{{ params.m }}"}}'))


# -- vars -----------------------------------------------------------------------------------------


def test_vars_are_read_in_templates_and_may_start_a_url() -> None:
    loaded = load("""
        name: p
        vars: {deploy_api: "https://deploy.internal", pools: [a, b], limits: {max: 3}}
        params: {svc: {type: string, pattern: "^[a-z0-9][a-z0-9-]*$"}}
        steps:
          - id: call
            action: http.request
            when: "{{ vars.limits.max > 1 }}"
            with: {url: "{{ vars.deploy_api }}/v1/{{ params.svc }}/restart", json: {pools: "{{ vars.pools }}"}}
        """)
    assert loaded.playbook.vars == {"deploy_api": "https://deploy.internal", "pools": ["a", "b"], "limits": {"max": 3}}


def test_vars_mistakes_are_located() -> None:
    found = errors("""
        name: p
        vars:
          base: "https://x"
          token: "{{ secret('DEPLOY_TOKEN') }}"
          nested: {ref: "${secret:DEPLOY_TOKEN}"}
        steps:
          - id: call
            action: core.log
            with: {message: "{{ vars.bsae }}"}
        """)
    assert found[0].startswith("pb.yaml:4: vars.token: constants are literal values; a template or secret reference")
    assert found[1].startswith("pb.yaml:5: vars.nested: constants are literal values")
    assert found[2] == ("pb.yaml:9: step 'call': with.message: template reads vars.bsae, which is not declared "
                        "(vars: base, token, nested)")
    [bad_name] = errors("""
        name: p
        vars: {"not-an-identifier": 1}
        steps: [{id: s, action: core.log, with: {message: hi}}]
        """)
    assert bad_name.startswith("pb.yaml:2:") and "not-an-identifier" in bad_name
    [not_json] = errors("""
        name: p
        vars: {when: 2024-01-01}
        steps: [{id: s, action: core.log, with: {message: hi}}]
        """)
    assert not_json.startswith("pb.yaml:2:") and "vars.when" in not_json and "JSON" in not_json


# -- the shipped playbooks ---------------------------------------------------------------------


def test_shipped_playbooks_pass_and_keep_base_urls_in_vars() -> None:
    catalog = load_directory(ROOT / "playbooks")
    restart = catalog.get("restart-service").playbook
    assert restart.vars == {"deploy_api": "https://deploy.internal", "lb_api": "https://lb.internal"}
    assert not {"deploy_api", "lb_api"} & set(restart.params)


def test_only_an_undo_may_leave_out_a_scales_count() -> None:
    """Review: `replicas` became optional for the undo (which reads the step's record), so a forward
    `k8s.scale` without it loaded and failed only at run time, perhaps after its approval."""
    def scale(where: str) -> str:
        forward = "{namespace: shop, name: web}" if where == "step" else "{namespace: shop, name: web, replicas: 0}"
        return f"""
        name: p
        steps:
          - id: s
            action: k8s.scale
            with: {forward}
            compensate:
              action: k8s.scale
              with: {{namespace: shop, name: web}}
            fallback:
              action: k8s.scale
              with: {"{namespace: shop, name: web}" if where == "fallback" else "{namespace: shop, name: web, replicas: 1}"}
        """

    load(scale("undo only"))
    for where in ("step", "fallback"):
        assert "missing required key 'replicas' for k8s.scale (only a compensation may leave it out)" in one_error(scale(where))
