"""The fake answers like Slack's Web API, as a real AsyncWebClient sees it."""

from __future__ import annotations

import time

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tests.slack.fake_slack import BOT_USER_ID, FakeSlack
from tests.slack.slack_limits import MESSAGE_TEXT_MAX


def client(slack: FakeSlack, token: str | None = None, **kwargs: object) -> AsyncWebClient:
    return AsyncWebClient(token=token or slack.token, base_url=slack.api_url, **kwargs)  # type: ignore[arg-type]


async def test_auth_test_names_the_bot(fake_slack: FakeSlack) -> None:
    response = await client(fake_slack).auth_test()

    assert response["ok"] is True
    assert response["user_id"] == BOT_USER_ID
    assert fake_slack.calls_to("auth.test")[0].status == 200


@pytest.mark.parametrize(("token", "error"), [("xoxb-wrong", "invalid_auth")])
async def test_wrong_token_is_invalid_auth(fake_slack: FakeSlack, token: str, error: str) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client(fake_slack, token=token).auth_test()

    assert caught.value.response["error"] == error
    assert fake_slack.calls[-1].error == error


async def test_missing_token_is_not_authed(fake_slack: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as caught:
        await AsyncWebClient(base_url=fake_slack.api_url).auth_test()

    assert caught.value.response["error"] == "not_authed"


async def test_post_message_by_channel_name_returns_id_ts_and_message(fake_slack: FakeSlack) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    response = await client(fake_slack).chat_postMessage(channel="#incidents", text="hi", blocks=blocks)

    assert response["channel"] == "C0INCIDENTS"
    assert response["message"]["text"] == "hi"
    assert response["message"]["blocks"] == blocks
    assert response["message"]["ts"] == response["ts"]
    call = fake_slack.calls_to("chat.postMessage")[0]
    assert call.params == {"channel": "#incidents", "text": "hi", "blocks": blocks}
    assert "token" not in call.params


async def test_thread_reply_and_distinct_ts(fake_slack: FakeSlack) -> None:
    slack = client(fake_slack)
    parent = await slack.chat_postMessage(channel="C0INCIDENTS", text="run started")
    reply = await slack.chat_postMessage(channel="C0INCIDENTS", text="step 1", thread_ts=parent["ts"])

    assert reply["ts"] != parent["ts"]
    assert reply["message"]["thread_ts"] == parent["ts"]


async def test_form_encoded_body_is_read(fake_slack: FakeSlack) -> None:
    response = await client(fake_slack).api_call("chat.postMessage", data={"channel": "C0GENERAL", "text": "form"})

    assert response["channel"] == "C0GENERAL"
    assert fake_slack.calls[-1].params == {"channel": "C0GENERAL", "text": "form"}


@pytest.mark.parametrize(
    ("channel", "error"),
    [("#nope", "channel_not_found"), ("C0MISSING", "channel_not_found"), ("#general", "not_in_channel")],
)
async def test_post_errors(fake_slack: FakeSlack, channel: str, error: str) -> None:
    fake_slack.not_member.add("C0GENERAL")
    with pytest.raises(SlackApiError) as caught:
        await client(fake_slack).chat_postMessage(channel=channel, text="x")

    assert caught.value.response["error"] == error


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_post_without_text_is_no_text(fake_slack: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client(fake_slack).chat_postMessage(channel="C0INCIDENTS")

    assert caught.value.response["error"] == "no_text"


async def test_update_changes_the_message_in_place(fake_slack: FakeSlack) -> None:
    slack = client(fake_slack)
    posted = await slack.chat_postMessage(channel="C0INCIDENTS", text="running")
    updated = await slack.chat_update(channel=posted["channel"], ts=posted["ts"], text="completed")

    assert updated["ts"] == posted["ts"]
    message = fake_slack.message("C0INCIDENTS", posted["ts"])
    assert (message.text, message.updates) == ("completed", 1)


async def test_update_of_unknown_message(fake_slack: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client(fake_slack).chat_update(channel="C0INCIDENTS", ts="1.000001", text="x")

    assert caught.value.response["error"] == "message_not_found"


@pytest.mark.parametrize("name", ["#incidents", "incidents"])
async def test_update_by_channel_name_is_channel_not_found_and_changes_nothing(fake_slack: FakeSlack, name: str) -> None:
    """Slack's chat.update takes the channel's ID; posting takes a name, updating does not."""
    slack = client(fake_slack)
    posted = await slack.chat_postMessage(channel=name, text="running")
    with pytest.raises(SlackApiError) as caught:
        await slack.chat_update(channel=name, ts=posted["ts"], text="completed")

    assert caught.value.response["error"] == "channel_not_found"
    message = fake_slack.message("C0INCIDENTS", posted["ts"])
    assert (message.text, message.updates) == ("running", 0)


async def test_update_of_a_message_in_another_channel_is_message_not_found(fake_slack: FakeSlack) -> None:
    slack = client(fake_slack)
    posted = await slack.chat_postMessage(channel="C0INCIDENTS", text="running")
    with pytest.raises(SlackApiError) as caught:
        await slack.chat_update(channel="C0GENERAL", ts=posted["ts"], text="completed")

    assert caught.value.response["error"] == "message_not_found"


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_update_with_text_only_drops_the_blocks_and_blocks_only_keep_the_text(fake_slack: FakeSlack) -> None:
    slack = client(fake_slack)
    section = [{"type": "section", "text": {"type": "mrkdwn", "text": "*one*"}}]
    posted = await slack.chat_postMessage(channel="C0INCIDENTS", text="one", blocks=section)
    message = fake_slack.message("C0INCIDENTS", posted["ts"])

    await slack.chat_update(channel="C0INCIDENTS", ts=posted["ts"], blocks=[{"type": "divider"}, *section])
    assert (message.text, len(message.blocks or [])) == ("one", 2)
    await slack.chat_update(channel="C0INCIDENTS", ts=posted["ts"], text="two")
    assert (message.text, message.blocks, message.shown()) == ("two", None, "two")


def _section(text: str) -> dict[str, object]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _button(**changes: object) -> dict[str, object]:
    return {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "Go"}, "value": "v", **changes}


TOO_BIG = {
    "51 blocks": [_section("x")] * 51,
    "section text of 3001": [_section("x" * 3001)],
    "empty section text": [_section("")],
    "section without text or fields": [{"type": "section"}],
    "11 section fields": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}],
    "section field of 2001": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}],
    "header of 151": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
    "mrkdwn header": [{"type": "header", "text": {"type": "mrkdwn", "text": "*h*"}}],
    "11 context elements": [{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}],
    "empty context": [{"type": "context", "elements": []}],
    "26 actions elements": [{"type": "actions", "elements": [_button(action_id=f"a{i}") for i in range(26)]}],
    "button text of 76": [{"type": "actions", "elements": [_button(text={"type": "plain_text", "text": "b" * 76})]}],
    "button value of 2001": [{"type": "actions", "elements": [_button(value="v" * 2001)]}],
    "action_id of 256": [{"type": "actions", "elements": [_button(action_id="a" * 256)]}],
    "the same action_id twice in a block": [{"type": "actions", "elements": [_button(), _button()]}],
    "button style": [{"type": "actions", "elements": [_button(style="green")]}],
    "block_id of 256": [{"type": "divider", "block_id": "b" * 256}],
    "unknown block type": [{"type": "marquee"}],
}
AT_THE_LIMIT = [
    *[_section("x" * 3000)] * 49,
    {"type": "header", "text": {"type": "plain_text", "text": "h" * 150}},
]


