"""Loading: every problem is reported with its file, its YAML line and its step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from bot.actions.base import ACTIONS, ActionParams, ActionSpec, action
from bot.playbook.checks import registered_actions
from bot.playbook.loader import (
    Catalog,
    LoadedPlaybook,
    PlaybookError,
    PlaybookLoadErrors,
    UnknownPlaybook,
    load_directory,
    load_file,
    load_text,
)

from .conftest import DUMMY_ACTIONS, FIXTURES

Write = Callable[..., Path]


def only_error(path: Path, actions: dict[str, ActionSpec]) -> PlaybookError:
    with pytest.raises(PlaybookLoadErrors) as info:
        load_file(path, actions=actions)
    assert len(info.value.errors) == 1, str(info.value)
    error = info.value.errors[0]
    assert str(info.value) == str(error)
    assert (info.value.line, info.value.step) == (error.line, error.step)
    return error


def all_errors(path: Path, actions: dict[str, ActionSpec]) -> list[PlaybookError]:
    with pytest.raises(PlaybookLoadErrors) as info:
        load_file(path, actions=actions)
    return list(info.value.errors)


def assert_located(error: PlaybookError, path: Path, line: int, step: str | None, *fragments: str) -> None:
    text = str(error)
    assert error.path == path and error.line == line and error.step == step, text
    assert text.startswith(f"{path}:{line}: "), text
    if step is not None:
        assert f"step {step!r}: " in text
    for fragment in fragments:
        assert fragment in text, text


# -- the example and the happy path -----------------------------------------------------------


def test_design_example_validates_with_the_shipped_actions(actions: dict[str, ActionSpec]) -> None:
    # Real catalog actions where they exist; stand-ins only for the ones not shipped yet.
    merged = {**actions, **registered_actions()}
    loaded = load_file(FIXTURES / "restart-service.yaml", actions=merged)
    assert loaded.playbook.name == "restart-service"
    assert [s.id for s in loaded.playbook.leaf_steps()] == ["silence", "restart", "health", "errors"]
    assert loaded.hash == loaded.playbook.content_hash()
    assert loaded.path == FIXTURES / "restart-service.yaml"


def test_loaded_playbook_is_frozen(write: Write, actions: dict[str, ActionSpec]) -> None:
    loaded = load_file(write("name: p\nsteps: [{id: a, action: core.log, with: {message: hi}}]\n"), actions=actions)
    assert isinstance(loaded, LoadedPlaybook)
    with pytest.raises(AttributeError):
        loaded.hash = "x"  # type: ignore[misc]


def test_default_registry_is_used_when_no_actions_are_given(write: Write) -> None:
    class PingParams(ActionParams):
        target: str

    class Provider:
        @action("test.ping_loader", PingParams)
        async def ping(self, params: PingParams, ctx: Any) -> dict[str, Any]:
            """Ping."""
            return {}

    try:
        loaded = load_file(write("name: p\nsteps: [{id: a, action: test.ping_loader, with: {target: x}}]\n"))
        assert loaded.playbook.name == "p"
    finally:
        ACTIONS.pop("test.ping_loader", None)


# -- YAML ---------------------------------------------------------------------------------------


def test_malformed_yaml_names_file_and_line(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: a
            action: core.log
           with: {message: hi}
        """
    )
    error = only_error(path, actions)
    assert_located(error, path, 5, None, "invalid YAML")


def test_unclosed_flow_mapping(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write("name: p\nsteps:\n  - {id: a, action: core.log\n")
    error = only_error(path, actions)
    assert str(error).startswith(f"{path}:") and "invalid YAML" in str(error) and error.line is not None


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a str"), ("", "an empty file"), ("# only\n", "an empty file")]
)
def test_top_level_must_be_a_mapping(write: Write, actions: dict[str, ActionSpec], text: str, kind: str) -> None:
    error = only_error(write(text), actions)
    assert "one YAML mapping" in str(error) and kind in str(error)


