"""Cron expressions and time zones of `triggers.schedule`, checked when the playbook loads.

Temporal parses the expression when the schedule is created, long after the file was merged; a
typo found then is a nightly job that silently never runs. So the loader accepts the classic
five fields (minute hour day-of-month month day-of-week, each `*`, a number, a range, a name,
`/step`, comma lists) and the @-macros, which Temporal reads the same way, and refuses anything
else (seconds or year fields, `L`, `#`, `CRON_TZ=`) with the reason.
"""

from __future__ import annotations

import re
import zoneinfo

MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (name, low, high, names mapped to numbers)
_FIELDS: list[tuple[str, int, int, dict[str, int]]] = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    ("day of week", 0, 6, {name: i for i, name in enumerate(_DAYS)}),
]
_ITEM = re.compile(r"^(?P<range>\*|[A-Za-z0-9]+(-[A-Za-z0-9]+)?)(/(?P<step>[0-9]+))?$")


def check_cron(expression: str) -> str:
    """The expression as given, or ValueError saying which field is wrong and why."""
    text = expression.strip()
    if not text:
        raise ValueError("cron is empty: give five fields (minute hour day-of-month month day-of-week), e.g. \"0 3 * * *\"")
    if text.startswith("@"):
        if text.lower() in MACROS:
            return expression
        raise ValueError(f"cron {expression!r}: unknown macro (use one of {', '.join(sorted(MACROS))}, or five fields)")
    fields = text.split()
    if len(fields) != len(_FIELDS):
        raise ValueError(
            f"cron {expression!r} has {len(fields)} field(s); expected 5: minute hour day-of-month month day-of-week "
            "(the time zone goes in timezone:, not in the expression)"
        )
    for value, (name, low, high, names) in zip(fields, _FIELDS):
        for item in value.split(","):
            problem = _item_problem(item, low, high, names)
            if problem:
                raise ValueError(f"cron {expression!r}: {name} field {value!r}: {problem}")
    return expression


def _item_problem(item: str, low: int, high: int, names: dict[str, int]) -> str | None:
    match = _ITEM.match(item)
    if match is None:
        return f"{item!r} is not *, a number, a range a-b, or one of those with /step"
    step = match.group("step")
    if step is not None and int(step) < 1:
        return f"{item!r}: the step must be 1 or more"
    part = match.group("range")
    if part == "*":
        return None
    bounds = part.split("-")
    numbers: list[int] = []
    for bound in bounds:
        number = names.get(bound.lower()) if not bound.isdigit() else int(bound)
        if number is None:
            allowed = f" or a name ({', '.join(names)})" if names else ""
            return f"{bound!r} is not a number{allowed}"
        if not low <= number <= high:
            return f"{number} is outside {low}-{high}"
        numbers.append(number)
    if len(numbers) == 2 and numbers[0] > numbers[1]:
        return f"range {part!r} runs backwards"
    if step is not None and len(numbers) == 1:
        return f"{item!r}: a step needs * or a range before it (e.g. */{step} or {numbers[0]}-{high}/{step})"
    return None


def check_timezone(name: str) -> str:
    """An IANA zone name (Europe/Berlin, UTC), or ValueError: Temporal resolves the same names."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin, America/New_York)") from None
    return name
