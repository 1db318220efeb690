"""What a playbook's templates read of step outputs, and how a large output is kept out of state."""

from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bot.actions import outputs as action_outputs
from bot.actions.base import ActionInput, OutputRef
from bot.actions.outputs import OutputLimits, settle_output
from bot.audit.events import EventKind, canonical_json
from bot.audit.recorder import AUDIT_UNAVAILABLE, AuditWriter
from bot.audit.store import SqliteAuditStore
from bot.playbook import outputs
from bot.playbook.outputs import WHOLE, OutputNeeds, kept, needs_of, output_needs
from tests.engine.support import playbook

PB = """
name: reads
steps:
  - {id: a, action: t.ok}
  - {id: b, action: t.ok, with: {x: "{{ steps.a.output.json.id }}", y: "{{ steps.a['output']['json'].n }}"}}
  - {id: c, action: t.ok, when: "{{ steps.b.state == 'succeeded' }}"}
  - {id: d, action: t.ok, with: {all: "{{ steps.c.output | tojson }}"}}
  - {id: e, action: t.ok, with: {k: "{{ steps.d.output.rows[0].name }}"},
     compensate: {action: t.ok, with: {id: "{{ steps.e.output.ticket }}"}}}
  - id: roll
    foreach: "{{ steps.e.output.hosts }}"
    steps:
      - {id: drain, action: t.ok}
      - {id: check, action: t.ok}
  - {id: f, action: t.ok, with: {v: "{{ steps.roll.output[0].drain.ok }}"}}
"""


def test_output_needs_follow_each_templates_reads():
    needs = output_needs(playbook(PB))
    assert needs is not None
    assert needs["a"].paths == [["json", "id"], ["json", "n"]]  # attribute and ['key'] spellings alike
    assert "b" not in needs  # only its state is read
    assert needs["c"] == WHOLE  # read as a whole (tojson)
    assert needs["d"].paths == [["rows"]]  # an index keeps the list it indexes
    assert sorted(needs["e"].paths) == [["hosts"], ["ticket"]]  # its own undo's read counts too
    assert needs["drain"].paths == [["ok"]]  # read through the foreach group's output
    assert "check" not in needs
    assert needs_of(needs, "roll[3].drain").paths == [["ok"]]
    assert needs_of(needs, "f") == OutputNeeds()


def test_reading_steps_itself_needs_every_output_whole():
    pb = playbook("""
name: whole
steps:
  - {id: a, action: t.ok}
  - {id: b, action: t.ok, with: {x: "{{ steps | tojson }}"}}
""")
    assert output_needs(pb) is None
    assert needs_of(None, "a") == WHOLE



def test_needs_are_remembered_by_the_playbooks_whole_text_not_its_name(monkeypatch):
    """Each run asks as it starts, so the answer is remembered; an edited playbook under the same
    name (or a start that carries a doctored snapshot) gets the answer for its own templates."""
    fresh_memory(monkeypatch)
    calls = []
    parse = outputs._output_needs
    monkeypatch.setattr(outputs, "_output_needs", lambda pb, doc: calls.append(pb.name) or parse(pb, doc))
    reads_id = PAIR.replace("FIELD", "id")
    assert output_needs(playbook(reads_id))["a"].paths == [["id"]]
    assert output_needs(playbook(reads_id))["a"].paths == [["id"]]
    assert calls == ["pair"]  # the second run of the same text parsed nothing
    assert output_needs(playbook(PAIR.replace("FIELD", "secret_ref")))["a"].paths == [["secret_ref"]]
    assert calls == ["pair", "pair"]


def test_the_memory_of_needs_is_bounded_and_drops_the_oldest(monkeypatch):
    fresh_memory(monkeypatch)
    calls = []
    parse = outputs._output_needs
    monkeypatch.setattr(outputs, "_output_needs", lambda pb, doc: calls.append(1) or parse(pb, doc))
    books = [playbook(PAIR.replace("FIELD", f"f{i}")) for i in range(outputs.MEMO_SIZE + 20)]
    for pb in books:
        output_needs(pb)
    assert len(outputs._MEMO) == outputs.MEMO_SIZE
    assert all(len(key) == 64 for key in outputs._MEMO)  # digests: a snapshot's text is not kept
    asked = len(calls)
    assert output_needs(books[-1])["a"].paths == [[f"f{len(books) - 1}"]] and len(calls) == asked  # kept
    assert output_needs(books[0])["a"].paths == [["f0"]] and len(calls) == asked + 1  # dropped, worked out again


