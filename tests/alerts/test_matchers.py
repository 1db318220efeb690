"""Matchers against Alertmanager semantics: parse as its default (fallback) mode does, match anchored."""

from __future__ import annotations

import subprocess

import pytest

from bot.alerts.matchers import Matcher, MatcherError, matches, parse_matcher, parse_matchers
from tests.conftest import binary

LABELS = {
    "alertname": "ServiceDown",
    "severity": "critical",
    "service": "api",
    "env": "",
    "msg": 'say "hi", then go',
    "path": "a\\b",
    "multi": "line1\nline2",
    "spaced": "two words",
    "n": "12",
    "arabic": "\u0661\u0662",
}

# (matcher text, label value for `x` or None for "x is missing", expected)
CASES = [
    # equality, bare and quoted
    ('x="api"', "api", True),
    ("x=api", "api", True),
    ('x="api"', "API", False),
    ('x!="api"', "api", False),
    ("x!=api", "web", True),
    # regexes are anchored at both ends
    ('x=~"foo"', "foobar", False),
    ('x=~"foo"', "barfoo", False),
    ('x=~"foo"', "foo", True),
    ('x=~"foo.*"', "foobar", True),
    ('x=~".*bar"', "foobar", True),
    ('x=~"critical|page"', "page", True),
    ('x=~"critical|page"', "critical-ish", False),
    ('x=~"a|b"', "ab", False),
    ('x!~"foo"', "foobar", True),
    ('x!~"foo.*"', "foobar", False),
    ('x=~"api"', "api\n", False),  # Python's `$` would accept a trailing newline; RE2's does not
    ('x=~"api$"', "api\n", False),
    # a missing label reads as ""
    ('x=""', None, True),
    ('x!=""', None, False),
    ('x=~".*"', None, True),
    ('x=~".+"', None, False),
    ('x!~".+"', None, True),
    ('x!~".*"', None, False),
    ('x="a"', None, False),
    ('x!="a"', None, True),
    ("x=", None, True),  # classic parser: an empty bare value
    # an empty label behaves as a missing one
    ('x=""', "", True),
    ('x!=""', "", False),
    ('x=""', "api", False),
    ('x!=""', "api", True),
    # quoted values: commas, spaces, escaped quotes and backslashes, \n
    (r'x="say \"hi\", then go"', 'say "hi", then go', True),
    ('x="two words"', "two words", True),
    ("x=two words", "two words", True),  # classic parser takes the rest of the line
    (r'x="a\\b"', "a\\b", True),
    (r'x="line1\nline2"', "line1\nline2", True),
    (r'x=~"line1\nline.*"', "line1\nline2", True),
    # braces
    ('{x="api"}', "api", True),
    ('{ x = "api" }', "api", True),
    ("{x=api}", "web", False),
    # RE2 details
    (r'x=~"\\d+"', "12", True),
    (r"x=~\d+", "12", True),  # bare backslash: UTF-8 parser refuses, classic accepts
    (r'x=~"\d+"', "\u0661\u0662", False),  # \d is ASCII in RE2
    ('x=~"(?i)servicedown"', "ServiceDown", True),
    ('x=~"a(?i)b|c"', "aB", True),  # (?i) runs to the end of the group, across |
    ('x=~"a(?i)b|c"', "C", True),
    ('x=~"a(?i)b|c"', "ac", False),
    ('x=~"Ab(?i:c)d"', "AbCd", True),
    ('x=~"Ab(?i:c)d"', "AbCD", False),
    ('x=~"a{,2}"', "a{,2}", True),  # not a repetition in RE2
    ('x=~"a{,2}"', "aa", False),
    ('x=~"a{2}"', "aa", True),
    ('x=~"[[:digit:]]+"', "123", True),
    ('x=~"[[:alpha:]_]+"', "ab_c", True),
    (r'x=~"\\Q.*\\E"', ".*", True),
    (r'x=~"\\Q.*\\E"', "ab", False),
    (r'x=~"\\x{41}"', "A", True),
    (r'x=~"\\bapi\\b.*"', "api v2", True),
    ('x=~"[^]a]+"', "bcd", True),
    ('x=~"(?P<n>a)b"', "ab", True),
    ('x=~"(?<n>a)b"', "ab", True),
    ('x=~"(?s)a.b"', "a\nb", True),
    ('x=~"a.b"', "a\nb", False),
    ('x=~""', "", True),
    ('x=~""', "a", False),
    # RE2 accepts what Python `re` refuses, and the reverse (tests/alerts/test_regex.py has more)
    (r'x=~"\\pN+"', "\u0661\u0662", True),  # Unicode classes
    (r'x=~"\\p{Greek}+"', "\u03b1\u03b2", True),
    ('x=~"(?U)a+"', "aaa", True),  # ungreedy mode
    ('x=~"a)|(b"', "apple", True),  # Alertmanager concatenates: ^(?:a)|(b)$
    ('x=~"a)|(b"', "c", False),
    ('x=~"(?i)k"', "\u212a", True),  # RE2's case folding: KELVIN SIGN
]


