from datetime import timedelta

import pytest
from pydantic import ValidationError

from bot.playbook.model import Compensation, ParallelGroup, ParamSpec, Playbook, RetryPolicy, Step


def minimal(**step: object) -> Playbook:
    return Playbook.model_validate({"name": "p", "steps": [{"id": "a", "action": "core.log", **step}]})


def test_step_defaults_follow_design() -> None:
    step = minimal().steps[0]
    assert isinstance(step, Step)
    assert step.retry == RetryPolicy(
        max_attempts=3, initial_interval=timedelta(seconds=1), backoff=2.0, max_interval=timedelta(seconds=30)
    )
    assert step.timeout == timedelta(minutes=5)
    assert step.impact == "low"
    assert step.with_ == {} and step.when is None and step.compensate is None


def test_compensations_retry_the_same_way() -> None:
    step = minimal(compensate={"action": "core.log"}).steps[0]
    assert isinstance(step, Step) and isinstance(step.compensate, Compensation)
    assert step.compensate.retry == step.retry
    assert step.compensate.timeout == timedelta(minutes=5)


def test_parallel_group_and_leaf_steps() -> None:
    playbook = Playbook.model_validate(
        {
            "name": "p",
            "steps": [
                {"id": "a", "action": "core.log"},
                {"id": "g", "parallel": [{"id": "b", "action": "core.log"}, {"id": "c", "action": "core.log"}]},
            ],
        }
    )
    assert isinstance(playbook.steps[1], ParallelGroup)
    assert [step.id for step in playbook.leaf_steps()] == ["a", "b", "c"]


def test_with_is_spelled_with_in_dumps_and_hash_is_stable() -> None:
    playbook = minimal(**{"with": {"message": "hi"}})
    dumped = playbook.model_dump(mode="json", by_alias=True)
    assert dumped["steps"][0]["with"] == {"message": "hi"}
    assert dumped["steps"][0]["timeout"] == "5m"
    assert playbook.content_hash().startswith("sha256:")
    assert playbook.content_hash() == Playbook.model_validate(dumped).content_hash()
    assert playbook.content_hash() != minimal(**{"with": {"message": "ho"}}).content_hash()


def test_param_required_unless_defaulted() -> None:
    assert ParamSpec().is_required
    assert not ParamSpec(default="x").is_required
    assert not ParamSpec(required=False).is_required


@pytest.mark.parametrize("name", ["Restart", "-x", "a_b", ""])
def test_playbook_name_pattern(name: str) -> None:
    with pytest.raises(ValidationError):
        Playbook.model_validate({"name": name, "steps": [{"id": "a", "action": "core.log"}]})