def test_the_remembered_answer_refuses_writes(monkeypatch):
    """It is shared by every run on the worker: one run changing it would change what another keeps."""
    fresh_memory(monkeypatch)
    needs = output_needs(playbook(PAIR.replace("FIELD", "id")))
    with pytest.raises(TypeError):
        needs["b"] = WHOLE  # type: ignore[index]
    assert output_needs(playbook(PAIR.replace("FIELD", "id"))) is needs


def test_a_playbook_reading_many_keys_is_not_remembered(monkeypatch):
    """A long chain of reads is a small text but a string per key: the memory holds few keys per
    playbook, whatever a start's snapshot spells (review: 4.9 MB kept for a 248 KB playbook)."""
    fresh_memory(monkeypatch)
    monkeypatch.setattr(outputs, "MEMO_KEYS_MAX", 10)
    chain = playbook(PAIR.replace("FIELD", ".".join(f"k{i}" for i in range(20))))
    assert output_needs(chain)["a"].paths == [[f"k{i}" for i in range(20)]]
    assert outputs._MEMO == {}
    output_needs(playbook(PAIR.replace("FIELD", "id")))
    assert len(outputs._MEMO) == 1


def test_threads_share_the_memory_without_errors(monkeypatch):
    """Workflow tasks of one worker run in several threads: lookups, evictions and inserts race."""
    fresh_memory(monkeypatch)
    monkeypatch.setattr(outputs, "MEMO_SIZE", 8)
    books = [playbook(PAIR.replace("FIELD", f"f{i}")) for i in range(64)]
    errors: list[BaseException] = []

    def ask(offset: int) -> None:
        try:
            for n in range(400):
                i = (n * 7 + offset) % len(books)
                assert output_needs(books[i])["a"].paths == [[f"f{i}"]]
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=ask, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(outputs._MEMO) <= 8


def test_an_outsized_playbook_is_not_remembered(monkeypatch):
    """Needs are worked out before admission, for whatever snapshot a start carries."""
    fresh_memory(monkeypatch)
    small = playbook(PAIR.replace("FIELD", "id"))
    monkeypatch.setattr(outputs, "MEMO_TEXT_MAX", len(small.model_dump_json(by_alias=True)) + 100)
    big = playbook(PAIR.replace("FIELD", "x" * 200))
    assert output_needs(big)["a"].paths == [["x" * 200]]
    assert outputs._MEMO == {}
    assert output_needs(small)["a"].paths == [["id"]]
    assert len(outputs._MEMO) == 1


def test_runs_of_one_playbook_share_one_parsed_copy(monkeypatch):
    """A run's own parsed snapshot was most of what a run waiting on approval holds: equal
    playbooks (the same JSON) share the first one's copy; a bigger one keeps only its needs."""
    fresh_memory(monkeypatch)
    first, again = (playbook(PAIR.replace("FIELD", "id")) for _ in range(2))
    assert first is not again and first == again
    assert outputs.shared_playbook(first)[0] is first
    shared, needs = outputs.shared_playbook(again)
    assert shared is first and needs["a"].paths == [["id"]]
    monkeypatch.setattr(outputs, "MEMO_PLAYBOOK_MAX", len(first.model_dump_json(by_alias=True)) + 50)
    big, big_again = (playbook(PAIR.replace("FIELD", "x" * 100)) for _ in range(2))
    outputs.shared_playbook(big)
    shared, needs = outputs.shared_playbook(big_again)
    assert shared is big_again and needs["a"].paths == [["x" * 100]]  # its needs kept, not its copy


def test_the_kept_copies_stay_within_their_byte_budget(monkeypatch):
    fresh_memory(monkeypatch)
    sizes = [len(playbook(PAIR.replace("FIELD", f"f{i:02d}")).model_dump_json(by_alias=True)) for i in range(3)]
    monkeypatch.setattr(outputs, "MEMO_PLAYBOOK_BYTES", sum(sizes[:2]) + 10)  # room for two
    books = [playbook(PAIR.replace("FIELD", f"f{i:02d}")) for i in range(3)]
    for pb in books:
        outputs.shared_playbook(pb)
    assert sum(size for _, _, size in outputs._MEMO.values()) <= outputs.MEMO_PLAYBOOK_BYTES
    kept = [kept for kept, _, _ in outputs._MEMO.values()]
    assert len(kept) == 2 and all(a is b for a, b in zip(kept, books[1:]))  # the oldest went