@pytest.mark.parametrize("blocks", TOO_BIG.values(), ids=TOO_BIG.keys())
async def test_blocks_over_slacks_limits_are_invalid_blocks(fake_slack: FakeSlack, blocks: list[dict[str, object]]) -> None:
    slack = client(fake_slack)
    with pytest.raises(SlackApiError) as caught:
        await slack.chat_postMessage(channel="C0INCIDENTS", text="x", blocks=blocks)
    assert caught.value.response["error"] == "invalid_blocks"
    assert caught.value.response["errors"], "Slack says which block and why"
    assert fake_slack.messages == [], "nothing posted"

    posted = await slack.chat_postMessage(channel="C0INCIDENTS", text="before", blocks=[_section("before")])
    with pytest.raises(SlackApiError) as caught:
        await slack.chat_update(channel="C0INCIDENTS", ts=posted["ts"], text="x", blocks=blocks)
    assert caught.value.response["error"] == "invalid_blocks"
    assert fake_slack.messages[0].shown() == "before", "an update refused changes nothing"


async def test_blocks_at_slacks_limits_are_taken(fake_slack: FakeSlack) -> None:
    slack = client(fake_slack)
    posted = await slack.chat_postMessage(channel="C0INCIDENTS", text="x", blocks=AT_THE_LIMIT)
    await slack.chat_update(channel=posted["channel"], ts=posted["ts"], text="x", blocks=[*AT_THE_LIMIT[1:], _section("y")])

    assert len(fake_slack.messages[0].blocks or []) == 50
    assert fake_slack.messages[0].blocks[-1] == _section("y")


