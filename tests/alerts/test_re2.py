"""RE2 -> Python `re`: what is rewritten to keep RE2's meaning, and what is refused."""

from __future__ import annotations

import pytest

from bot.alerts.re2 import RE2Error, compile_anchored, translate


@pytest.mark.parametrize(
    "pattern, text, expected",
    [
        ("a$", "a\n", False),
        ("(?m)a$\nb", "a\nb", True),
        (r"a\z", "a", True),
        (r"\Aab", "ab", True),
        (r"\w+", "héllo", False),  # ASCII \w
        (r"[\w]+", "abc_1", True),
        (r"\s", "\u00a0", False),  # ASCII \s
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
        ("(a|b)(?i)c|d", "D", True),
        ("(a|b)(?i)c|d", "bC", True),
    ],
)
def test_rewritten_patterns_keep_re2_meaning(pattern: str, text: str, expected: bool) -> None:
    assert (compile_anchored(pattern).match(text) is not None) is expected


@pytest.mark.parametrize(
    "pattern, problem",
    [
        (r"a\Z", "invalid escape"),
        ("(?#note)a", "comment group"),
        ("(?>a)", "atomic group"),
        ("(?<=a)b", "lookbehind"),
        ("(?x)a b", "unknown flag"),
        ("[[:nope:]]", "invalid character class"),
        ("[abc", "missing closing ]"),
        ("a)", "unexpected )"),
        ("(a", "missing closing )"),
        (r"\1", "backreference"),
        (r"\p{Greek}", "Unicode class"),
        (r"\u00e9", "invalid escape"),
        ("a**", "nested repetition"),
        ("a{2}{3}", "nested repetition"),
        ("a{3,2}", "repeat count"),
        ("a\\", "trailing backslash"),
    ],
)
def test_refused(pattern: str, problem: str) -> None:
    with pytest.raises(RE2Error) as info:
        compile_anchored(pattern)
    assert problem in str(info.value)


def test_translate_is_plain_text() -> None:
    assert translate("critical|page") == "critical|page"
    assert translate(r"a\z") == r"a\Z"
    assert translate("a(?i)b|c") == "a(?i:b)|(?i:c)"