def test_a_kept_copy_goes_only_to_an_equal_playbook(monkeypatch):
    """JSON does not tell every playbook apart: NaN dumps as null. A start nobody admits (anyone
    who can reach Temporal) must not give its copy to later runs of the real playbook, where
    `when: "{{ vars.flag }}"` would read NaN (true) instead of null (false). Review finding."""
    fresh_memory(monkeypatch)
    text = PAIR.replace("FIELD", "id") + "vars: {flag: FLAG}\n"
    hostile, real = playbook(text.replace("FLAG", ".nan")), playbook(text.replace("FLAG", "null"))
    assert hostile.model_dump_json(by_alias=True) == real.model_dump_json(by_alias=True)
    assert outputs.shared_playbook(hostile)[0] is hostile
    shared, needs = outputs.shared_playbook(real)
    assert shared is real and shared.vars == {"flag": None}
    assert needs["a"].paths == [["id"]]  # the needs are the text's, the same for both


def fresh_memory(monkeypatch) -> None:
    monkeypatch.setattr(outputs, "_MEMO", {})


PAIR = """
name: pair
steps:
  - {id: a, action: t.ok}
  - {id: b, action: t.ok, with: {x: "{{ steps.a.output.FIELD }}"}}
"""

def test_kept_holds_what_is_read_and_leaves_missing_keys_missing():
    output = {"json": {"id": "x", "big": "y" * 100, "rows": [1, 2], "name": "n"}, "stdout": "z" * 100}
    assert kept(output, OutputNeeds(paths=[["json", "id"]])) == {"json": {"id": "x"}}
    assert kept(output, OutputNeeds(paths=[["json", "absent", "q"]])) == {"json": {}}
    assert kept(output, OutputNeeds(paths=[["json", "name", "upper"]])) == {"json": {"name": "n"}}
    assert kept(output, OutputNeeds(paths=[["json", "items"]])) == {"json": output["json"]}  # .items()
    assert kept(output, OutputNeeds(paths=[["nope"]])) == {}
    assert kept(output, WHOLE) is output


def _input(keep: OutputNeeds | None, step: str = "s") -> ActionInput:
    return ActionInput(run_id="run-1", step_id=step, playbook="p", action="shell.run", idempotency_key=f"run-1:{step}",
                       keep=keep)


async def test_a_large_output_goes_to_the_trail_and_the_run_keeps_a_reference(tmp_path: Path):
    output = {"json": {"id": "abc", "blob": "é" * 20_000}, "exit_code": 0}
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        keep, ref = await ActivityEnvironment().run(
            settle_output, output, _input(OutputNeeds(paths=[["json", "id"]])), 2, AuditWriter(store), OutputLimits()
        )
        assert keep == {"json": {"id": "abc"}}
        assert ref is not None and ref.refused is None
        text = canonical_json(output)
        assert (ref.size, ref.sha256) == (len(text.encode()), hashlib.sha256(text.encode()).hexdigest())
        assert len(ref.preview.encode()) <= 1024 and text.startswith(ref.preview)
        stored = store.get_event(ref.event_id)
        assert stored is not None and stored.kind is EventKind.step_output
        assert stored.details["output"] == output and stored.details["attempt"] == 2
        assert store.get_event("no-such-event") is None
        assert store.verify().ok


async def test_a_small_output_and_a_run_from_before_keep_it_whole(tmp_path: Path):
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        small = {"json": {"id": "abc"}}
        assert await ActivityEnvironment().run(
            settle_output, small, _input(OutputNeeds()), 1, AuditWriter(store), OutputLimits()
        ) == (small, None)
        large = {"blob": "x" * 40_000}
        assert await ActivityEnvironment().run(
            settle_output, large, _input(None), 1, AuditWriter(store), OutputLimits()
        ) == (large, None)
        assert store.events() == []


