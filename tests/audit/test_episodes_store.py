"""Episode state (issue 14): the contract of claim/start/release/resolve, on every backend that has it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bot.audit.episodes import Episode


@pytest.fixture
def episodes(store: Any) -> Any:
    if not hasattr(store, "claim_episode"):
        pytest.skip("this backend's episode methods come with the episodes work of issue 14")
    return store


def test_an_unknown_episode_has_run_zero_times(episodes: Any) -> None:
    assert episodes.episode("fp-1") == Episode(episode_id="fp-1")


def test_the_first_claim_wins_and_a_second_is_refused_until_rerun(episodes: Any) -> None:
    first = episodes.claim_episode("fp-1")
    assert (first.claimed, first.runs, first.started) == (True, 1, False) and first.claimed_at is not None

    again = episodes.claim_episode("fp-1")  # claimed, not started, not stale
    assert (again.claimed, again.runs) == (False, 1)

    episodes.episode_started("fp-1", 1)
    assert episodes.episode("fp-1").started
    assert not episodes.claim_episode("fp-1").claimed  # ran once: no accidental second run

    rerun = episodes.claim_episode("fp-1", rerun=True)
    assert (rerun.claimed, rerun.runs, rerun.started) == (True, 2, False)


def test_a_claim_whose_claimer_died_before_starting_is_taken_over_when_stale(episodes: Any) -> None:
    first = episodes.claim_episode("fp-1")
    assert not episodes.claim_episode("fp-1", stale_after=3600).claimed

    taken = episodes.claim_episode("fp-1", stale_after=0.0)

    assert (taken.claimed, taken.runs) == (True, 1)
    assert taken.claimed_at is not None and first.claimed_at is not None and taken.claimed_at >= first.claimed_at


def test_a_released_claim_can_be_claimed_again(episodes: Any) -> None:
    episodes.claim_episode("fp-1")
    episodes.release_episode("fp-1", 1)
    assert episodes.episode("fp-1").runs == 0 and episodes.episode("fp-1").claimed_at is None
    assert episodes.claim_episode("fp-1").claimed


def test_release_and_start_only_touch_their_own_claim(episodes: Any) -> None:
    episodes.claim_episode("fp-1")
    episodes.episode_started("fp-1", 1)
    episodes.claim_episode("fp-1", rerun=True)  # runs 2

    episodes.release_episode("fp-1", 1)  # a stale releaser of run 1: nothing
    episodes.episode_started("fp-1", 1)  # a stale starter of run 1: nothing
    assert (episodes.episode("fp-1").runs, episodes.episode("fp-1").started) == (2, False)

    episodes.release_episode("fp-1", 2)  # run 2 failed to start: back to "ran once"
    after = episodes.episode("fp-1")
    assert (after.runs, after.started, after.claimed_at) == (1, True, None)


def test_a_resolved_episode_is_never_claimed(episodes: Any) -> None:
    resolved = episodes.resolve_episode("fp-1")  # resolved before it ever fired
    assert resolved.resolved_at is not None and resolved.runs == 0

    refused = episodes.claim_episode("fp-1", rerun=True)

    assert (refused.claimed, refused.runs) == (False, 0)
    assert episodes.resolve_episode("fp-1").resolved_at == resolved.resolved_at  # the first resolve stands


def test_two_concurrent_claims_give_exactly_one_claim(episodes: Any, request: pytest.FixtureRequest) -> None:
    from tests.audit.conftest import open_store

    other = open_store(request.node.callspec.params["backend"], request, request.getfixturevalue("tmp_path"))
    ids = [f"fp-{n}" for n in range(20)]
    results: dict[int, list[bool]] = {0: [], 1: []}
    gate = threading.Barrier(2)

    def claim(which: int, store: Any) -> None:
        for episode_id in ids:
            gate.wait(timeout=60)
            results[which].append(store.claim_episode(episode_id).claimed)

    threads = [threading.Thread(target=claim, args=(n, s)) for n, s in enumerate((episodes, other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    other.close()

    assert [a + b for a, b in zip(results[0], results[1], strict=True)] == [1] * len(ids)
    assert all(episodes.episode(episode_id).runs == 1 for episode_id in ids)