def test_two_documents_in_one_file(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write("name: p\nsteps: []\n---\nname: q\n")
    assert_located(only_error(path, actions), path, 3, None, "invalid YAML", "single document")


def test_duplicate_yaml_key_is_an_error(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: a
            action: core.log
            with: {message: one}
            with: {message: two}
        """
    )
    assert_located(only_error(path, actions), path, 6, "a", "duplicate key 'with'", "line 5")


@pytest.mark.parametrize("literal", [".nan", ".inf", "-.Inf"])
def test_a_number_json_cannot_hold_is_an_error(write: Write, actions: dict[str, ActionSpec], literal: str) -> None:
    """Review (stop 43): `.nan` in a step's args loaded as a float no record or policy input holds
    (a high-impact step's was denied for it, fail closed, with no word of why)."""
    path = write(
        f"""
        name: p
        vars: {{limit: {literal}}}
        steps:
          - {{id: a, action: core.log, with: {{message: "{{{{ vars.limit }}}}"}}}}
        """
    )
    assert_located(only_error(path, actions), path, 2, None, f"{literal} is not a JSON number", "quote it")


def test_unsafe_yaml_tags_are_refused(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write("name: !!python/object/apply:os.system ['true']\nsteps: []\n")
    assert_located(only_error(path, actions), path, 1, None, "invalid YAML")


def test_anchors_and_aliases_work(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: a
            action: core.log
            with: &hello {message: hi}
            retry: &r {max_attempts: 5}
          - id: b
            action: core.log
            with: *hello
            retry: *r
        """
    )
    playbook = load_file(path, actions=actions).playbook
    assert playbook.leaf_steps()[1].retry.max_attempts == 5


# -- schema errors ------------------------------------------------------------------------------


def test_unknown_key_in_a_step(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: first
            action: core.log
            with: {message: hi}
          - id: restart
            action: core.log
            retyr: {max_attempts: 2}
        """
    )
    error = only_error(path, actions)
    assert_located(error, path, 8, "restart", "unknown key 'retyr'", "did you mean 'retry'?", "allowed: id, name, action, with")


def test_unknown_key_at_top_level_and_nested(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        owners: [me]
        steps:
          - id: a
            action: core.log
            with: {message: hi}
            retry:
              max_attempts: 2
              jitter: 0.1
        """
    )
    top, nested = all_errors(path, actions)
    assert_located(top, path, 2, None, "unknown key 'owners'", "did you mean 'owner'?", "allowed: version, name, summary")
    assert_located(nested, path, 9, "a", "retry: unknown key 'jitter'", "allowed: max_attempts, initial_interval")


def test_unknown_key_in_a_parallel_member_names_the_member(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: verify
            parallel:
              - id: health
                action: core.log
                with: {message: hi}
              - id: errors
                action: core.log
                with: {message: hi}
                impcat: high
        """
    )
    assert_located(only_error(path, actions), path, 11, "errors", "unknown key 'impcat'", "did you mean 'impact'?")


def test_missing_action(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write("name: p\nsteps:\n  - id: a\n    with: {message: hi}\n")
    assert_located(only_error(path, actions), path, 3, "a", "missing required key 'action'")


def test_step_that_is_not_a_mapping(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write("name: p\nsteps:\n  - core.log\n")
    assert_located(only_error(path, actions), path, 3, None, "steps[0]: ", "valid dictionary")


def test_bad_duration(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: restart
            action: core.log
            with: {message: hi}
            timeout: 5x
        """
    )
    assert_located(only_error(path, actions), path, 6, "restart", "timeout: bad duration '5x'", "'30s'")


def test_bare_number_duration_in_retry(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: restart
            action: core.log
            with: {message: hi}
            retry:
              initial_interval: 5
        """
    )
    assert_located(only_error(path, actions), path, 7, "restart", "retry.initial_interval: duration must be a string")


def test_bad_literal_and_name(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: Restart_Service
        steps:
          - id: a
            action: core.log
            impact: medium
        """
    )
    name, impact = all_errors(path, actions)
    assert_located(name, path, 1, None, "name: String should match pattern", "(got 'Restart_Service')")
    assert_located(impact, path, 5, "a", "impact: Input should be 'low' or 'high' (got 'medium')")


def test_duplicate_step_ids(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: restart
            action: core.log
            with: {message: one}
          - id: restart
            action: core.log
            with: {message: two}
        """
    )
    assert_located(only_error(path, actions), path, 6, "restart", "duplicate step id 'restart'", "first used at line 3")


def test_duplicate_step_ids_inside_a_parallel_group(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: check
            action: core.log
            with: {message: one}
          - id: verify
            parallel:
              - id: health
                action: core.log
                with: {message: hi}
              - id: health
                action: core.log
                with: {message: hi}
              - id: check
                action: core.log
                with: {message: hi}
        """
    )
    sibling, earlier = all_errors(path, actions)
    assert_located(sibling, path, 11, "health", "duplicate step id 'health'", "first used at line 8")
    assert_located(earlier, path, 14, "check", "duplicate step id 'check'", "first used at line 3")


def test_group_id_may_not_repeat_a_member_id(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: verify
            parallel:
              - id: verify
                action: core.log
                with: {message: hi}
        """
    )
    assert_located(only_error(path, actions), path, 5, "verify", "duplicate step id 'verify'")


def test_all_problems_are_reported_at_once(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: a
            action: core.log
            timeout: 5x
          - id: b
            action: core.log
            colour: red
        """
    )
    with pytest.raises(PlaybookError) as info:
        load_file(path, actions=actions)
    assert isinstance(info.value, PlaybookLoadErrors)
    text = str(info.value)
    assert text.splitlines()[0] == f"{path}: 2 problems:"
    assert f"{path}:5: step 'a': timeout: bad duration" in text
    assert f"{path}:8: step 'b': unknown key 'colour'" in text
    assert info.value.line is None and info.value.step is None


# -- semantic checks ----------------------------------------------------------------------------


def test_unknown_action_lists_known_ones(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: restart
            action: http.reqest
            with: {url: "https://x"}
        """
    )
    error = only_error(path, actions)
    assert_located(
        error, path, 4, "restart", "unknown action 'http.reqest'", "did you mean 'http.request'?",
        "known: alertmanager.expire_silence, alertmanager.silence, core.log, http.request, prometheus.query",
    )


def test_unknown_compensation_action(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: silence
            action: core.log
            with: {message: hi}
            compensate:
              action: alertmanager.expire
              with: {silence_id: x}
        """
    )
    assert_located(only_error(path, actions), path, 7, "silence", "compensate.unknown action 'alertmanager.expire'",
                   "did you mean 'alertmanager.expire_silence'?")


def test_with_keys_are_checked_against_the_action(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: restart
            action: http.request
            with:
              methd: POST
        """
    )
    missing, unknown = all_errors(path, actions)  # in line order
    assert_located(unknown, path, 6, "restart", "with: unknown key 'methd' for http.request", "did you mean 'method'?",
                   "allowed: method, url, json, expected_status, timeout")
    assert_located(missing, path, 5, "restart", "with: missing required key 'url' for http.request")


def test_aliases_and_field_names_are_both_accepted(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - {id: a, action: http.request, with: {url: "https://x", json: {a: 1}}}
          - {id: b, action: http.request, with: {url: "https://x", json_: {a: 1}}}
        """
    )
    load_file(path, actions=actions)


def test_literal_values_are_validated_but_templates_are_not(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          code: {type: integer, default: 200}
        steps:
          - id: ok
            action: http.request
            with:
              url: "https://x"
              expected_status: "{{ params.code }}"
              timeout: "{{ '3' ~ 's' }}"
          - id: ok_list
            action: http.request
            with: {url: "https://x", expected_status: [200, "{{ params.code }}"]}
          - id: bad
            action: http.request
            with:
              url: "https://x"
              method: FETCH
              timeout: soon
              expected_status: [200, "x"]
        """
    )
    method, timeout, status = all_errors(path, actions)
    assert_located(method, path, 18, "bad", "with.method: Input should be", "(got 'FETCH')")
    assert_located(timeout, path, 19, "bad", "with.timeout: bad duration 'soon'")
    assert_located(status, path, 20, "bad", "with.expected_status: matches none of its allowed forms", "as int:",
                   "as list[int] at [1]:")


def test_a_spelled_out_reference_is_plain_text_and_the_loader_says_so(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - {id: a, action: core.log, with: {message: "token ${secret:CODE}"}}
        """
    )
    assert_located(only_error(path, actions), path, 3, "a", "with.message: ${secret:CODE} is plain text",
                   'write {{ secret("CODE") }} and list CODE under secrets:')


# -- secrets: only a with:'s own secret() call, with a literal, declared name -------------------


def test_declared_secrets_load(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        secrets: [DEPLOY_TOKEN, LB_TOKEN]
        steps:
          - id: a
            action: http.request
            with: {url: "https://x/{{ secret('LB_TOKEN') }}", json: {t: "{{ secret('DEPLOY_TOKEN') }}"}}
            compensate: {action: core.log, with: {message: "{{ secret('LB_TOKEN') }}"}}
        """
    )
    assert load_file(path, actions=actions).playbook.secrets == ["DEPLOY_TOKEN", "LB_TOKEN"]


def test_an_undeclared_secret_is_a_load_error(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        secrets: [DEPLOY_TOKEN]
        steps:
          - id: a
            action: core.log
            with: {message: "{{ secret('DEPLOY_TOKN') }}"}
            compensate: {action: core.log, with: {message: "{{ secret('PLAYBOOK_BOT_SLACK_BOT_TOKEN') }}"}}
        """
    )
    typo, other = all_errors(path, actions)
    assert_located(typo, path, 6, "a", "with.message: secret 'DEPLOY_TOKN' is not declared",
                   "add it to the playbook's secrets: list", "did you mean 'DEPLOY_TOKEN'?")
    assert_located(other, path, 7, "a", "compensate.with.message: secret 'PLAYBOOK_BOT_SLACK_BOT_TOKEN' is not declared")


@pytest.mark.parametrize(
    "template",
    [
        "{{ secret(params.name) }}",
        "{{ secret(name='AB') }}",
        "{{ secret('AB', 'x') }}",
        "{{ secret(*['AB']) }}",
    ],
)
def test_secret_takes_one_literal_name(write: Write, actions: dict[str, ActionSpec], template: str) -> None:
    path = write(
        f"""
        name: p
        secrets: [AB]
        params: {{name: {{type: string}}}}
        steps:
          - {{id: a, action: core.log, with: {{message: "{template}"}}}}
        """
    )
    assert_located(only_error(path, actions), path, 5, "a", "secret() takes one literal name")


@pytest.mark.parametrize(
    "template",
    [
        "{{ secret }}",
        "{% set s = secret %}{{ s('AB') }}",
        "{{ params.name | map(secret) | join }}",
        "{% macro secret(n) %}{{ n }}{% endmacro %}{{ secret('AB') }}",
        "{% for secret in ['x'] %}{{ secret }}{% endfor %}",
    ],
)
def test_secret_can_only_be_called(write: Write, actions: dict[str, ActionSpec], template: str) -> None:
    path = write(
        f"""
        name: p
        secrets: [AB]
        params: {{name: {{type: string}}}}
        steps:
          - {{id: a, action: core.log, with: {{message: "{template}"}}}}
        """
    )
    errors = all_errors(path, actions)
    assert any("secret can only be called" in str(e) for e in errors), [str(e) for e in errors]


def test_secret_outside_a_with_is_a_load_error(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        secrets: [T]
        params: {token: {type: string}}
        triggers:
          alertmanager:
            - matchers: ['a="b"']
              params: {token: "{{ secret('T') }}"}
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    assert_located(only_error(path, actions), path, 7, None, "triggers.alertmanager[0].params.token",
                   "secret() is only allowed in a step's or a compensation's with:")


@pytest.mark.parametrize("yaml_value", ['"\\ue0000:T\\ue001"', "\ue0000:T\ue001"])  # a YAML escape, the code points
def test_reserved_code_points_in_a_playbook_are_a_load_error(
    write: Write, actions: dict[str, ActionSpec], yaml_value: str
) -> None:
    path = write(
        f"""
        name: p
        secrets: [T]
        steps:
          - id: a
            action: core.log
            with: {{message: {yaml_value}}}
        """
    )
    assert_located(only_error(path, actions), path, 6, "a", "with.message: the characters U+E000 and U+E001 are reserved")


def test_reserved_code_points_in_a_template_literal_are_a_load_error(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        secrets: [T]
        steps:
          - {id: a, action: core.log, with: {message: "{{ '\\\\ue0000:T\\\\ue001' }}"}}
        """
    )
    assert_located(only_error(path, actions), path, 4, "a", "U+E000 and U+E001 are reserved for secret references")


@pytest.mark.parametrize(("secrets", "fragment"), [("[bad-name]", "should match pattern"), ("[T, T]", "'T' is listed twice")])
def test_the_secrets_list_is_checked(write: Write, actions: dict[str, ActionSpec], secrets: str, fragment: str) -> None:
    path = write(f"name: p\nsecrets: {secrets}\nsteps: [{{id: a, action: core.log, with: {{message: hi}}}}]\n")
    error = only_error(path, actions)
    assert error.line == 2 and fragment in str(error), str(error)


@pytest.mark.parametrize("message, says", [
    ('"{{ params.x "', ""),
    # found in stop 48: Jinja refuses an unknown filter when it compiles, past the parse, and
    # `validate` (and a front door loading the file) died with a traceback instead of saying so
    ("\"{{ run.id | split(',') }}\"", "No filter named 'split'"),
])
def test_template_syntax_error(write: Write, actions: dict[str, ActionSpec], message: str, says: str) -> None:
    path = write(
        f"""
        name: p
        steps:
          - id: say
            action: core.log
            with:
              message: {message}
        """
    )
    error = only_error(path, actions)
    assert_located(error, path, 6, "say", "with.message: template syntax error")
    assert says in str(error)


def test_unknown_template_variable(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: say
            action: core.log
            with: {message: "{{ foo }} {% for x in [1] %}{{ x }}{{ loop.index }}{% endfor %} {{ range(2) | list }}"}
        """
    )
    assert_located(only_error(path, actions), path, 5, "say", "with.message: unknown template variable 'foo'",
                   "templates can use alert, params, run, steps")


def test_undeclared_param(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          service: {type: string}
        steps:
          - id: say
            action: core.log
            with: {message: "{{ params.servce }}"}
        """
    )
    assert_located(only_error(path, actions), path, 7, "say", "template reads unknown param 'servce'",
                   "did you mean 'service'?", "declared: service")


STEPS_WITH_REFERENCE = """
name: p
steps:
  - id: first
    action: core.log
    with: {{message: hi}}
  - id: second
    action: core.log
    with: {{message: "{ref}"}}
  - id: third
    action: core.log
    with: {{message: hi}}
"""


def test_reference_to_an_earlier_step_is_fine(write: Write, actions: dict[str, ActionSpec]) -> None:
    load_file(write(STEPS_WITH_REFERENCE.format(ref="{{ steps.first.output.message }}")), actions=actions)
    load_file(write(STEPS_WITH_REFERENCE.format(ref="{{ steps['first'].output }}")), actions=actions)


def test_reference_to_an_unknown_step(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(STEPS_WITH_REFERENCE.format(ref="{{ steps.frist.output }}"))
    assert_located(only_error(path, actions), path, 8, "second", "with.message: template reads steps.frist",
                   "unknown step 'frist'", "did you mean 'first'?")


def test_reference_to_a_later_step(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(STEPS_WITH_REFERENCE.format(ref="{{ steps.third.output }}"))
    assert_located(only_error(path, actions), path, 8, "second", "steps.third", "runs later")


def test_reference_to_itself(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(STEPS_WITH_REFERENCE.format(ref="{{ steps.second.output }}"))
    assert_located(only_error(path, actions), path, 8, "second", "steps.second", "this step itself")


PARALLEL = """
name: p
steps:
  - id: before
    action: core.log
    with: {{message: hi}}
  - id: verify
    when: "{group_when}"
    parallel:
      - id: health
        action: core.log
        with: {{message: hi}}
      - id: errors
        action: core.log
        with: {{message: "{ref}"}}
  - id: after
    action: core.log
    with: {{message: "{after}"}}
"""


def parallel(ref: str = "x", group_when: str = "true", after: str = "x") -> str:
    return PARALLEL.format(ref=ref, group_when=group_when, after=after)


def test_parallel_members_read_earlier_steps_and_later_steps_read_members(
    write: Write, actions: dict[str, ActionSpec]
) -> None:
    path = write(parallel(ref="{{ steps.before.output }}", after="{{ steps.health.output }}{{ steps.errors.output }}",
                          group_when="{{ steps.before.output.ok }}"))
    load_file(path, actions=actions)


def test_reference_to_a_sibling_in_a_parallel_group(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(parallel(ref="{{ steps.health.output }}"))
    assert_located(only_error(path, actions), path, 14, "errors", "steps.health", "runs in parallel with this step",
                   "group 'verify'")


def test_group_when_may_not_read_its_members(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(parallel(group_when="{{ steps.health.output.ok }}"))
    assert_located(only_error(path, actions), path, 7, "verify", "when: template reads steps.health",
                   "a step of this group")


def test_a_group_has_no_output(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(parallel(after="{{ steps.verify.output }}"))
    assert_located(only_error(path, actions), path, 17, "after", "'verify' is a parallel group", "health, errors")


def test_compensation_may_read_its_own_step_but_not_later_ones(write: Write, actions: dict[str, ActionSpec]) -> None:
    text = """
        name: p
        steps:
          - id: silence
            action: alertmanager.silence
            with: {{matchers: ['a="b"'], duration: 30m}}
            compensate:
              action: alertmanager.expire_silence
              with: {{silence_id: "{ref}"}}
          - id: restart
            action: core.log
            with: {{message: hi}}
        """
    load_file(write(text.format(ref="{{ steps.silence.output.silence_id }}")), actions=actions)
    path = write(text.format(ref="{{ steps.restart.output.id }}"))
    assert_located(only_error(path, actions), path, 8, "silence", "compensate.with.silence_id: template reads steps.restart",
                   "runs later")


def test_when_templates_are_checked(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: a
            action: core.log
            when: "{{ steps.b.output.ok }}"
            with: {message: hi}
          - id: b
            action: core.log
            when: '{{ secret("X") == "y" }}'
            with: {message: hi}
        """
    )
    later, secret = all_errors(path, actions)
    assert_located(later, path, 5, "a", "when: template reads steps.b", "runs later")
    assert_located(secret, path, 9, "b", "when: secret() cannot decide a when")


def test_trigger_params_may_only_use_alert(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          service: {type: string}
          env: {type: string, default: prod}
        triggers:
          alertmanager:
            - matchers: ['alertname="Down"']
              params:
                service: "{{ alert.labels.service }}"
                env: "{{ steps.a.output }}"
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    error = only_error(path, actions)
    assert_located(error, path, 10, None, "triggers.alertmanager[0].params.env: unknown template variable 'steps'",
                   "trigger params can only use alert")


def test_pagerduty_and_opsgenie_trigger_params_are_checked_like_alertmanagers(
    write: Write, actions: dict[str, ActionSpec]
) -> None:
    path = write(
        """
        name: p
        params:
          incident: {type: string}
        triggers:
          pagerduty:
            - services: [PF9KMXH]
              params: {incident: "{{ alert.incident.id }}"}
          opsgenie:
            - tags: [db]
              params:
                incident: "{{ steps.a.output }}"
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    error = only_error(path, actions)
    assert_located(error, path, 11, None, "triggers.opsgenie[0].params.incident: unknown template variable 'steps'")


def test_trigger_params_must_be_declared_and_cover_required_ones(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          service: {type: string}
          replicas: {type: integer, default: 1}
        triggers:
          alertmanager:
            - matchers: ['alertname="Down"']
              params: {servise: "{{ alert.labels.service }}", replicas: many}
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    errors = all_errors(path, actions)
    text = "\n".join(map(str, errors))
    assert "unknown param 'servise'; did you mean 'service'?" in text
    assert "replicas: param 'replicas': expected an integer, got 'many'" in text
    assert "required param 'service' is not set" in text
    assert all(error.line == 8 for error in errors), text


def test_param_spec_consistency(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        params:
          env: {type: string, enum: [staging, production], default: prod}
          count: {type: integer, pattern: "^1"}
          level: {type: integer, enum: [1, two]}
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    default, pattern, enum = all_errors(path, actions)
    assert_located(default, path, 3, None, "params.env.default: param 'env': 'prod' is not one of: staging, production")
    assert_located(pattern, path, 4, None, "params.count.pattern: only string params can have a pattern")
    assert_located(enum, path, 5, None, "params.level.enum[1]: param 'level': expected an integer, got 'two'")


def test_zero_timeout_and_inverted_retry(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write(
        """
        name: p
        steps:
          - id: a
            action: core.log
            with: {message: hi}
            timeout: 0s
            retry: {initial_interval: 1m, max_interval: 10s}
        """
    )
    timeout, retry = all_errors(path, actions)
    assert_located(timeout, path, 6, "a", "timeout: must be more than 0s")
    assert_located(retry, path, 7, "a", "retry.max_interval: must not be shorter than initial_interval")


def test_load_text_labels_messages_with_the_given_path(actions: dict[str, ActionSpec]) -> None:
    with pytest.raises(PlaybookError) as info:
        load_text("name: p\nsteps: [{id: a, action: nope}]\n", path="slack-upload.yaml", actions=actions)
    assert str(info.value).startswith("slack-upload.yaml:2: step 'a': unknown action 'nope'")


# -- directories and the catalog ----------------------------------------------------------------

GOOD = "name: {name}\nsteps:\n  - {{id: a, action: core.log, with: {{message: hi}}}}\n"


def test_load_directory(write: Write, tmp_path: Path, actions: dict[str, ActionSpec]) -> None:
    write(GOOD.format(name="restart-service"), "restart.yaml")
    write(GOOD.format(name="drain-node"), "drain.yml")
    write("not: a playbook", "notes.txt")
    write("{{{", ".restart.yaml.swp.yaml")  # editor droppings are not playbooks
    (tmp_path / "sub").mkdir()
    write(GOOD.format(name="nested"), "sub/nested.yaml")  # not recursive
    catalog = load_directory(tmp_path, actions=actions)
    assert isinstance(catalog, Catalog)
    assert list(catalog) == ["drain-node", "restart-service"] == catalog.names()
    assert len(catalog) == 2 and "drain-node" in catalog and "nested" not in catalog
    assert catalog.get("drain-node").path == tmp_path / "drain.yml"
    assert catalog["restart-service"].playbook.name == "restart-service"
    assert [item.playbook.name for item in catalog.values()] == ["drain-node", "restart-service"]


def test_a_file_path_loads_that_file(write: Write, actions: dict[str, ActionSpec]) -> None:
    catalog = load_directory(write(GOOD.format(name="one")), actions=actions)
    assert catalog.names() == ["one"]


def test_load_directory_collects_errors_from_every_file(write: Write, tmp_path: Path, actions: dict[str, ActionSpec]) -> None:
    good = write(GOOD.format(name="good"), "a-good.yaml")
    bad_yaml = write("name: x\nsteps: [\n", "b-bad-yaml.yaml")
    bad_action = write("name: y\nsteps:\n  - {id: s, action: nope}\n", "c-bad-action.yaml")
    with pytest.raises(PlaybookLoadErrors) as info:
        load_directory(tmp_path, actions=actions)
    exc = info.value
    assert [error.path for error in exc.errors] == [bad_yaml, bad_action]
    assert str(exc).startswith(f"{tmp_path}: 2 problems:")
    assert f"{bad_action}:3: step 's': unknown action 'nope'" in str(exc)
    assert exc.catalog.names() == ["good"] and exc.catalog.get("good").path == good


def test_duplicate_playbook_names_name_both_files(write: Write, tmp_path: Path, actions: dict[str, ActionSpec]) -> None:
    first = write(GOOD.format(name="restart"), "a.yaml")
    second = write("# the same name again\n" + GOOD.format(name="restart"), "b.yaml")
    with pytest.raises(PlaybookLoadErrors) as info:
        load_directory(tmp_path, actions=actions)
    error = info.value.errors[0]
    assert len(info.value.errors) == 1
    assert str(error) == f"{second}:2: playbook name 'restart' is already used by {first}:1"


def test_missing_directory(tmp_path: Path, actions: dict[str, ActionSpec]) -> None:
    with pytest.raises(PlaybookError, match="no such file or directory"):
        load_directory(tmp_path / "nope", actions=actions)


def test_unknown_playbook_lists_known_names(write: Write, tmp_path: Path, actions: dict[str, ActionSpec]) -> None:
    write(GOOD.format(name="restart-service"), "a.yaml")
    write(GOOD.format(name="drain-node"), "b.yaml")
    catalog = load_directory(tmp_path, actions=actions)
    with pytest.raises(UnknownPlaybook) as info:
        catalog.get("restart-servce")
    assert str(info.value) == (
        "unknown playbook 'restart-servce'; did you mean 'restart-service'? (known: drain-node, restart-service)"
    )
    assert info.value.name == "restart-servce" and info.value.known == ("drain-node", "restart-service")
    with pytest.raises(KeyError):  # a LookupError, so mapping-style callers catch it too
        catalog["nope"]
    assert str(UnknownPlaybook("x", [])) == "unknown playbook 'x' (no playbooks are loaded)"


def test_catalog_refuses_duplicate_names(write: Write, actions: dict[str, ActionSpec]) -> None:
    loaded = load_file(write(GOOD.format(name="p")), actions=actions)
    with pytest.raises(ValueError, match="'p' is in both"):
        Catalog([loaded, loaded])


def test_dummy_actions_never_reach_the_global_registry() -> None:
    assert not any(spec is DUMMY_ACTIONS.get(name) for name, spec in ACTIONS.items())


def test_control_characters_are_located(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write("name: p\nsteps:\n  - {id: a, action: core.log, with: {message: \"x\x07\"}}\n")
    assert_located(only_error(path, actions), path, 3, None, "invalid YAML: character #x0007 is not allowed")


def test_yaml_booleans_as_keys_get_a_hint(write: Write, actions: dict[str, ActionSpec]) -> None:
    path = write("name: p\nsteps:\n  - id: a\n    action: core.log\n    with: {message: x, on: 1}\n")
    assert_located(only_error(path, actions), path, 5, "a", "with: key True is not a string; quote it")


def test_matcher_regexes_are_checked_as_re2_at_load(write: Write, actions: dict[str, ActionSpec]) -> None:
    """Alertmanager's regexes are RE2: a lookahead Python `re` would take is refused, naming the
    file, line, trigger, matcher and pattern; RE2-only syntax (`\\pL`) loads."""
    path = write(
        r"""
        name: p
        triggers:
          alertmanager:
            - matchers: ['alertname="Down"', 'device=~"\\pL+"']
            - matchers:
                - 'mountpoint=~"/(?=var).*"'
                - 'host=~"a\\Cb"'
        steps:
          - {id: a, action: core.log, with: {message: hi}}
        """
    )
    errors = all_errors(path, actions)
    assert len(errors) == 2, [str(e) for e in errors]
    assert_located(errors[0], path, 6, None, "triggers.alertmanager[1].matchers[0]",
                   "bad regex '/(?=var).*': invalid perl operator: '(?='")
    assert_located(errors[1], path, 7, None, "triggers.alertmanager[1].matchers[1]", "bad regex 'a\\\\Cb'", "\\C")


def test_silence_matcher_regexes_are_checked_as_re2_at_load(write: Write) -> None:
    path = write(
        """
        name: p
        steps:
          - id: quiet
            action: alertmanager.silence
            with: {matchers: ['service=~"(?=api).*"'], duration: 30m, url: "http://am:9093"}
        """
    )
    error = only_error(path, registered_actions())  # the shipped alertmanager.silence, not a stand-in
    assert_located(error, path, 5, "quiet", "invalid regex: invalid perl operator: '(?='")


def test_unloaded_names_are_the_playbooks_whose_files_do_not_load(tmp_path: Path) -> None:
    """What a worker keeps the schedules of (bot/services.py): a typo must not delete a nightly job."""
    from bot.playbook.loader import unloaded_names

    (tmp_path / "good.yaml").write_text("name: good\nsteps:\n  - {id: a, action: core.log, with: {message: hi}}\n")
    (tmp_path / "bad.yaml").write_text("name: bad\nsteps:\n  - {id: a, action: no.such.action}\n")
    with pytest.raises(PlaybookLoadErrors) as info:
        load_directory(tmp_path)
    assert unloaded_names(tmp_path, info.value.catalog) == {"bad"}
    assert unloaded_names(tmp_path / "missing", Catalog()) == set()