@pytest.mark.parametrize("text, value, expected", CASES)
def test_matcher_table(text: str, value: str | None, expected: bool) -> None:
    labels = {"other": "y"} if value is None else {"x": value, "other": "y"}
    matcher = parse_matcher(text)
    assert matcher.name == "x"
    assert matches([matcher], labels) is expected


@pytest.mark.parametrize(
    "line, expected",
    [
        ('alertname="ServiceDown", severity=~"critical|page"', True),
        ('{alertname="ServiceDown",severity=~"warning|page"}', False),
        ('{msg="say \\"hi\\", then go", service=api}', True),
        ("alertname=ServiceDown,service!=web,", True),  # trailing comma
        ('team=""', True),
        ('team=~".+"', False),
        ('env=""', True),
        ('path="a\\\\b"', True),
        ('multi=~"line1\\nline2"', True),
        ('spaced="two words"', True),
    ],
)
def test_lines_against_one_label_set(line: str, expected: bool) -> None:
    assert matches(parse_matchers(line), LABELS) is expected


def test_all_matchers_must_match_and_empty_matches_everything() -> None:
    both = parse_matchers('alertname="ServiceDown", service="web"')
    assert len(both) == 2 and matches(both, LABELS) is False
    assert matches([], LABELS) is True
    assert parse_matchers("") == [] and parse_matchers("{}") == []


@pytest.mark.parametrize(
    "text, name, op, value",
    [
        ('alertname="ServiceDown"', "alertname", "=", "ServiceDown"),
        ("  alertname =  ServiceDown  ", "alertname", "=", "ServiceDown"),
        ('"service.name"="api"', "service.name", "=", "api"),  # UTF-8 label names
        ("service.name=api", "service.name", "=", "api"),
        ('"foo"="\\U0001f642"', "foo", "=", "\U0001f642"),  # only the UTF-8 parser accepts it: Go escapes
        ('foo="\\U0001f642"', "foo", "=", "\\U0001f642"),  # both accept, they disagree: classic wins
        ('foo="a\\tb"', "foo", "=", "a\\tb"),  # likewise, as Alertmanager's fallback mode does
        ("foo==bar", "foo", "=", "=bar"),  # the classic parser is this tolerant
        ('foo!~"x"', "foo", "!~", "x"),
    ],
)
def test_parsed_fields(text: str, name: str, op: str, value: str) -> None:
    m = parse_matcher(text)
    assert (m.name, m.op, m.value) == (name, op, value)


