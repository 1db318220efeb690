"""pagerduty.trigger / resolve / note through the real activities, over real HTTP, against a fake
PagerDuty that checks the documented request shapes (tests/actions/fake_pagerduty.py)."""

from __future__ import annotations

from typing import AsyncIterator, Iterator

import httpx
import pytest
from structlog.testing import capture_logs

from bot.actions.base import ACTION_FAILED, INVALID_PARAMS, ActionContext
from bot.actions.activities import build_activities
from bot.actions.egress import EgressClient
from bot.actions.pagerduty import PagerDutyActions
from bot.actions.paging import bounded_key, step_key
from bot.actions.secrets import SecretStore
from bot.engine.workflow import idempotency_key
from tests.actions.fake_pagerduty import FakePagerDuty, serve
from tests.engine.support import Recorder, playbook, run_input, start, worker
from tests.secret_refs import ref

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # 32 characters, as PagerDuty's are
API_TOKEN = "u+pd-rest-token-XYZ"
READ_ONLY_TOKEN = "y_NbAkKc66ryYTWUXYEu"
KEY = idempotency_key("run-42", "page")
SECRETS = SecretStore(environ={"PLAYBOOK_BOT_SECRET_PD_ROUTING": ROUTING_KEY, "PLAYBOOK_BOT_SECRET_PD_TOKEN": API_TOKEN})


@pytest.fixture(scope="module")
def _pd() -> Iterator[FakePagerDuty]:
    yield from serve(FakePagerDuty())


@pytest.fixture
def pd(_pd: FakePagerDuty) -> FakePagerDuty:
    _pd.routing_keys, _pd.tokens, _pd.read_only_tokens = {ROUTING_KEY}, {API_TOKEN}, {READ_ONLY_TOKEN}
    _pd.users = {"oncall@example.com"}
    _pd.events.clear(), _pd.requests.clear(), _pd.alerts.clear(), _pd.answer_next.clear()
    _pd.slow_once, _pd.slow_method = 0.0, None
    return _pd


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with EgressClient() as client:
        yield client


def providers(http: httpx.AsyncClient, pd: FakePagerDuty, timeout: float = 10.0) -> list[object]:
    return [PagerDutyActions(http, events_url=pd.url, api_url=pd.url, timeout=timeout)]


def trigger(**extra: object) -> dict[str, object]:
    return {
        "routing_key": ref("PD_ROUTING"),
        "summary": "checkout is down in production",
        "source": "checkout.production.internal",
        "severity": "critical",
        **extra,
    }


async def test_trigger_sends_the_documented_event_and_pages_once(http, pd, run_action) -> None:
    params = trigger(
        component="api",
        group="checkout",
        **{"class": "health check"},
        custom_details={"run": "run-42", "errors": 17},
        links=[{"href": "https://grafana.internal/d/checkout", "text": "Dashboard"}],
        images=[{"src": "https://grafana.internal/render/checkout.png"}],
    )
    result = await run_action("pagerduty.trigger", params, providers(http, pd), secrets=SECRETS, key=KEY)

    assert result.output == {"dedup_key": KEY, "status": "success", "message": "Event processed"}
    [event] = pd.events
    assert event["routing_key"] == ROUTING_KEY  # the secret, resolved only in the activity
    assert (event["event_action"], event["dedup_key"], event["client"]) == ("trigger", KEY, "playbook-bot")
    assert event["payload"] == {
        "summary": "checkout is down in production",
        "source": "checkout.production.internal",
        "severity": "critical",
        "component": "api",
        "group": "checkout",
        "class": "health check",
        "custom_details": {"run": "run-42", "errors": 17},
    }
    assert event["links"] == [{"href": "https://grafana.internal/d/checkout", "text": "Dashboard"}]
    assert event["images"] == [{"src": "https://grafana.internal/render/checkout.png"}]
    assert [a.dedup_key for a in pd.pages()] == [KEY]
    assert pd.requests[0][2]["content-type"] == "application/json"


