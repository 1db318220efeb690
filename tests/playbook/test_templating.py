import pytest

from bot.playbook.templating import TemplateError, check_syntax, referenced_steps, render, strings_in, truthy

CTX = {
    "params": {"service": "api", "replicas": 3, "tags": ["a", "b"], "flag": False},
    "alert": {"labels": {"service": "api"}},
    "run": {"id": "run-1"},
    "steps": {"silence": {"output": {"silence_id": "s-1", "meta": {"k": 1}}}},
}


def test_a_whole_expression_keeps_its_native_type() -> None:
    assert render("{{ params.replicas }}", CTX) == 3
    assert render("{{ params.tags }}", CTX) == ["a", "b"]
    assert render("{{ steps.silence.output.meta }}", CTX) == {"k": 1}
    assert render("{{ params.flag }}", CTX) is False
    assert render("{{ params.replicas + 1 }}", CTX) == 4


def test_mixed_text_renders_to_a_string() -> None:
    assert render("svc-{{ params.service }}", CTX) == "svc-api"
    assert render("{{ params.replicas }} of {{ params.replicas }}", CTX) == "3 of 3"


def test_nested_values_and_plain_strings() -> None:
    value = {"a": ["{{ params.service }}", "plain", 5], "b": {"c": "{{ alert.labels.service }}"}}
    assert render(value, CTX) == {"a": ["api", "plain", 5], "b": {"c": "api"}}
    assert render("no template here", CTX) == "no template here"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ params.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ params.tags.append('c') }}",
        "{{ params.update({'x': 1}) }}",
    ],
)
def test_sandbox_refuses_escapes_and_mutation(source: str) -> None:
    with pytest.raises(TemplateError):
        render(source, CTX)
    assert CTX["params"]["tags"] == ["a", "b"]


@pytest.mark.parametrize("source", ["{{ foo }}", "{{ params.nope }}", "x {{ steps.later.output }}"])
def test_unknown_names_fail_loudly(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(source, CTX)
    assert source in str(info.value)


def test_secret_renders_a_reference_never_a_value() -> None:
    assert render('{{ secret("DEPLOY_TOKEN") }}', CTX) == "${secret:DEPLOY_TOKEN}"
    assert render('Bearer {{ secret("T") }}', CTX) == "Bearer ${secret:T}"
    with pytest.raises(TemplateError):
        render('{{ secret("not a name") }}', CTX)


def test_syntax_errors() -> None:
    with pytest.raises(TemplateError, match="syntax error"):
        check_syntax("{{ params.x ")
    with pytest.raises(TemplateError, match="syntax error"):
        render("{% if %}", CTX)


def test_referenced_steps_and_strings_in() -> None:
    assert referenced_steps("{{ steps.a.output.x }} {{ steps['b'].output }} {{ params.c }}") == {"a", "b"}
    assert strings_in({"a": ["{{ x }}", "y"], "b": "{% if 1 %}z{% endif %}", "c": 3}) == [
        "{{ x }}",
        "{% if 1 %}z{% endif %}",
    ]


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("No", False), ("0", False), ("", False),
                                                 ("true", True), ("yes", True), (0, False), (1, True), (None, False)])
def test_truthy(value: object, expected: bool) -> None:
    assert truthy(value) is expected


def test_nondeterministic_helpers_are_not_available():
    """Templates render inside the workflow: a random value would break replay."""
    from bot.playbook.templating import TemplateError, render

    for source in ("{{ [1, 2] | random }}", "{{ lipsum() }}", "{{ cycler(1, 2).next() }}"):
        try:
            render(source, {})
        except TemplateError:
            continue
        raise AssertionError(f"{source} rendered")