@pytest.mark.parametrize(
    "text, problem",
    [
        ('foo=~"(("', "bad regex"),
        ('foo=~"[a-"', "bad regex"),
        ('foo=~"a(?=b)"', "bad regex 'a(?=b)': invalid perl operator: '(?='"),  # lookahead
        ('foo=~"(a)\\\\1"', "invalid escape sequence"),  # backreference
        ('foo=~"a++"', "bad repetition operator"),  # possessive
        ('foo=~"(?>a)"', "invalid perl operator"),  # atomic group
        ('foo=~"a\\\\Z"', "invalid escape sequence"),
        ('foo=~"\\\\C"', "\\C"),  # C++ RE2 has it, Go's regexp does not
        ('foo=~"a{1001}"', "invalid repetition size"),
        ("foo~=bar", "bad operator"),
        ("foo!bar", "bad operator"),
        ("foo<bar", "expected an operator"),
        ("foo", "expected an operator"),
        ('foo=="x"', "expected a label value"),
        ('""="x"', "empty label name"),
        ('="x"', "expected a label name"),
        ('foo="bar', "unterminated quoted string"),
        ('foo="bar\\"', "unterminated quoted string"),
        ("foo=bar baz=qux", None),  # classic reads value 'bar baz=qux': valid, see below
        ("", "no matcher"),
        ("{}", "no matcher"),
        ("a=b,c=d", "expected one matcher, found 2"),
    ],
)
def test_parse_errors_name_text_and_problem(text: str, problem: str | None) -> None:
    if problem is None:
        assert parse_matcher(text).value == "bar baz=qux"
        return
    with pytest.raises(MatcherError) as info:
        parse_matcher(text)
    assert problem in str(info.value)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_regex_compiled_once_and_stringified_like_alertmanager() -> None:
    m = parse_matcher('severity=~"critical|page"')
    assert m.regex is not None and m.regex.matches("page") and not m.regex.matches("pager")
    assert str(m) == 'severity=~"critical|page"'
    assert str(parse_matcher(r'msg="say \"hi\""')) == r'msg="say \"hi\""'
    assert str(Matcher("service.name", "=", "x")) == 'service.name="x"'  # "." is not reserved
    assert str(Matcher("a b", "=", "x")) == '"a b"="x"'
    assert parse_matcher('a="b"') == parse_matcher("{a=b}")
    assert parse_matcher("a=b").regex is None


@pytest.mark.parametrize(
    "line",
    [
        'foo="bar"',
        "{foo=bar, baz=~\"a|b\"}",
        'foo=~"(("',
        'foo="bar',
        # where Python `re` and RE2 disagree, and where C++ RE2 and Go do
        r'foo=~"\\pN"',
        'foo=~"(?U)a"',
        'foo=~"a)|(b"',
        'foo=~"a++"',
        'foo=~"(?>a)"',
        r'foo=~"a\\Z"',
        r'foo=~"\\C"',
        r'foo=~"\\Q\\C\\E"',
    ],
)
def test_agrees_with_amtool_on_validity(line: str) -> None:
    """amtool's `check-config` parses route matchers with Alertmanager's own code."""
    import json
    import tempfile

    amtool = binary("amtool", install="apt-get install prometheus-alertmanager (.ci/run does)")
    config = {"route": {"receiver": "r", "routes": [{"receiver": "r", "matchers": [line]}]}, "receivers": [{"name": "r"}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as handle:
        json.dump(config, handle)
        handle.flush()
        result = subprocess.run([amtool, "check-config", handle.name], capture_output=True, text=True)
    try:
        parse_matchers(line)
        ours = True
    except MatcherError:
        ours = False
    assert ours is (result.returncode == 0), result.stdout + result.stderr


def _go_quote_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# `(?<n>...)` is left out: it needs Go >= 1.22, newer than some amtool builds.
_AMTOOL_CASES = [
    (text, value, expected)
    for text, value, expected in CASES
    if "~" in text and value is not None and "(?<" not in text
]


@pytest.mark.parametrize("text, value, expected", _AMTOOL_CASES)
def test_agrees_with_amtool_on_matching(text: str, value: str, expected: bool) -> None:
    """`amtool config routes test` routes a label set with Alertmanager's own matchers and regexp."""
    import json
    import tempfile

    amtool = binary("amtool", install="apt-get install prometheus-alertmanager (.ci/run does)")
    config = {
        "route": {"receiver": "no", "routes": [{"receiver": "yes", "matchers": [text]}]},
        "receivers": [{"name": "no"}, {"name": "yes"}],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as handle:
        json.dump(config, handle)
        handle.flush()
        result = subprocess.run(
            [amtool, "config", "routes", "test", "--config.file", handle.name, "x=" + _go_quote_value(value)],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ("yes" if expected else "no")
    assert matches([parse_matcher(text)], {"x": value}) is expected


ATTACK = """
from bot.alerts.matchers import matches, parse_matcher
labels = {"x": "a" * 50_000}
print(
    matches([parse_matcher('x=~"(a+)+b"')], labels),
    matches([parse_matcher('x=~"(a|aa)+b"')], labels),
    matches([parse_matcher('x!~"(a|a)*c"')], labels),
)
"""


def test_hostile_label_value_cannot_stall_matching() -> None:
    """Catastrophic-backtracking patterns against a 50,000-character label value give the right
    answer. In a child with a generous limit, so a backtracking engine fails instead of hanging."""
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", ATTACK], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("matching did not finish within 20 s: the regex engine backtracks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]