async def test_text_over_40000_is_truncated_when_posted_and_refused_when_updated(fake_slack: FakeSlack) -> None:
    slack = client(fake_slack)
    long = "x" * (MESSAGE_TEXT_MAX + 1)
    posted = await slack.chat_postMessage(channel="C0INCIDENTS", text=long)

    assert posted["response_metadata"]["warnings"] == ["message_truncated"]
    assert fake_slack.messages[0].text == long[:MESSAGE_TEXT_MAX]
    assert fake_slack.calls_to("chat.postMessage")[0].warnings == ["message_truncated"]
    with pytest.raises(SlackApiError) as caught:
        await slack.chat_update(channel="C0INCIDENTS", ts=posted["ts"], text=long + "y")
    assert caught.value.response["error"] == "msg_too_long"
    assert fake_slack.messages[0].updates == 0


async def test_a_message_shows_its_blocks_and_buttons(fake_slack: FakeSlack) -> None:
    blocks = [_section("*asked*"), {"type": "actions", "elements": [_button(action_id="yes"), _button(action_id="no")]}]
    await client(fake_slack).chat_postMessage(channel="C0INCIDENTS", text="notification only", blocks=blocks)

    [message] = fake_slack.top_level("C0INCIDENTS")
    assert message.buttons() == ["yes", "no"]
    assert "*asked*" in message.shown() and "notification only" not in message.shown()


async def test_post_ephemeral(fake_slack: FakeSlack) -> None:
    fake_slack.add_user("U0DANA", "dana")
    response = await client(fake_slack).chat_postEphemeral(channel="C0INCIDENTS", user="U0DANA", text="not you")

    assert response["message_ts"]
    assert fake_slack.calls_to("chat.postEphemeral")[0].params["user"] == "U0DANA"
    with pytest.raises(SlackApiError) as caught:
        await client(fake_slack).chat_postEphemeral(channel="C0INCIDENTS", user="U0NOBODY", text="x")
    assert caught.value.response["error"] == "user_not_found"


async def test_usergroups_and_users(fake_slack: FakeSlack) -> None:
    fake_slack.add_user("U0DANA", "dana", "Dana Scully")
    fake_slack.add_usergroup("S0SRE", "sre-oncall", ["U0DANA"])
    slack = client(fake_slack)

    with_users = await slack.usergroups_list(include_users=True)
    without = await slack.usergroups_list()
    members = await slack.usergroups_users_list(usergroup="S0SRE")
    user = await slack.users_info(user="U0DANA")

    assert with_users["usergroups"][0]["handle"] == "sre-oncall"
    assert with_users["usergroups"][0]["users"] == ["U0DANA"]
    assert "users" not in without["usergroups"][0]
    assert members["users"] == ["U0DANA"]
    assert user["user"]["real_name"] == "Dana Scully"
    assert fake_slack.calls_to("usergroups.list")[0].http_verb == "GET"
    with pytest.raises(SlackApiError) as caught:
        await slack.users_info(user="U0NOBODY")
    assert caught.value.response["error"] == "user_not_found"
    with pytest.raises(SlackApiError) as caught:
        await slack.usergroups_users_list(usergroup="S0NONE")
    assert caught.value.response["error"] == "no_such_subteam"


