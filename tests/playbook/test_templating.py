import pytest

from bot.playbook.templating import (
    INERT,
    MARK_CLOSE,
    MARK_OPEN,
    TemplateError,
    check_syntax,
    display,
    inert,
    referenced_steps,
    render,
    secret_names,
    strings_in,
    truthy,
)

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


def test_secret_renders_a_marker_that_displays_as_a_reference() -> None:
    rendered = render({"h": 'Bearer {{ secret("T") }}', "b": '{{ secret("DEPLOY_TOKEN") }}'}, CTX, secrets=["T", "DEPLOY_TOKEN"])
    assert rendered == {"h": f"Bearer {MARK_OPEN}0:T{MARK_CLOSE}", "b": f"{MARK_OPEN}1:DEPLOY_TOKEN{MARK_CLOSE}"}
    assert display(rendered) == {"h": "Bearer ${secret:T}", "b": "${secret:DEPLOY_TOKEN}"}
    assert secret_names(rendered) == ["T", "DEPLOY_TOKEN"]
    assert "${secret:" not in str(rendered), "the display text is not what the activity gets"


@pytest.mark.parametrize(
    ("source", "secrets", "fragment"),
    [
        ('{{ secret("T") }}', None, "only allowed in a step's or a compensation's with:"),
        ('{{ secret("U") }}', ["T"], "secret 'U' is not declared"),
        ('{{ secret("not a name") }}', ["T"], "takes a name like"),
        ('{{ secret("T")[:-1] }}', ["T"], "cut or altered"),
        ('{{ secret("T") | replace("T", "U") }}', ["T", "U"], "did not make"),
        ('{{ secret("T") | length }}', ["T"], "changed or dropped"),
        ('{{ secret("T") == "x" }}', ["T"], "changed or dropped"),
        ('{{ secret("T") | urlencode }}', ["T"], "changed or dropped"),
        ('{% set s = secret("T") %}{{ s }}{{ s }}', ["T"], "appears 2 times"),
        ('{{ {secret("T"): 1} }}', ["T"], "cannot be a mapping key"),
        ('{{ "%c0:T%c" | format(57344, 57345) }}', ["T"], "did not make"),  # forged, not called
        ('{{ secret._issued }}', ["T"], "unsafe"),
    ],
)
def test_a_render_holds_exactly_the_markers_its_own_calls_made(source: str, secrets: list[str] | None, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(source, CTX, secrets=secrets)
    assert fragment in str(info.value)


def test_inert_data_cannot_spell_a_marker() -> None:
    forged = f"{MARK_OPEN}0:T{MARK_CLOSE}"
    data = {"params": {"x": forged, forged: [forged, 1, None]}, "run": {"requested_by": "${secret:T}"}}
    safe = inert(data)
    assert safe == {
        "params": {"x": f"{INERT}0:T{INERT}", f"{INERT}0:T{INERT}": [f"{INERT}0:T{INERT}", 1, None]},
        "run": {"requested_by": "${secret:T}"},  # plain text: it resolves nothing
    }
    rendered = render({"a": "{{ params.x }}", "b": "{{ params }}", "c": 'x{{ secret("T") }}'}, safe, secrets=["T"])
    assert secret_names(rendered) == ["T"], "only the template's own call is a reference"
    assert data["params"]["x"] == forged, "inert() copies; the run's own state is left as it was"


def test_no_secret_call_no_markers() -> None:
    assert render("{{ params.service }}", CTX, secrets=["T"]) == "api"
    assert display({"a": ["plain", 3]}) == {"a": ["plain", 3]}


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


def test_a_slack_text_arg_escapes_what_templates_put_in_and_keeps_the_authors_markup() -> None:
    """Red-team finding: `slack.post` posted `{{ run.error }}` as written, and an error can quote a
    response body: `<!channel>` notified the whole channel and `<https://evil|https://deploy>`
    showed a link under another name, as the bot. Only what a template puts in is escaped."""
    hostile = "failed: <!channel> re-auth at <https://evil.example/login|https://deploy.internal/login> & now"
    args = {"channel": "#oncall", "text": "<!subteam^S0ONCALL> stopped: {{ error }} ({{ n }} steps)",
            "thread_ts": "{{ error }}"}
    out = render(args, {"error": hostile, "n": 3}, mrkdwn=("text",))
    assert out["text"] == ("<!subteam^S0ONCALL> stopped: failed: &lt;!channel&gt; re-auth at "
                           "&lt;https://evil.example/login|https://deploy.internal/login&gt; &amp; now (3 steps)")
    assert out["thread_ts"] == hostile  # not a mrkdwn arg: as it was
    assert render({"text": "{{ error }}"}, {"error": hostile}, mrkdwn=("text",))["text"].startswith("failed: &lt;!channel&gt;")
    assert render({"text": "{{ n }}"}, {"n": 3}, mrkdwn=("text",))["text"] == 3  # a whole non-string expression keeps its type
    assert render(args, {"error": hostile, "n": 3})["text"].count("<!channel>") == 1  # other actions: as before


def test_a_slack_text_arg_escapes_the_strings_inside_a_list_or_a_mapping() -> None:
    """Red-team finding (stop 48): only a string a `{{ }}` gave was escaped; a list or a mapping
    went in as Python prints it, its strings live (tests/security/test_template_data_attacks.py)."""
    hostile = "<!channel> at <https://evil.example|https://deploy.internal>"
    ctx = {"hosts": [hostile], "labels": {"summary": hostile}, "n": 3, "up": True, "none": None}
    for source in ("draining {{ hosts }}", "labels {{ labels }}", "{{ labels.values() | list }} fired",
                   "{{ hosts }}", "{{ labels }}"):
        text = render({"text": source}, ctx, mrkdwn=("text",))["text"]
        assert isinstance(text, str) and "&lt;!channel&gt;" in text and "<!channel>" not in text, (source, text)
    assert render({"text": "{{ hosts }}"}, ctx)["text"] == [hostile]  # other args keep the native value
    # scalars hold nothing to escape: a whole expression keeps its type
    assert [render({"text": f"{{{{ {name} }}}}"}, ctx, mrkdwn=("text",))["text"] for name in ("n", "up", "none")] == [
        3, True, None]
    # what is no JSON value is refused there as in any other arg, not printed (an object's address)
    for source in ("{{ hosts | map('upper') }}", "{{ labels.values() }}"):
        with pytest.raises(TemplateError, match="not a JSON value"):
            render({"text": source}, ctx, mrkdwn=("text",))


@pytest.mark.parametrize("source", ['{{ "=" * n }}', "{{ [0] * n }}", '{{ n * "ab" }}', "{{ 9 ** n }}", "x{{ 2 ** n }}"])
def test_a_power_or_a_repeat_past_its_bound_is_refused_before_it_is_computed(source: str) -> None:
    """`"=" * width` with a width a target chose allocated it in workflow code (the worker died,
    and again on each replay of the run); `9 ** n` computed a number no run can hold."""
    with pytest.raises(TemplateError, match="more than"):
        render({"a": source}, {"n": 10**12})
    assert render({"a": '{{ "=" * n }}', "b": "{{ 2 ** n }}"}, {"n": 3}) == {"a": "===", "b": 8}


def test_a_number_no_json_reader_takes_back_is_refused() -> None:
    """An int past 4,300 digits is encoded, but neither Python's json nor pydantic reads it back: a
    child's input or end holding one failed its workflow task on every replay (red team)."""
    big = int("9" * 4300)
    assert render({"a": "{{ n }}"}, {"n": big}) == {"a": big}
    for source in ("{{ n + 1 }}", "{{ [n * 10] }}", "{{ -n - 1 }}"):
        with pytest.raises(TemplateError, match="more than 4300 digits"):
            render({"a": source}, {"n": big})


def test_a_lone_surrogate_a_template_makes_reads_as_u_fffd() -> None:
    assert render({"a": '{{ "\\ud800" }}', "b": 'x{{ "%c" % 55296 }}', "c": '{{ {"\\udfff": 1} }}'}, {}) == {
        "a": "\ufffd", "b": "x\ufffd", "c": {"\ufffd": 1}}


@pytest.mark.parametrize("source", [
    "{{ '{:>{}}'.format('=', w) }}",
    "{{ '{:>9999999}'.format('=') }}",
    "{{ '{a:>{w}}'.format_map({'a': '=', 'w': w}) }}",
    "{{ '%*s' % (w, '=') }}",
    "{{ ('%0' ~ w ~ 'd') % 1 }}",
    "{{ '=' | center(w) }}",
    "{{ 'a\nb' | indent(w) }}",
    "{{ '%*s' | format(w, '=') }}",
    "{{ ['='] | batch(w, '=') | list }}",
    "{{ ['='] | slice(w) | list }}",
])
def test_a_width_past_the_repeat_bound_is_refused_before_it_is_made(source: str) -> None:
    """The same width as `"=" * w` reaches other padding: str.format, % formatting, and the filters
    that make that much (review of the repeat bound, stop 52)."""
    with pytest.raises(TemplateError, match="more than (1,000,000|100,000)"):
        render({"a": source}, {"w": 2_000_000})
    assert render({"a": "{{ '%05d|{:>3}' .format(1) }}", "b": "{{ [1, 2, 3] | batch(2, 0) | list }}"}, {}) == {
        "a": "%05d|  1", "b": [[1, 2], [3, 0]]}


@pytest.mark.parametrize(("source", "ctx"), [
    ("{{ 'x'.ljust(w) }}", {"w": 2_000_000}),
    ("{{ '\t'.expandtabs(w) }}", {"w": 2_000_000}),
    ("{{ '{:>{}}'.format('=', w) }}", {"w": "2000000"}),
    ("{{ '{0:>{1[w]}}'.format('=', d) }}", {"d": {"w": 2_000_000}}),
    ("{{ [[[0] * n] * n] * n }}", {"n": 128}),
    ("{{ ([s] * n) | join }}", {"s": "a" * 64, "n": 62_500}),
    ("{{ body | indent(w) }}", {"body": "a\n" * 4, "w": 1_000_000}),
    ("{{ body | replace('', new) }}", {"body": "a" * 2000, "new": "b" * 2000}),
    ("{{ body.join(body) }}", {"body": "a" * 2000}),
    ("{{ body | wordwrap(1, wrapstring=sep) }}", {"body": "a " * 2000, "sep": "b" * 2000}),
    ("{% for i in range(n) %}{{ body }}{% endfor %}", {"n": 2000, "body": "a" * 2000}),
    ("{{ [0] * n }}", {"n": 1_000_000}),
])
def test_what_one_render_makes_is_bounded(source: str, ctx: dict) -> None:
    """A render in workflow code makes at most REPEAT_MAX characters or ITEMS_MAX items, sized
    before each operation that makes much from little (red team of the bounds, stop 52: padding
    methods, nested format fields, nested repeats, joins, replaces, indents, wordwraps, loops)."""
    with pytest.raises(TemplateError, match="more than|longer than"):
        render({"a": source}, ctx)


def test_accumulating_or_recursing_is_not_offered() -> None:
    """`namespace` and macros are how a template doubles a string each turn (2 ** n)."""
    with pytest.raises(TemplateError):
        render({"a": "{% set ns = namespace(x='ab') %}{{ ns.x }}"}, {})
    with pytest.raises(TemplateError, match="macros are not allowed"):
        check_syntax("{% macro f(x) %}{{ f(x ~ x) }}{% endmacro %}{{ f('a') }}")


def test_flattening_is_linear_and_bounded() -> None:
    assert render({"a": "{{ [[1], [2, 3]] | sum(start=[]) }}", "b": "{{ [1, 2] | sum }}"}, {}) == {"a": [1, 2, 3], "b": 3}
    with pytest.raises(TemplateError, match="more than 100,000"):
        render({"a": "{{ x | sum(start=[]) }}"}, {"x": [[1]] * 100_001})


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ ', '.join(names | map('upper')) }}", "A, B, C"),
    ("{{ ', '.join(names | select('ne', 'a')) }}", "b, c"),
    ("names: {{ ', '.join(names | reverse) }}", "names: c, b, a"),
    ("pairs {{ d.items() | sum(start=()) }}", "pairs ('k1', 'v1', 'k2', 'v2')"),
])
def test_the_bounded_calls_and_filters_give_what_jinja_gives(source: str, expected: str) -> None:
    """Review of the bounds: `str.join` of a filter's iterator was sized by a pass that used it up
    (it joined nothing), and `sum(start=())` gave a list."""
    context = {"names": ["a", "b", "c"], "d": {"k1": "v1", "k2": "v2"}}
    assert render(source, context) == expected
    with pytest.raises(TemplateError, match="has no attribute 'zz'"):
        render("{{ lst | sum(attribute='zz', start=[]) }}", {"lst": [[1], [2]]})
