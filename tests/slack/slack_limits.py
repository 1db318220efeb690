"""Slack's documented limits on messages and Block Kit, and a checker that applies them.

Written from Slack's documentation, never imported from the code under test, so that raising a
limit in `bot/slack/blocks.py` fails the tests instead of moving them. Sources (docs.slack.dev):

- reference/block-kit/blocks: "up to 50 blocks in each message"; actions: at most 25 elements.
- reference/block-kit/blocks/header-block: `text` is `plain_text`, at most 150 characters.
- reference/block-kit/blocks/section-block: `text` at most 3000 characters; or `fields`, at most
  10 items of at most 2000 characters each; one of the two is required.
- reference/block-kit/blocks/context-block: `elements`, text objects or images, at most 10.
- reference/block-kit/composition-objects/text-object: `type` `plain_text` or `mrkdwn`, `text`
  of 1 to 3000 characters.
- reference/block-kit/block-elements/button-element: `text` `plain_text` at most 75 characters,
  `action_id` at most 255, `value` at most 2000, `url` at most 3000, `style` `primary` or
  `danger`; an `action_id` unique within its block.
- every block: `block_id` at most 255 characters.
- reference/methods/chat.postMessage and the 2018 changelog "Truncating really long messages":
  the top-level `text` takes up to 40,000 characters; longer text is truncated, with a
  `message_truncated` warning.
"""

from __future__ import annotations

from typing import Any

MESSAGE_BLOCKS_MAX = 50
MESSAGE_TEXT_MAX = 40_000
TEXT_OBJECT_MIN, TEXT_OBJECT_MAX = 1, 3000
SECTION_TEXT_MAX = 3000
SECTION_FIELDS_MAX, SECTION_FIELD_TEXT_MAX = 10, 2000
HEADER_TEXT_MAX = 150
CONTEXT_ELEMENTS_MAX = 10
ACTIONS_ELEMENTS_MAX = 25
BUTTON_TEXT_MAX, BUTTON_VALUE_MAX, BUTTON_URL_MAX = 75, 2000, 3000
ACTION_ID_MAX = BLOCK_ID_MAX = 255

# Message block types Slack documents; these are checked in depth, the others only for a type.
CHECKED_BLOCKS = frozenset({"header", "section", "context", "actions", "divider"})
OTHER_MESSAGE_BLOCKS = frozenset({"image", "rich_text", "file", "video", "markdown", "input", "table"})


def block_errors(blocks: Any) -> list[str]:
    """What Slack would refuse in `blocks`, each as `reason [json-pointer:/blocks/...]` the way
    Slack's `invalid_blocks` answer lists them; empty when Slack takes them."""
    if not isinstance(blocks, list):
        return ["must be an array [json-pointer:/blocks]"]
    errors: list[str] = []
    if len(blocks) > MESSAGE_BLOCKS_MAX:
        errors.append(f"no more than {MESSAGE_BLOCKS_MAX} items allowed [json-pointer:/blocks]")
    for i, block in enumerate(blocks):
        errors += _block(block, f"/blocks/{i}")
    return errors


def _block(block: Any, at: str) -> list[str]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return [f"missing required field: type [json-pointer:{at}]"]
    kind = block["type"]
    errors = _max_len(block.get("block_id"), BLOCK_ID_MAX, f"{at}/block_id")
    if kind == "header":
        errors += _text_object(block.get("text"), f"{at}/text", HEADER_TEXT_MAX, plain_only=True)
    elif kind == "section":
        if "text" not in block and "fields" not in block:
            errors.append(f"must provide text or fields [json-pointer:{at}]")
        if "text" in block:
            errors += _text_object(block["text"], f"{at}/text", SECTION_TEXT_MAX)
        if "fields" in block:
            fields = block["fields"]
            if not isinstance(fields, list) or len(fields) > SECTION_FIELDS_MAX:
                errors.append(f"no more than {SECTION_FIELDS_MAX} items allowed [json-pointer:{at}/fields]")
            else:
                for j, field in enumerate(fields):
                    errors += _text_object(field, f"{at}/fields/{j}", SECTION_FIELD_TEXT_MAX)
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= CONTEXT_ELEMENTS_MAX:
            errors.append(f"must hold 1 to {CONTEXT_ELEMENTS_MAX} items [json-pointer:{at}/elements]")
        else:
            for j, element in enumerate(elements):
                if not (isinstance(element, dict) and element.get("type") == "image"):
                    errors += _text_object(element, f"{at}/elements/{j}", TEXT_OBJECT_MAX)
    elif kind == "actions":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= ACTIONS_ELEMENTS_MAX:
            errors.append(f"must hold 1 to {ACTIONS_ELEMENTS_MAX} items [json-pointer:{at}/elements]")
        else:
            seen: set[str] = set()
            for j, element in enumerate(elements):
                errors += _element(element, f"{at}/elements/{j}", seen)
    elif kind not in CHECKED_BLOCKS | OTHER_MESSAGE_BLOCKS:
        errors.append(f"unsupported type: {kind} [json-pointer:{at}/type]")
    return errors


def _element(element: Any, at: str, action_ids: set[str]) -> list[str]:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        return [f"missing required field: type [json-pointer:{at}]"]
    errors: list[str] = []
    action_id = element.get("action_id")
    errors += _max_len(action_id, ACTION_ID_MAX, f"{at}/action_id")
    if isinstance(action_id, str):
        if action_id in action_ids:
            errors.append(f"action_id must be unique within the block [json-pointer:{at}/action_id]")
        action_ids.add(action_id)
    if element["type"] == "button":
        errors += _text_object(element.get("text"), f"{at}/text", BUTTON_TEXT_MAX, plain_only=True)
        errors += _max_len(element.get("value"), BUTTON_VALUE_MAX, f"{at}/value")
        errors += _max_len(element.get("url"), BUTTON_URL_MAX, f"{at}/url")
        if "style" in element and element["style"] not in ("primary", "danger"):
            errors.append(f"must be primary or danger [json-pointer:{at}/style]")
    return errors


def _text_object(obj: Any, at: str, limit: int, *, plain_only: bool = False) -> list[str]:
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in allowed:
        return [f"must be a text object of type {' or '.join(allowed)} [json-pointer:{at}]"]
    text = obj.get("text")
    if not isinstance(text, str) or len(text) < TEXT_OBJECT_MIN:
        return [f"must be at least {TEXT_OBJECT_MIN} character [json-pointer:{at}/text]"]
    return _max_len(text, limit, f"{at}/text")


def _max_len(value: Any, limit: int, at: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, str):
        return [f"must be a string [json-pointer:{at}]"]
    return [f"must be less than {limit + 1} characters [json-pointer:{at}]"] if len(value) > limit else []