async def test_unknown_method(fake_slack: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as caught:
        await client(fake_slack).api_call("chat.teleport")

    assert caught.value.response["error"] == "unknown_method"
    assert fake_slack.calls[-1].method == "chat.teleport"


async def test_429_without_retry_handler_surfaces_retry_after(fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit(1)
    with pytest.raises(SlackApiError) as caught:
        await client(fake_slack, retry_handlers=[]).chat_postMessage(channel="C0INCIDENTS", text="x")

    assert caught.value.response.status_code == 429
    assert caught.value.response["error"] == "ratelimited"
    assert caught.value.response.headers["Retry-After"] == "1"
    assert fake_slack.messages == []


async def test_rate_limit_retry_handler_retries_once_then_succeeds(fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit(1, retry_after=1)
    slack = client(fake_slack, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])

    started = time.monotonic()
    response = await slack.chat_postMessage(channel="#incidents", text="after a 429")

    assert response["ok"] is True
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    calls = fake_slack.calls_to("chat.postMessage")
    assert [(c.status, c.ok) for c in calls] == [(429, False), (200, True)]
    assert len(fake_slack.messages) == 1


async def test_fail_next_answers_one_call_with_the_error(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("chat.postMessage", "channel_is_archived")
    slack = client(fake_slack)
    with pytest.raises(SlackApiError) as caught:
        await slack.chat_postMessage(channel="C0INCIDENTS", text="x")

    assert caught.value.response["error"] == "channel_is_archived"
    assert (await slack.chat_postMessage(channel="C0INCIDENTS", text="x"))["ok"] is True


# ---- views (modals, App Home) -------------------------------------------------------------------

MODAL = {"type": "modal", "title": {"type": "plain_text", "text": "A modal"}, "blocks": [
    {"type": "input", "block_id": "b", "label": {"type": "plain_text", "text": "Name"},
     "element": {"type": "plain_text_input", "action_id": "a"}}], "submit": {"type": "plain_text", "text": "Go"}}


def _trigger(slack: FakeSlack, age: float = 0.0) -> str:
    return slack.issue_trigger(f"{int(time.time())}.42.{time.monotonic_ns():x}", "U0ALICE", age=age)


async def test_views_open_exchanges_an_issued_trigger_once_within_3_seconds(fake_slack: FakeSlack) -> None:
    web = client(fake_slack)
    trigger = _trigger(fake_slack)
    opened = await web.views_open(trigger_id=trigger, view=MODAL)
    assert opened["view"]["id"] in fake_slack.views and opened["view"]["hash"]
    cases = {
        "exchanged_trigger_id": trigger,
        "expired_trigger_id": _trigger(fake_slack, age=3.5),
        "invalid_trigger_id": "not-a-trigger",
    }
    for error, sent in cases.items():
        with pytest.raises(SlackApiError) as caught:
            await web.views_open(trigger_id=sent, view=MODAL)
        assert caught.value.response["error"] == error
    with pytest.raises(SlackApiError) as caught:  # well-formed, but Slack never issued it
        await web.views_open(trigger_id="123.456.abcdef", view=MODAL)
    assert caught.value.response["error"] == "invalid_trigger_id"
    with pytest.raises(SlackApiError) as caught:
        await web.api_call("views.open", json={"view": MODAL})
    assert caught.value.response["error"] == "invalid_arguments"
    assert len(fake_slack.views) == 1


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"title": {"type": "plain_text", "text": "t" * 25}}, "/view/title/text"),
        ({"submit": None}, "/view/submit"),
        ({"private_metadata": "m" * 3001}, "/view/private_metadata"),
        ({"blocks": [{"type": "divider"}] * 101}, "/view/blocks"),
        ({"blocks": [{**MODAL["blocks"][0], "block_id": "b" * 256}]}, "/view/blocks/0/block_id"),
        ({"blocks": [{**MODAL["blocks"][0], "element": {"type": "plain_text_input", "action_id": "a" * 256}}]},
         "/view/blocks/0/element/action_id"),
        ({"blocks": [{**MODAL["blocks"][0], "element": {"type": "static_select", "action_id": "a", "options": [
            {"text": {"type": "plain_text", "text": str(i)}, "value": str(i)} for i in range(101)]}}]},
         "/view/blocks/0/element/options"),
        ({"blocks": [{**MODAL["blocks"][0], "element": {"type": "static_select", "action_id": "a", "options": [
            {"text": {"type": "plain_text", "text": "o" * 76}, "value": "v"}]}}]},
         "/view/blocks/0/element/options/0/text/text"),
        ({"blocks": [{**MODAL["blocks"][0], "element": {"type": "number_input", "action_id": "a"}}]},
         "/view/blocks/0/element"),
        ({"blocks": [{**MODAL["blocks"][0], "element": {"type": "plain_text_input", "action_id": "a",
                                                         "max_length": 3001}}]}, "/view/blocks/0/element/max_length"),
    ],
)
async def test_a_view_over_slacks_limits_is_invalid_arguments(fake_slack: FakeSlack, change: dict, pointer: str) -> None:
    view = {k: v for k, v in {**MODAL, **change}.items() if v is not None}
    with pytest.raises(SlackApiError) as caught:
        await client(fake_slack).views_open(trigger_id=_trigger(fake_slack), view=view)
    assert caught.value.response["error"] == "invalid_arguments"
    messages = caught.value.response["response_metadata"]["messages"]
    assert any(f"[json-pointer:{pointer}]" in m for m in messages), messages
    assert not fake_slack.views


