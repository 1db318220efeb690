"""`triggers.schedule`: cron, time zone and params are load-time errors naming the file and the
entry, never a schedule that Temporal refuses (or runs wrongly) at 03:00."""

from __future__ import annotations

import pytest

from bot.playbook.cron import check_cron, check_timezone
from bot.playbook.loader import PlaybookLoadErrors, load_text
from bot.playbook.model import Playbook

BASE = """
name: cert-check
params:
  host: {type: string, pattern: "^[a-z0-9.-]+$"}
  days: {type: integer, default: 14}
triggers:
  schedule:
    - ENTRY
steps:
  - {id: note, action: core.log, with: {message: "{{ params.host }}"}}
"""


def errors(entry: str) -> list[str]:
    with pytest.raises(PlaybookLoadErrors) as info:
        load_text(BASE.replace("ENTRY", entry), path="certs.yaml")
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize("cron", [
    "0 3 * * *", "*/15 * * * *", "0 8-18/2 * * mon-fri", "30 4 1,15 * *", "0 0 1 jan-jun *", "0 0 * * SUN",
    "@daily", "@hourly", "@weekly", "@monthly", "@yearly", "@annually", "@midnight",
])
def test_classic_five_field_crons_and_macros_load(cron: str) -> None:
    assert check_cron(cron) == cron


@pytest.mark.parametrize("cron, why", [
    ("", "cron is empty"),
    ("0 3 * *", "has 4 field(s); expected 5"),
    ("0 0 3 * * *", "has 6 field(s)"),  # seconds: Temporal would read it, differently from what was meant
    ("CRON_TZ=Europe/Berlin 0 3 * * *", "the time zone goes in timezone:"),
    ("60 3 * * *", "minute field '60': 60 is outside 0-59"),
    ("0 24 * * *", "hour field '24': 24 is outside 0-23"),
    ("0 3 0 * *", "day of month field '0': 0 is outside 1-31"),
    ("0 3 * 13 *", "month field '13'"),
    ("0 3 * * 7", "day of week field '7': 7 is outside 0-6"),
    ("0 3 * * fri-mon", "runs backwards"),
    ("0 3 L * *", "'L' is not a number"),
    ("0 3 * * 1#2", "is not *, a number, a range"),
    ("*/0 3 * * *", "the step must be 1 or more"),
    ("5/10 * * * *", "a step needs * or a range before it"),
    ("@every 5m", "unknown macro"),
    ("@reboot", "unknown macro"),
])
def test_anything_else_is_refused_saying_why(cron: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        check_cron(cron)
    assert why in str(info.value)


def test_time_zones_are_iana_names() -> None:
    assert check_timezone("Europe/Berlin") == "Europe/Berlin"
    for bad in ("Mars/Olympus", "CEST", "../../etc/passwd", "", "Europe/Berlin "):
        with pytest.raises(ValueError, match="is not an IANA time zone name"):
            check_timezone(bad)


def test_a_bad_cron_or_zone_names_the_file_line_and_entry() -> None:
    found = errors('{cron: "0 3 * * * *", timezone: Mars/Olympus, params: {host: a.example}}')
    assert found == [
        "certs.yaml:8: triggers.schedule[0].cron: cron '0 3 * * * *' has 6 field(s); expected 5: minute hour "
        "day-of-month month day-of-week (the time zone goes in timezone:, not in the expression)",
        "certs.yaml:8: triggers.schedule[0].timezone: timezone 'Mars/Olympus' is not an IANA time zone name "
        "(e.g. UTC, Europe/Berlin, America/New_York)",
    ]


def test_params_are_typed_and_checked_like_any_run() -> None:
    found = errors('{cron: "@daily", params: {days: soon, hots: x}}')
    assert any("triggers.schedule[0].params: missing required param 'host'" in e for e in found)
    assert any("triggers.schedule[0].params: param 'days': expected an integer" in e for e in found)
    assert any("unknown param 'hots'; did you mean 'host'?" in e for e in found)
    assert errors('{cron: "@daily", params: {host: "A B"}}') == [
        "certs.yaml:8: triggers.schedule[0].params: param 'host': 'A B' does not match ^[a-z0-9.-]+$"
    ]


def test_params_are_literals_not_templates() -> None:
    [found] = errors('{cron: "@daily", params: {host: "{{ alert.labels.host }}"}}')
    assert "triggers.schedule[0].params.host: schedule params are literal values" in found


def test_entries_need_distinct_ids_and_only_known_overlap_policies() -> None:
    [dup] = errors('{cron: "@daily", id: nightly, params: {host: a}}\n    - {cron: "@hourly", id: nightly, params: {host: b}}')
    assert "triggers.schedule[1].id: 'nightly' is also triggers.schedule[0]'s id" in dup
    # cancel_other / terminate_other would stop a run without its saga (Temporal's cancel is refused by
    # the run; terminate skips the undo): not offered.
    [overlap] = errors('{cron: "@daily", overlap: terminate_other, params: {host: a}}')
    assert "triggers.schedule[0].overlap" in overlap


def test_a_valid_entry_loads_with_its_defaults_and_a_playbook_without_one_hashes_as_before() -> None:
    loaded = load_text(BASE.replace("ENTRY", '{cron: "0 3 * * *", timezone: Europe/Berlin, params: {host: a.example}}'))
    [entry] = loaded.playbook.triggers.schedule
    assert (entry.cron, entry.timezone, entry.overlap, entry.id) == ("0 3 * * *", "Europe/Berlin", "skip", None)
    v1 = {"name": "p", "steps": [{"id": "a", "action": "core.log"}]}
    before = "sha256:7d042d27e04920f5f59b5deb47fe6a523ee4de1e0164a4e156eec18f5d6f40bd"  # tests/playbook/test_concurrency.py
    assert Playbook.model_validate(v1).content_hash() == before
    scheduled = Playbook.model_validate({**v1, "triggers": {"schedule": [{"cron": "@daily"}]}})
    assert scheduled.content_hash() != before
