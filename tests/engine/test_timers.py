"""Retries, timeouts and long sleeps, on the time-skipping test server where time matters."""

from __future__ import annotations

from tests.engine.support import Recorder, execute, playbook


async def test_retry_backoff_minutes_apart_then_success(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: retry
steps:
  - id: flaky
    action: t.flaky
    with: {fails: 2}
    retry: {max_attempts: 3, initial_interval: 1m, backoff: 2.0, max_interval: 10m}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "completed"
    assert status.step("flaky").attempts == 3
    assert [c[2]["attempt"] for c in rec.calls] == [1, 2, 3]
    # 1m then 2m (initial_interval, times backoff 2.0) between attempts, in (skipped) server time;
    # the upper bounds leave 30 s for real time, far below the next interval a wrong policy gives
    first, second, third = rec.attempt_started
    gaps = [(second - first).total_seconds(), (third - second).total_seconds()]
    assert 60 <= gaps[0] < 90 and 120 <= gaps[1] < 150, gaps
    assert 180 <= (status.finished_at - status.started_at).total_seconds() < 240


async def test_retries_exhausted_fails_with_attempt_count(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: exhaust
steps:
  - id: flaky
    action: t.flaky
    with: {fails: 5}
    retry: {max_attempts: 2, initial_interval: 30s}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "compensated"
    step = status.step("flaky")
    assert (step.state, step.attempts) == ("failed", 2)
    assert step.error == "flaky attempt 2"


async def test_long_sleep_is_a_durable_timer(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: sleepy
steps:
  - {id: settle, action: core.sleep, with: {duration: 6h}}
  - {id: after, action: t.ok}
"""
    )
    status = await execute(skip_env.client, rec, pb)
    assert status.state == "completed"
    assert status.step("settle").output == {"slept": "6h"}
    assert (status.step("settle").finished_at - status.step("settle").started_at).total_seconds() >= 6 * 3600
    assert rec.sequence() == ["after"]


async def test_bad_sleep_duration_at_runtime_fails_the_step(skip_env):
    rec = Recorder()
    pb = playbook(
        """
name: badsleep
params: {d: {type: string}}
steps:
  - {id: settle, action: core.sleep, with: {duration: "{{ params.d }}"}}
"""
    )
    status = await execute(skip_env.client, rec, pb, params={"d": "forever"})
    assert status.step("settle").state == "failed"
    assert "bad duration 'forever'" in status.step("settle").error


async def test_step_timeout_per_attempt(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: timeout
steps:
  - id: stuck
    action: t.wait
    timeout: 1s
    retry: {max_attempts: 2, initial_interval: 100ms}
"""
    )
    status = await execute(dev_env.client, rec, pb)
    step = status.step("stuck")
    assert (step.state, step.attempts) == ("failed", 2)
    assert step.error == "timed out (start-to-close)"
    assert len(rec.calls) == 2