async def test_views_update_needs_the_view_and_its_current_hash(fake_slack: FakeSlack) -> None:
    web = client(fake_slack)
    opened = (await web.views_open(trigger_id=_trigger(fake_slack), view=MODAL))["view"]
    changed = {**MODAL, "title": {"type": "plain_text", "text": "Changed"}}
    updated = (await web.views_update(view_id=opened["id"], hash=opened["hash"], view=changed))["view"]
    assert fake_slack.views[opened["id"]]["title"]["text"] == "Changed" and updated["hash"] != opened["hash"]
    for kwargs, error in [({"view_id": opened["id"], "hash": opened["hash"]}, "hash_conflict"),
                          ({"view_id": "V404"}, "not_found")]:
        with pytest.raises(SlackApiError) as caught:
            await web.views_update(view=MODAL, **kwargs)
        assert caught.value.response["error"] == error
    for both_or_none in ({}, {"view_id": opened["id"], "external_id": "x"}):  # the client checks neither, as sent raw
        with pytest.raises(SlackApiError) as caught:
            await web.api_call("views.update", json={"view": MODAL, **both_or_none})
        assert caught.value.response["error"] == "invalid_arguments"


async def test_views_publish_needs_a_known_user_and_a_home_view(fake_slack: FakeSlack) -> None:
    web = client(fake_slack)
    fake_slack.add_user("U0ALICE", "alice")
    home = {"type": "home", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]}
    await web.views_publish(user_id="U0ALICE", view=home)
    assert fake_slack.homes["U0ALICE"]["blocks"] == home["blocks"]
    for user, view in [("U0NOBODY", home), ("U0ALICE", MODAL), ("U0ALICE", {"type": "home", "blocks": [{}]})]:
        with pytest.raises(SlackApiError) as caught:
            await web.views_publish(user_id=user, view=view)
        assert caught.value.response["error"] == "invalid_arguments", (user, view)
    with pytest.raises(SlackApiError):
        await web.api_call("views.publish", json={"view": home})
