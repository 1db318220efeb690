import pytest


@pytest.fixture
def short_slack_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's Slack syncs back off doubling up to a minute after a failure: a test that makes
    Slack fail and then recover would spend most of its time waiting for the next try. The
    workflow module passes through the sandbox, so capping the pause here reaches the runs;
    what the tests assert (steps go on, Slack catches up, nothing posted twice) is unchanged."""
    monkeypatch.setattr("bot.engine.workflow.SLACK_RETRY_MAX", 2.0)
