"""Matcher regexes on RE2 itself: Alertmanager's (Go RE2) meaning, its refusals, linear time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bot.alerts.regex import RegexError, check_standalone, compile_anchored


@pytest.mark.parametrize(
    "pattern, text, expected",
    [
        ("a$", "a\n", False),  # `$` is end of text (Python's also matches before a final newline)
        ("(?m)a$\nb", "a\nb", True),
        (r"a\z", "a", True),  # \z: RE2 has it, Python 3.11 `re` refuses it
        (r"\Aab", "ab", True),
        (r"\w+", "héllo", False),  # ASCII \w
        (r"[\w]+", "abc_1", True),
        (r"\s", "\u00a0", False),  # ASCII \s
        (r"\s", "\x0b", False),  # RE2's \s has no \v
        (r"\S+", "ab", True),
        (r"\101", "A", True),  # Go octal
        (r"\x41", "A", True),
        (r"[[:upper:][:digit:]]+", "AB12", True),
        (r"[a&&b]", "&", True),  # no set operations, & is a literal
        ("x{2,3}", "xxx", True),
        ("x{2,3}?", "xx", True),
        ("a}", "a}", True),
        ("(?i)a(?-i:B)", "AB", True),
        ("(?i)a(?-i:B)", "Ab", False),
        ("(a|b)(?i)c|d", "D", True),  # a mid-pattern (?i) holds to the end of its group, across |
        ("(a|b)(?i)c|d", "bC", True),
        # Python `re` refuses these; RE2 (and so Alertmanager) accepts them
        (r"\pN+", "\u0661\u0662", True),  # Unicode classes
        (r"\pL+", "héllo", True),
        (r"\p{Greek}+", "αβγ", True),
        (r"\PL", "1", True),
        (r"\p{^Greek}", "a", True),
        ("(?U)a+", "aaa", True),  # ungreedy mode: anchored, it still has to cover the whole value
        (r"\Q.*\E", ".*", True),
        (r"\Q.*\E", "ab", False),
        (r"\x{1F642}", "\U0001f642", True),
        ("(?P<n>a)(?P<n>b)", "ab", True),  # duplicate names: Go's regexp accepts them
        ("(?<n>a)b", "ab", True),  # Go >= 1.22
        # Alertmanager builds `^(?:` + pattern + `)$` by concatenation: a `)` can close its group
        ("a)|(b", "apple", True),  # ^(?:a) | (b)$
        ("a)|(b", "crab", True),
        ("a)|(b", "c", False),
        # case folding is RE2's (and Go's): simple folding, no full (multi-character) folds
        ("(?i)k", "\u212a", True),  # KELVIN SIGN
        ("(?i)s", "\u017f", True),  # LONG S
        ("(?i)ß", "\u1e9e", True),
        ("(?i)\ufb00", "FF", False),
        ("(?i)i", "\u0130", False),
        (".", "\U0001f642", True),  # one code point, not one byte
        ("..", "\U0001f642", False),
    ],
)
def test_re2_meaning(pattern: str, text: str, expected: bool) -> None:
    assert compile_anchored(pattern).matches(text) is expected


@pytest.mark.parametrize(
    "pattern, problem",
    [
        # Python `re` accepts these; RE2 refuses them
        (r"a\Z", "invalid escape sequence"),
        ("(?#note)a", "invalid perl operator"),
        ("(?>a)", "invalid perl operator"),  # atomic group
        ("a++", "bad repetition operator"),  # possessive
        ("a*+", "bad repetition operator"),
        ("(?<=a)b", "invalid perl operator"),
        ("a(?=b)", "invalid perl operator"),
        ("(?x)a b", "invalid perl operator"),
        (r"(a)\1", "invalid escape sequence"),  # backreference
        ("(?P=n)", "invalid"),
        # both refuse
        ("[[:nope:]]", "invalid character class range"),
        ("[abc", "missing ]"),
        ("a)", "unexpected )"),
        ("(a", "missing )"),
        (r"\u00e9", "invalid escape sequence"),
        (r"\pX", "invalid character class range"),
        ("a**", "bad repetition operator"),
        ("a{2}{3}", "bad repetition operator"),
        ("a{3,2}", "invalid repetition size"),
        ("a{1001}", "invalid repetition size"),
        ("(a{1000}){1000}", "invalid repetition size"),
        ("a\\", "missing )"),  # the trailing backslash escapes the `)` Alertmanager appends
        # C++ RE2 accepts \C (any byte); Go's regexp, and so Alertmanager, refuses it
        (r"\C", r"\C"),
        (r"a\Cb", r"\C"),
        (r"[\C]", r"\C"),
        (r"(?:x|\C)", r"\C"),
    ],
)
def test_refused(pattern: str, problem: str) -> None:
    with pytest.raises(RegexError) as info:
        compile_anchored(pattern)
    assert problem in str(info.value)


@pytest.mark.parametrize("pattern, text", [(r"\Q\C\E", "\\C"), (r"\\C", "\\C"), (r"a\\Cb", "a\\Cb")])
def test_a_quoted_or_escaped_backslash_c_is_a_literal(pattern: str, text: str) -> None:
    assert compile_anchored(pattern).matches(text)


def test_errors_quote_the_pattern_as_written() -> None:
    with pytest.raises(RegexError) as info:
        compile_anchored("line1\n(")
    message = str(info.value)
    assert message == "missing ): 'line1\\n('"  # quoted: one line; no `^(?:...)$` of ours
    with pytest.raises(RegexError, match=r"^missing \]: '\[abc'$"):
        compile_anchored("[abc")
    assert isinstance(info.value, ValueError)


def test_standalone_check_is_the_silence_apis() -> None:
    check_standalone("critical|page")
    check_standalone(r"\Qa")  # compiles alone; anchored, the `\Q` would quote Alertmanager's `)$`
    with pytest.raises(RegexError) as info:
        compile_anchored(r"\Qa")
    assert str(info.value) == r"missing ): '\\Qa'"
    compile_anchored("a)|(b")  # ^(?:a)|(b)$
    with pytest.raises(RegexError) as info:
        check_standalone("a)|(b")
    assert str(info.value) == "unexpected ): 'a)|(b'"
    with pytest.raises(RegexError) as info:
        check_standalone("x[a)$")
    assert str(info.value) == "missing ]: '[a)$'"  # the pattern's own `)$` is not taken for our anchoring
    with pytest.raises(RegexError) as info:
        compile_anchored("x[a)$")
    assert str(info.value) == "missing ]: '[a)$'"  # RE2 quoted `[a)$)$`: ours dropped
    with pytest.raises(RegexError, match="C"):
        check_standalone(r"\C")


def test_lone_surrogates() -> None:
    # A value reads as Go's JSON decoding leaves it: U+FFFD for a lone surrogate, pairs joined.
    assert compile_anchored(".").matches("\ud800")
    assert compile_anchored("\ufffd").matches("\udfff")
    assert compile_anchored("\U0001f642").matches("\ud83d\ude42")
    assert not compile_anchored("a").matches("a\ud800")
    with pytest.raises(RegexError, match="lone surrogate"):
        compile_anchored("a\ud800")


def test_non_strings_are_refused() -> None:
    with pytest.raises(RegexError, match="must be a string"):
        compile_anchored(b"abc")  # type: ignore[arg-type]


ATTACK = """
from bot.alerts.regex import compile_anchored
value = "a" * 50_000
print(
    compile_anchored("(a+)+b").matches(value),
    compile_anchored("(a|aa)+b").matches(value),
    compile_anchored("(a|a)*$x").matches(value),
    compile_anchored("(.*a){20}").matches(value + "b"),
    compile_anchored("(a+)+").matches(value),
)
"""


def test_catastrophic_backtracking_patterns_finish() -> None:
    """Classic exponential patterns against a 50,000-character value: RE2 answers in linear time.

    In a child with a generous limit, so a backtracking engine fails this test instead of hanging it.
    """
    try:
        done = subprocess.run([sys.executable, "-c", ATTACK], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("matching did not finish within 20 s: the engine backtracks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False", "False", "True"]