async def test_a_large_output_read_whole_or_by_a_large_field_is_refused_naming_the_limit(tmp_path: Path):
    output = {"json": {"id": "abc", "blob": "x" * 40_000}}
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        keep, ref = await ActivityEnvironment().run(
            settle_output, output, _input(WHOLE, "big"), 1, AuditWriter(store), OutputLimits()
        )
        assert keep == {} and ref is not None and ref.refused is not None
        assert "16384-byte limit" in ref.refused and "steps.big.output" in ref.refused
        assert store.get_event(ref.event_id) is not None  # the trail has it all the same
        keep, ref = await ActivityEnvironment().run(
            settle_output, output, _input(OutputNeeds(paths=[["json", "blob"]]), "big"), 1, AuditWriter(store),
            OutputLimits(),
        )
        assert keep == {} and ref is not None and "json.blob" in (ref.refused or "")


async def test_a_store_that_stays_down_fails_the_attempt_retryable(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(action_outputs, "STORE_BACKOFF", 0.01)
    (tmp_path / "audit.db").mkdir()  # a directory where the database should be: every write fails
    with SqliteAuditStore(tmp_path / "audit.db") as store:
        with pytest.raises(ApplicationError) as raised:
            await ActivityEnvironment().run(
                settle_output, {"blob": "x" * 40_000}, _input(OutputNeeds()), 1, AuditWriter(store), OutputLimits()
            )
    assert raised.value.type == AUDIT_UNAVAILABLE and not raised.value.non_retryable
    assert "must go to the audit trail and the store is unavailable" in raised.value.message


FE_AFTER_BIG = """\
name: fe-after-big
owner: sre-oncall
steps:
  - {id: dump, action: http.request, with: {method: GET, url: "https://x.internal/dump"}}
  - id: roll
    foreach: [h0, h1, h2, h3, h4, h5, h6, h7, h8, h9]
    max_failures: all
    steps:
      - {id: item, action: http.request, with: {method: GET, url: "https://x.internal/{{ item }}"}}
"""


async def test_a_steps_and_items_outputs_share_the_run_budget(skip_env, tmp_path: Path):
    """700 KB kept by a step, then items of 100 KB: the group stops once the run's outputs pass
    1 MiB (each budget alone, the items' own 1 MiB included, would let ~1.7 MiB through)."""
    from bot.rehearse.report import rehearse
    from tests.rehearse.support import POLICIES, directory

    cases = (
        "playbook: fe-after-big\ncases:\n  - name: big then items\n"
        f"    mocks: {{dump: {{output: {{blob: \"{'x' * 700_000}\"}}}}, item: {{output: {{blob: \"{'y' * 100_000}\"}}}}}}\n"
        "    expect: {state: compensated, error: \"budget of 1 MiB\", steps: {\"roll[9]\": skipped}}\n"
    )
    path = directory(tmp_path, cases, name="fe-after-big.test.yaml", extra={"fe-after-big.yaml": FE_AFTER_BIG})
    report = await rehearse(path, POLICIES, env=skip_env)
    assert report.bad_files == [], report.bad_files
    [result] = report.results
    assert result.failures == [], result.failures


def test_the_status_table_shows_a_large_outputs_preview_and_how_to_read_it():
    from rich.console import Console

    from bot.console import status_table
    from bot.engine.state import RunStatus, StepStatus

    ref = OutputRef(event_id="run-1:s:step_output:e:do:1", sha256="0" * 64, size=524288,
                    preview='{"stdout":"[bold red]pwned[/] x"}')
    status = RunStatus(run_id="run-1", playbook="p", playbook_hash="h", requested_by="cli:a", trigger="cli",
                       steps=[StepStatus(id="s", action="shell.run", state="succeeded", output={}, output_ref=ref)])
    console = Console(width=400, record=True)
    console.print(status_table(status))
    text = console.export_text()
    assert "output 524288 bytes" in text and "audit show-output run-1:s:step_output:e:do:1" in text
    assert "[bold red]pwned[/]" in text  # shown as the text it is, not taken as markup


def test_a_reference_is_kept_at_most_as_large_as_a_real_one():
    """engine-v14: what a result says of a large output is cut to what a real reference holds (a
    client completing the action by id writes any); a real one is kept as it is."""
    forged = OutputRef(event_id="e" * 5000, sha256="0" * 100, size=1, preview="p" * 20_000, refused="r" * 3000)
    kept = forged.bounded()
    assert (len(kept.event_id), len(kept.sha256), len(kept.preview), len(kept.refused or "")) == (2048, 64, 16384, 2000)
    real = OutputRef(event_id="step_output:run-1:check", sha256="0" * 64, size=70_000, preview="{...")
    assert real.bounded() is real
