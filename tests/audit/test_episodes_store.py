"""Episode state (issue 14): the contract of claim/start/release/resolve, on every backend that has it."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
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


# Alertmanager keeps the earliest startsAt when it merges copies of one alert, so a later delivery
# of a firing episode can name an earlier startsAt: an id below the episode under way.
T0, T1, T2 = "20261206T100000.000000Z", "20261206T100040.000000Z", "20261206T110000.000000Z"


def ep(stamp: str, playbook: str = "disk-remediation", fingerprint: str = "3c43aa") -> str:
    return f"alert-{playbook}-{fingerprint}-{stamp}"


def test_later_episode_is_the_latest_of_the_same_alert_that_began_after(episodes: Any) -> None:
    assert episodes.later_episode(ep(T0)) is None
    episodes.claim_episode(ep(T1))
    episodes.episode_started(ep(T1), 1)
    # neighbours in byte order that are not this alert's series: another fingerprint, a playbook
    # whose name continues this one's, another sender's
    for other in (ep(T2, fingerprint="3c43ab"), ep(T2, playbook="disk-remediation-3c43aa"),
                  ep(T2, playbook="disk"), f"grafana-disk-remediation-3c43aa-{T2}", "alert-disk-remediation-3c43aa"):
        episodes.claim_episode(other)

    later = episodes.later_episode(ep(T0))

    assert later is not None and (later.episode_id, later.started) == (ep(T1), True)
    assert episodes.later_episode(ep(T1)) is None  # nothing of its own began after it
    assert episodes.later_episode("fp-1") is None  # not shaped as an episode id


def test_a_claim_below_an_episode_under_way_claims_nothing_and_names_that_episode(episodes: Any) -> None:
    episodes.claim_episode(ep(T1))

    earlier = episodes.claim_episode(ep(T0))

    assert (earlier.episode_id, earlier.claimed) == (ep(T1), False)
    assert episodes.episode(ep(T0)) == Episode(episode_id=ep(T0))  # no row opened under the earlier id
    assert episodes.claim_episode(ep(T2)).claimed  # a startsAt after it is the alert's next episode


def test_an_episode_seen_under_its_own_id_keeps_it(episodes: Any) -> None:
    episodes.claim_episode(ep(T0))
    episodes.episode_started(ep(T0), 1)
    episodes.claim_episode(ep(T1))  # the alert's next episode

    assert episodes.claim_episode(ep(T0), rerun=True).episode_id == ep(T0)  # its own row decides
    assert episodes.later_episode(ep(T0)) is not None  # (the receiver asks only for an unseen id)


def test_a_claim_below_a_resolved_episode_claims_its_own(episodes: Any) -> None:
    """A resolved later episode is over: an alert that began before it is no copy of it (a resolve
    planted through Alertmanager's API must not swallow a real alert still pending then)."""
    episodes.claim_episode(ep(T1))
    episodes.resolve_episode(ep(T1))

    own = episodes.claim_episode(ep(T0))

    assert (own.episode_id, own.claimed) == (ep(T0), True)


def test_episodes_of_reads_the_seen_ones_among_many(episodes: Any) -> None:
    episodes.claim_episode(ep(T0))
    episodes.resolve_episode(ep(T1))
    episodes.claim_episode(ep(T2))
    episodes.release_episode(ep(T2), 1)  # claimed, then given back: as if never seen

    found = episodes.episodes_of([ep(T0), ep(T1), ep(T2), ep(T0, fingerprint="other")])

    assert sorted((e.episode_id, e.runs, e.resolved_at is not None) for e in found) == [
        (ep(T0), 1, False), (ep(T1), 0, True)]
    assert episodes.episodes_of([]) == []


def test_a_planted_future_episode_takes_no_merged_copies(episodes: Any) -> None:
    """Attack (red-team of the merge rule): a copy of the alert posted to Alertmanager's API with
    startsAt in 2099 got its own run and then swallowed every real episode of the alert, each with
    an earlier startsAt, until 2099. An episode whose startsAt was in the future when it was
    claimed takes no copies; it is one run of its own, as any posted alert is."""
    planted = ep("20990101T000000.000000Z")
    episodes.claim_episode(planted)
    episodes.episode_started(planted, 1)
    real = ep("20981231T235000.000000Z")  # 10 minutes before it: within the merge window

    own = episodes.claim_episode(real)

    assert (own.episode_id, own.claimed) == (real, True)
    assert episodes.later_episode(ep("20981231T235500.000000Z")) is None


def test_only_an_episode_within_the_merge_window_takes_a_copy(episodes: Any) -> None:
    from bot.audit.episodes import MERGE_WINDOW

    episodes.claim_episode(ep(T1))  # 10:00:40
    too_early = (datetime(2026, 12, 6, 10, 0, 40, tzinfo=timezone.utc) - MERGE_WINDOW - timedelta(seconds=1))

    own = episodes.claim_episode(ep(too_early.strftime("%Y%m%dT%H%M%S.%fZ")))

    assert own.claimed  # a quarter of an hour apart and more: two episodes, as before the merge rule
    assert episodes.claim_episode(ep(T0)).episode_id == ep(T1)  # 40 s apart: one


def test_resolve_only_rows_do_not_crowd_the_episode_under_way_out_of_the_window(episodes: Any) -> None:
    """Red-team of the merge rule: the stores looked at the 8 newest ids of the window before
    asking whether each was a claimed episode, and any resolve records a row under the id it names:
    eight resolves just after the real start hid it, and a merged copy opened a second run."""
    episodes.claim_episode(ep(T1))
    episodes.episode_started(ep(T1), 1)
    for second in range(1, 10):
        episodes.resolve_episode(ep(f"20261206T1000{40 + second}.000000Z"))

    assert episodes.claim_episode(ep(T0)).episode_id == ep(T1)


def test_a_merged_resolve_finds_the_open_episode_before_a_newer_resolved_one(episodes: Any) -> None:
    episodes.claim_episode(ep(T1))  # the episode under way
    newer = ep("20261206T100045.000000Z")
    episodes.claim_episode(newer)
    episodes.resolve_episode(newer)

    later = episodes.later_episode(ep(T0))

    assert later is not None and later.episode_id == ep(T1)
