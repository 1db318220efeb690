"""Embedded backend: load-time errors, live reloads, and surviving crashes of rego-cpp."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bot.policy.embedded import EmbeddedEngine, load_policies
from bot.policy.errors import PolicyLoadError
from bot.policy.models import Decision, Failure
from tests.policy.conftest import BASE_INPUT, POLICIES

AUTHZ = Path("playbook") / "authz" / "authz.rego"
BROKEN_LINE = "broken if {\n\tinput.a ==\n}\n"  # "==" with nothing after it


def break_policy(root: Path) -> tuple[Path, int]:
    """Append a syntax error to authz.rego; returns the file and the line of the error."""
    path = root / AUTHZ
    text = path.read_text()
    path.write_text(text + "\n" + BROKEN_LINE)
    return path, text.count("\n") + 3  # the appended "\tinput.a ==" line


async def until(predicate, timeout: float = 10.0) -> Decision:
    """Decide repeatedly until the predicate holds (the engine recovers in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        decision = await predicate()
        if decision is not None:
            return decision
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("engine did not recover in time")
        await asyncio.sleep(0.05)


def test_load_policies_accepts_the_shipped_policies() -> None:
    sources = load_policies(POLICIES)

    assert str(POLICIES / AUTHZ) in sources.modules
    assert sources.data["playbook"]["freezes"] == []
    assert sources.data["playbook"]["groups"] == {}
    assert len(sources.hash) == 64


def test_syntax_error_names_file_and_line(policies_copy: Path) -> None:
    path, line = break_policy(policies_copy)

    with pytest.raises(PolicyLoadError) as caught:
        load_policies(policies_copy)

    assert (caught.value.file, caught.value.line, caught.value.column) == (str(path), line, 10)
    assert str(caught.value) == f"{path}:{line}:10: Invalid boolean operator"


def test_error_without_a_location_still_names_the_file(policies_copy: Path) -> None:
    # A Rego v0 partial rule beside a v1 rule: rego-cpp reports it with no position, so the
    # file is found by compiling each module alone.
    path = policies_copy / "playbook" / "legacy.rego"
    path.write_text("package playbook.legacy\n\nallow if input.a == 1\n\nallow[x] { x := 1 }\n")

    with pytest.raises(PolicyLoadError) as caught:
        load_policies(policies_copy)

    assert caught.value.file == str(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_bad_data_json_names_file_and_line(policies_copy: Path) -> None:
    data = policies_copy / "playbook" / "data.json"
    data.write_text('{\n  "freezes": [],\n  "groups": {,}\n}\n')

    with pytest.raises(PolicyLoadError, match=rf"^{data}:3:14: invalid JSON: Expecting property name"):
        load_policies(policies_copy)


def test_a_policy_that_crashes_the_compiler_is_a_load_error(policies_copy: Path) -> None:
    # `with input as {...}` aborts rego-cpp's compiler (an uncaught C++ exception).
    path = policies_copy / "playbook" / "crash.rego"
    path.write_text('package playbook.crash\n\nf if input.v < 3\n\ng if f with input as {"v": 1}\n')

    with pytest.raises(PolicyLoadError) as caught:
        load_policies(policies_copy)

    assert caught.value.file == str(path)
    assert "policy engine crashed while compiling the policies" in caught.value.message


def test_empty_directory_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="no .rego policies in"):
        load_policies(tmp_path)


async def test_engine_load_raises_on_a_syntax_error(policies_copy: Path) -> None:
    path, line = break_policy(policies_copy)
    async with EmbeddedEngine(policies_copy) as engine:
        with pytest.raises(PolicyLoadError, match=rf"^{path}:{line}:10: "):
            await engine.load()


async def test_an_idle_engines_verdict_hash_follows_its_files_without_a_question(policies_copy: Path) -> None:
    """A worker nobody asks still vouches only for its files as they are (red team, stop 44: the
    hash a front door's verdict is compared with was the one last loaded, stale until a question)."""
    async with EmbeddedEngine(policies_copy, reload_interval=0.2) as engine:
        await engine.load()
        before = engine.verdict_hash
        data = policies_copy / "playbook" / "data.json"
        data.write_text(json.dumps({**json.loads(data.read_text()), "start_denylist": ["cli:mallory"]}))
        deadline = asyncio.get_running_loop().time() + 5
        while engine.verdict_hash in (before, None) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert engine.verdict_hash not in (before, None)
        assert engine.verdict_hash == engine.policy_hash and engine.cache.misses == 0  # nobody asked


async def test_a_policy_that_reads_the_clock_vouches_for_no_verdict_asked_elsewhere(policies_copy: Path) -> None:
    """Its answer is not a function of its input: the same input asked elsewhere may be answered
    otherwise, so no front door's verdict counts (the engine asks; its cache is off too)."""
    (policies_copy / "playbook" / "authz" / "clock.rego").write_text(
        "package playbook.authz\n\nnow_ns := time.now_ns()\n")
    async with EmbeddedEngine(policies_copy) as engine:
        await engine.load()
        assert engine.policy_hash is not None and engine.verdict_hash is None
        assert await engine.current_verdict_hash() is None


async def test_broken_reload_denies_then_recovers(policies_copy: Path) -> None:
    async with EmbeddedEngine(policies_copy, reload_interval=0) as engine:
        before = await engine.decide(BASE_INPUT)
        good_hash = engine.policy_hash
        original = (policies_copy / AUTHZ).read_text()
        path, line = break_policy(policies_copy)

        assert engine.verdict_hash == good_hash
        with capture_logs() as logs:
            broken = await engine.decide(BASE_INPUT)
        unknown = engine.verdict_hash  # (failing closed: no verdict asked elsewhere counts either)
        (policies_copy / AUTHZ).write_text(original)
        fixed = await engine.decide(BASE_INPUT)
        assert unknown is None and engine.verdict_hash == good_hash

    assert before.allow and before.failure is None
    assert (broken.allow, broken.failure) == (False, Failure.LOAD_ERROR)
    assert broken.reasons == [f"policy failed to load: {path}:{line}:10: Invalid boolean operator"]
    assert any(log["event"] == "policy.load_failed" and log["log_level"] == "error" for log in logs)
    assert fixed.allow and fixed.failure is None
    assert fixed.policy_hash == good_hash


async def test_data_changes_are_picked_up(policies_copy: Path) -> None:
    data_path = policies_copy / "playbook" / "data.json"
    async with EmbeddedEngine(policies_copy, reload_interval=0) as engine:
        before = await engine.decide(BASE_INPUT)
        data = json.loads(data_path.read_text())
        data["freezes"] = [{"start": "2025-03-01T00:00:00Z", "end": "2025-03-02T00:00:00Z", "reason": "audit"}]
        data_path.write_text(json.dumps(data))
        frozen = await engine.decide(BASE_INPUT)
        critical = await engine.decide(
            {
                **BASE_INPUT,
                "alert": {"labels": {"severity": "critical"}},
                "provenance": {**BASE_INPUT["provenance"], "alert": {"source": "alertmanager", "verified": True}},
            }
        )

    assert before.allow
    assert frozen.policy_hash != before.policy_hash
    assert (frozen.allow, frozen.reasons) == (
        False,
        ["change freeze 2025-03-01T00:00:00Z until 2025-03-02T00:00:00Z: audit"],
    )
    assert critical.allow and critical.require_approval
    assert critical.reasons[-1] == (
        "critical alert overrides change freeze 2025-03-01T00:00:00Z until 2025-03-02T00:00:00Z: audit"
    )


async def test_unchanged_files_are_not_rechecked_within_the_interval(policies_copy: Path) -> None:
    async with EmbeddedEngine(policies_copy, reload_interval=3600) as engine:
        await engine.load()
        break_policy(policies_copy)
        decision = await engine.decide(BASE_INPUT)

    assert decision.allow  # the edit is only seen at the next check


async def test_killed_child_denies_meanwhile_then_restarts(policies_copy: Path) -> None:
    async with EmbeddedEngine(policies_copy, restart_delay=0.2) as engine:
        await engine.load()
        old_pid = engine.pid
        assert old_pid is not None and await engine.ready()

        os.kill(old_pid, signal.SIGKILL)
        with capture_logs() as logs:
            at_crash = await engine.decide(BASE_INPUT)
            meanwhile = await engine.decide(BASE_INPUT)
        restarting = await engine.ready()

        async def answered() -> Decision | None:
            decision = await engine.decide(BASE_INPUT)
            return decision if decision.failure is None else None

        recovered = await until(answered)
        new_pid = engine.pid

    assert (at_crash.allow, at_crash.failure) == (False, Failure.ENGINE_CRASHED)
    assert at_crash.reasons == ["policy engine process killed by SIGKILL; restarting it"]
    assert (meanwhile.allow, meanwhile.failure) == (False, Failure.ENGINE_CRASHED)
    assert meanwhile.reasons == ["policy engine restarting after a crash (policy engine process killed by SIGKILL)"]
    assert any(log["event"] == "policy.engine_crashed" and log["log_level"] == "error" for log in logs)
    assert restarting is False
    assert recovered.allow and recovered.require_approval
    assert new_pid is not None and new_pid != old_pid


async def test_undefined_rule_denies(tmp_path: Path) -> None:
    (tmp_path / "authz.rego").write_text("package playbook.authz\n\napprover := {\"allow\": true} if input.never\n")
    async with EmbeddedEngine(tmp_path) as engine:
        decision = await engine.decide(BASE_INPUT)
        verdict = await engine.approver(BASE_INPUT)

    assert (decision.allow, decision.failure) == (False, Failure.UNDEFINED)
    assert decision.reasons == ["policy undefined: data.playbook.authz.decision has no value for this input"]
    assert verdict.failure is Failure.UNDEFINED


async def test_evaluation_error_denies(tmp_path: Path) -> None:
    # Two complete definitions with different values: a conflict at evaluation time.
    (tmp_path / "authz.rego").write_text(
        "package playbook.authz\n\n"
        'decision := {"allow": true} if input.now\n\n'
        'decision := {"allow": false} if input.now\n'
    )
    async with EmbeddedEngine(tmp_path) as engine:
        decision = await engine.decide(BASE_INPUT)

    assert (decision.allow, decision.failure) == (False, Failure.EVAL_ERROR)
    assert decision.reasons == [
        "policy evaluation failed: data.playbook.authz.decision: complete rules must not produce multiple outputs"
    ]


async def test_malformed_result_denies(tmp_path: Path) -> None:
    (tmp_path / "authz.rego").write_text('package playbook.authz\n\ndecision := {"allow": "true"}\n')
    async with EmbeddedEngine(tmp_path) as engine:
        decision = await engine.decide(BASE_INPUT)

    assert (decision.allow, decision.failure) == (False, Failure.MALFORMED)
    assert decision.reasons == [
        "policy result malformed: data.playbook.authz.decision: allow: Input should be a valid boolean"
    ]


async def test_policy_hash_and_readiness(embedded_engine: EmbeddedEngine) -> None:
    decision = await embedded_engine.decide(BASE_INPUT)

    assert await embedded_engine.ready() is True
    assert decision.policy_hash == embedded_engine.policy_hash == load_policies(POLICIES).hash


async def test_input_that_is_not_json_denies(embedded_engine: EmbeddedEngine) -> None:
    decision = await embedded_engine.decide({**BASE_INPUT, "now": float("nan")})

    assert (decision.allow, decision.failure) == (False, Failure.INVALID_INPUT)
    assert decision.reasons[0].startswith("policy input is not JSON: ")
    assert (await embedded_engine.decide(BASE_INPUT)).allow  # the child was not disturbed


async def test_a_bug_of_ours_is_a_deny_not_an_exception(
    embedded_engine: EmbeddedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_reload(force: bool = False) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(embedded_engine, "_reload", broken_reload)
    unseen = {**BASE_INPUT, "run": {**BASE_INPUT["run"], "id": "run-bug"}}  # not answered from the cache
    with capture_logs() as logs:
        decision = await embedded_engine.decide(unseen)

    assert (decision.allow, decision.failure) == (False, Failure.INTERNAL)
    assert decision.reasons == ["policy engine error: RuntimeError: boom"]
    assert any(log["event"] == "policy.internal_error" for log in logs)


def test_the_child_process_loads_only_the_standard_library_it_needs_and_regopy():
    """One child per worker and per front door: asyncio and ssl would add about 7 MB to each."""
    from bot.policy.rego_process import CHILD_MODULE, child_env

    code = f"import runpy, sys; runpy.run_module('{CHILD_MODULE}', run_name='imported'); print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'ssl', 'pydantic', 'temporalio')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, env=child_env())
    assert out.stdout.strip() == "[]"