async def test_an_explicit_dedup_key_is_used(http, pd, run_action) -> None:
    result = await run_action("pagerduty.trigger", trigger(dedup_key="checkout-down"), providers(http, pd), secrets=SECRETS)
    assert result.output["dedup_key"] == "checkout-down"
    assert [a.dedup_key for a in pd.pages()] == ["checkout-down"]


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"severity": "urgent"}, "severity"),
        ({"summary": ""}, "summary"),
        ({"summary": "x" * 1025}, "summary"),
        ({"source": ""}, "source"),
        ({"dedup_key": "k" * 256}, "dedup_key"),
        ({"images": [{"src": "http://grafana.internal/a.png"}]}, "images"),
        ({"links": [{"text": "no href"}]}, "links"),
        ({"routing_key": "has space"}, "routing_key"),
        ({"payload": {"summary": "raw"}}, "payload"),
    ],
)
async def test_invalid_params_are_refused_before_anything_is_sent(http, pd, run_failing, bad, where) -> None:
    error = await run_failing("pagerduty.trigger", trigger(**bad), providers(http, pd), secrets=SECRETS)
    assert error.type == INVALID_PARAMS and error.non_retryable
    assert where in error.message
    assert pd.requests == []


async def test_a_retry_after_a_timeout_that_reached_pagerduty_does_not_page_twice(http, pd, run_action, run_failing) -> None:
    pd.slow_once = 2.0  # PagerDuty takes the event, the answer comes after the client gave up
    slow = providers(http, pd, timeout=0.3)
    error = await run_failing("pagerduty.trigger", trigger(), slow, secrets=SECRETS, key=KEY)
    assert error.type == ACTION_FAILED and not error.non_retryable and "Timeout" in error.message
    assert len(pd.events) == 1  # it did arrive

    result = await run_action("pagerduty.trigger", trigger(), slow, secrets=SECRETS, key=KEY)  # the next attempt
    assert result.output["dedup_key"] == KEY
    assert [e["dedup_key"] for e in pd.events] == [KEY, KEY]
    [alert] = pd.pages()  # one page; the repeat is a log entry on it
    assert alert.log == ["trigger", "trigger"]


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_throttling_and_server_errors_are_retried(http, pd, run_action, run_failing, status) -> None:
    pd.answer_next.append(status)
    error = await run_failing("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS, key=KEY)
    assert error.type == ACTION_FAILED and not error.non_retryable and str(status) in error.message
    assert pd.pages() == []
    await run_action("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS, key=KEY)
    assert len(pd.pages()) == 1


async def test_an_invalid_event_is_not_retried_and_says_why(http, pd, run_failing) -> None:
    pd.routing_keys = set()  # a well-formed key PagerDuty does not know
    error = await run_failing("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS)
    assert error.type == ACTION_FAILED and error.non_retryable
    assert "400" in error.message and "Invalid routing key" in error.message


async def test_a_short_routing_key_is_a_400_from_pagerduty_not_a_retry(http, pd, run_failing) -> None:
    error = await run_failing("pagerduty.trigger", trigger(routing_key="short"), providers(http, pd))
    assert error.non_retryable and "should be 32 characters" in error.message


async def test_secrets_never_reach_outputs_errors_or_logs(http, pd, run_action, run_failing) -> None:
    with capture_logs() as logs:
        result = await run_action("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS, key=KEY)
        pd.routing_keys = set()
        error = await run_failing("pagerduty.trigger", trigger(summary=f"key {ref('PD_ROUTING')}"), providers(http, pd),
                                  secrets=SECRETS)
        note_error = await run_failing(
            "pagerduty.note",
            {"token": ref("PD_TOKEN"), "from_email": "oncall@example.com", "content": "x", "incident_id": "PNONE"},
            providers(http, pd),
            secrets=SecretStore(environ={"PLAYBOOK_BOT_SECRET_PD_TOKEN": "not-" + API_TOKEN}),
        )
    assert note_error.non_retryable and "401" in note_error.message
    text = repr(result.output) + error.message + repr(error.details) + note_error.message + repr(logs)
    assert ROUTING_KEY not in text and API_TOKEN not in text
    assert any(entry.get("event") == "pagerduty request" for entry in logs)


async def test_resolve_in_a_compensation_closes_what_its_step_opened(http, pd, run_action) -> None:
    await run_action("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS, key=KEY)
    undo_key = idempotency_key("run-42", "page", compensation=True)
    result = await run_action(
        "pagerduty.resolve", {"routing_key": ref("PD_ROUTING")}, providers(http, pd), secrets=SECRETS,
        key=undo_key, compensation=True,
    )
    assert result.output["dedup_key"] == KEY
    [alert] = pd.pages()
    assert alert.status == "resolved" and alert.log == ["trigger", "resolve"]
    assert pd.events[-1] == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": KEY}


async def test_resolve_as_a_step_needs_the_dedup_key(http, pd, run_action, run_failing) -> None:
    error = await run_failing("pagerduty.resolve", {"routing_key": ref("PD_ROUTING")}, providers(http, pd),
                              secrets=SECRETS, key=idempotency_key("run-42", "resolve"))
    assert error.type == INVALID_PARAMS and "dedup_key" in error.message
    assert pd.requests == []
    await run_action("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS, key=KEY)
    await run_action("pagerduty.resolve", {"routing_key": ref("PD_ROUTING"), "dedup_key": KEY}, providers(http, pd),
                     secrets=SECRETS)
    assert pd.pages()[0].status == "resolved"


async def test_resolving_twice_or_an_unknown_key_is_accepted(http, pd, run_action) -> None:
    params = {"routing_key": ref("PD_ROUTING"), "dedup_key": "never-triggered"}
    for _ in range(2):
        result = await run_action("pagerduty.resolve", params, providers(http, pd), secrets=SECRETS)
        assert result.output["status"] == "success"
    assert pd.pages() == []


def note(**extra: object) -> dict[str, object]:
    return {"token": ref("PD_TOKEN"), "from_email": "oncall@example.com", "content": "restart failed", **extra}


async def test_note_by_dedup_key_reaches_the_incident_with_the_documented_headers(http, pd, run_action) -> None:
    await run_action("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS, key=KEY)
    note_key = idempotency_key("run-42", "note")
    result = await run_action("pagerduty.note", note(dedup_key=KEY), providers(http, pd), secrets=SECRETS, key=note_key)

    [alert] = pd.pages()
    assert result.output["incident_id"] == alert.incident_id and result.output["reused"] is False
    [written] = alert.notes
    assert written["content"].startswith("restart failed") and note_key in written["content"]
    post = [headers for method, path, headers in pd.requests if method == "POST" and path.endswith("/notes")]
    assert post[0]["authorization"] == f"Token token={API_TOKEN}"
    assert post[0]["from"] == "oncall@example.com"
    assert post[0]["accept"] == "application/vnd.pagerduty+json;version=2"


async def test_a_retried_note_after_a_timeout_is_not_written_twice(http, pd, run_action, run_failing) -> None:
    await run_action("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS, key=KEY)
    incident = pd.pages()[0].incident_id
    slow = providers(http, pd, timeout=0.3)
    pd.slow_once, pd.slow_method = 2.0, "POST"  # the note is written, the answer comes too late
    error = await run_failing("pagerduty.note", note(incident_id=incident), slow, secrets=SECRETS)
    assert not error.non_retryable
    assert len(pd.pages()[0].notes) == 1
    result = await run_action("pagerduty.note", note(incident_id=incident), slow, secrets=SECRETS)
    assert result.output["reused"] is True
    assert len(pd.pages()[0].notes) == 1


async def test_note_input_is_checked(http, pd, run_failing) -> None:
    for bad, where in [
        (note(from_email="not an email", incident_id="P1"), "from_email"),
        (note(incident_id="../../users"), "incident_id"),
        (note(), "exactly one"),
        (note(incident_id="P1", dedup_key="k"), "exactly one"),
        (note(content="", incident_id="P1"), "content"),
        (note(token="abc\r\nX-Injected: 1", incident_id="P1"), "token"),
        (note(from_email="a@example.com\r\nX-Injected: 1", incident_id="P1"), "from_email"),
    ]:
        error = await run_failing("pagerduty.note", bad, providers(http, pd), secrets=SECRETS)
        assert error.type == INVALID_PARAMS and where in error.message, error.message
    assert pd.requests == []


async def test_notes_pagerduty_refuses_fail_for_good(http, pd, run_action, run_failing) -> None:
    await run_action("pagerduty.trigger", trigger(), providers(http, pd), secrets=SECRETS, key=KEY)
    incident = pd.pages()[0].incident_id
    read_only = SecretStore(environ={"PLAYBOOK_BOT_SECRET_PD_TOKEN": READ_ONLY_TOKEN})
    error = await run_failing("pagerduty.note", note(incident_id=incident), providers(http, pd), secrets=read_only)
    assert error.non_retryable and "403" in error.message and "Access Denied" in error.message
    error = await run_failing("pagerduty.note", note(incident_id=incident, from_email="nobody@example.com"),
                              providers(http, pd), secrets=SECRETS)
    assert error.non_retryable and "400" in error.message and "Requester User Not Found" in error.message
    error = await run_failing("pagerduty.note", note(incident_id="PGONE00"), providers(http, pd), secrets=SECRETS)
    assert error.non_retryable and "404" in error.message
    assert pd.pages()[0].notes == []


async def test_note_on_an_incident_not_created_yet_is_retried(http, pd, run_failing) -> None:
    error = await run_failing("pagerduty.note", note(dedup_key="not-yet"), providers(http, pd), secrets=SECRETS)
    assert error.type == ACTION_FAILED and not error.non_retryable and "not-yet" in error.message


def test_the_undo_key_maps_back_to_its_steps_key_and_long_keys_are_bounded() -> None:
    undo = ActionContext("run-42", "page", "pb", idempotency_key("run-42", "page", compensation=True), 1, True)
    assert step_key(undo) == idempotency_key("run-42", "page")
    plain = ActionContext("run-42", "page", "pb", "a:b:undo", 1, False)
    assert step_key(plain) == "a:b:undo"  # only a compensation is mapped back
    long = "r" * 300
    assert bounded_key(long, 255) == bounded_key(long, 255) != bounded_key(long + "x", 255)
    assert len(bounded_key(long, 255)) <= 255 and bounded_key("short", 255) == "short"


SAGA = """
name: page-then-break
secrets: [PD_ROUTING]
steps:
  - id: page
    action: pagerduty.trigger
    retry: {max_attempts: %(attempts)d, initial_interval: 1s}
    with:
      routing_key: "{{ secret('PD_ROUTING') }}"
      summary: "checkout is down"
      source: checkout.internal
      severity: critical
    compensate:
      action: pagerduty.resolve
      with: {routing_key: "{{ secret('PD_ROUTING') }}"}
  - {id: restart, action: t.fail}
"""


@pytest.mark.parametrize("trigger_times_out", [False, True])
async def test_a_failed_run_resolves_the_page_its_trigger_opened(dev_env, http, pd, trigger_times_out) -> None:
    """The saga's pagerduty.resolve closes exactly the alert the trigger opened, on a real Temporal
    dev server: also when the trigger timed out after PagerDuty took it, so it left no output for a
    template to read (its undo still runs: it was registered when the step started)."""
    rec = Recorder()
    attempts = 1 if trigger_times_out else 3
    if trigger_times_out:
        pd.slow_once, pd.slow_method = 2.0, "POST"
    pb = playbook(SAGA % {"attempts": attempts})
    activities = build_activities(providers(http, pd, timeout=0.5), SECRETS)
    async with worker(dev_env.client, rec, extra=activities) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        status = await handle.result()

    assert status.state == "compensated", status
    page = status.step("page")
    assert page.state == "compensated"
    assert (page.error is not None) == trigger_times_out
    key = idempotency_key(handle.id, "page", execution=status.execution.replace("-", ""))
    [alert] = pd.pages()
    assert alert.dedup_key == key
    assert alert.status == "resolved"
    assert [(e["event_action"], e["dedup_key"]) for e in pd.events] == [("trigger", key), ("resolve", key)]


async def test_the_paging_apis_are_reached_only_through_the_egress_guard(http, run_failing) -> None:
    """A base URL (a setting) pointing at a cloud metadata address is refused like http.request's."""
    metadata = [PagerDutyActions(http, events_url="http://169.254.169.254", api_url="http://169.254.169.254")]
    error = await run_failing("pagerduty.trigger", trigger(), metadata, secrets=SECRETS)
    assert error.type == "EgressRefused" and error.non_retryable
    assert ROUTING_KEY not in error.message
