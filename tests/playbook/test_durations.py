from datetime import timedelta

import pytest

from bot.playbook.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("2m", timedelta(minutes=2)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5s", timedelta(seconds=1.5)),
        ("1d", timedelta(days=1)),
        (" 30s ", timedelta(seconds=30)),
    ],
)
def test_parses_what_people_write(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["5", "5x", "", "-1s", 5, 1.5, None, "1h 30m", "s", "30S", "1.5.5s"])
def test_refuses_bad_durations_with_a_hint(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert repr(bad) in str(info.value)
    assert "30s" in str(info.value)  # says what a good one looks like


@pytest.mark.parametrize("text", ["500ms", "30s", "2m", "1h", "1h30m", "1d2h3m4s5ms", "0s"])
def test_format_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_timedelta_passes_through() -> None:
    assert parse_duration(timedelta(seconds=3)) == timedelta(seconds=3)


@pytest.mark.parametrize("text", ["3651d", "100000000000000s", "9" * 400 + "s"])
def test_refuses_a_duration_past_ten_years(text: str) -> None:
    """A duration can come from a template (a target's Retry-After): past timedelta's range it
    raised OverflowError, which pydantic passes through, into workflow code (red team)."""
    with pytest.raises(ValueError, match="longer than 3650 days"):
        parse_duration(text)
    assert parse_duration("3650d") == timedelta(days=3650)
