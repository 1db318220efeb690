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
- reference/views/modal-views: `title` plain_text at most 24 characters (required), `close` and
  `submit` at most 24, `submit` required when an input block is present, `blocks` at most 100,
  `private_metadata` at most 3000, `callback_id` and `external_id` at most 255. Home tab views
  (reference/views/home-tab-views): `blocks` at most 100, no title.
- reference/block-kit/blocks/input-block: `label` plain_text at most 2000, `element` required,
  `hint` plain_text at most 2000, `optional` a boolean.
- reference/block-kit/block-elements: plain_text_input `max_length` at most 3000 (`min_length`
  too), `placeholder` at most 150; static_select `options` at most 100, each option's `text`
  plain_text at most 75 and `value` at most 150, `initial_option` one of the options;
  checkboxes `options` at most 10; number_input `is_decimal_allowed` required.
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
VIEW_TITLE_MAX = VIEW_BUTTON_MAX = 24
VIEW_BLOCKS_MAX = 100
PRIVATE_METADATA_MAX = 3000
CALLBACK_ID_MAX = EXTERNAL_ID_MAX = 255
INPUT_LABEL_MAX = INPUT_HINT_MAX = 2000
PLAIN_TEXT_INPUT_MAX = 3000
PLACEHOLDER_MAX = 150
SELECT_OPTIONS_MAX, OPTION_TEXT_MAX, OPTION_VALUE_MAX = 100, 75, 150
CHECKBOX_OPTIONS_MAX = 10
INPUT_ELEMENTS = frozenset({"plain_text_input", "static_select", "checkboxes", "number_input", "radio_buttons",
                            "multi_static_select", "datepicker", "timepicker", "users_select", "conversations_select",
                            "channels_select", "email_text_input", "url_text_input"})

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
    if element["type"] in INPUT_ELEMENTS:
        errors += _input_element(element, at)
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


def view_errors(view: Any) -> list[str]:
    """What Slack would refuse in a view (views.open/update/publish), each as `reason
    [json-pointer:/view/...]`, the way its `invalid_arguments` answer lists them."""
    if not isinstance(view, dict):
        return ["must provide an object [json-pointer:/view]"]
    kind = view.get("type")
    if kind not in ("modal", "home"):
        return ["must be modal or home [json-pointer:/view/type]"]
    errors: list[str] = []
    blocks = view.get("blocks")
    if not isinstance(blocks, list):
        return errors + ["missing required field: blocks [json-pointer:/view/blocks]"]
    if len(blocks) > VIEW_BLOCKS_MAX:
        errors.append(f"no more than {VIEW_BLOCKS_MAX} items allowed [json-pointer:/view/blocks]")
    if kind == "modal":
        if "title" not in view:
            errors.append("missing required field: title [json-pointer:/view]")
        else:
            errors += _text_object(view["title"], "/view/title", VIEW_TITLE_MAX, plain_only=True)
        for button in ("close", "submit"):
            if button in view:
                errors += _text_object(view[button], f"/view/{button}", VIEW_BUTTON_MAX, plain_only=True)
        if "submit" not in view and any(isinstance(b, dict) and b.get("type") == "input" for b in blocks):
            errors.append("must provide submit when an input block is present [json-pointer:/view/submit]")
    errors += _max_len(view.get("private_metadata"), PRIVATE_METADATA_MAX, "/view/private_metadata")
    errors += _max_len(view.get("callback_id"), CALLBACK_ID_MAX, "/view/callback_id")
    errors += _max_len(view.get("external_id"), EXTERNAL_ID_MAX, "/view/external_id")
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        at = f"/view/blocks/{i}"
        if isinstance(block, dict) and isinstance(block.get("block_id"), str):
            if block["block_id"] in block_ids:
                errors.append(f"block_id must be unique within the view [json-pointer:{at}/block_id]")
            block_ids.add(block["block_id"])
        if isinstance(block, dict) and block.get("type") == "input":
            errors += _input_block(block, at)
        else:
            errors += _block(block, at)
    return errors


def _input_block(block: dict[str, Any], at: str) -> list[str]:
    errors = _max_len(block.get("block_id"), BLOCK_ID_MAX, f"{at}/block_id")
    errors += _text_object(block.get("label"), f"{at}/label", INPUT_LABEL_MAX, plain_only=True)
    if "hint" in block:
        errors += _text_object(block["hint"], f"{at}/hint", INPUT_HINT_MAX, plain_only=True)
    if "optional" in block and not isinstance(block["optional"], bool):
        errors.append(f"must be a boolean [json-pointer:{at}/optional]")
    element = block.get("element")
    if not isinstance(element, dict) or element.get("type") not in INPUT_ELEMENTS:
        return errors + [f"must provide a valid input element [json-pointer:{at}/element]"]
    return errors + _element(element, f"{at}/element", set())


def _input_element(element: dict[str, Any], at: str) -> list[str]:
    kind = element["type"]
    errors: list[str] = []
    if "placeholder" in element:
        errors += _text_object(element["placeholder"], f"{at}/placeholder", PLACEHOLDER_MAX, plain_only=True)
    if kind == "plain_text_input":
        for key in ("max_length", "min_length"):
            value = element.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= PLAIN_TEXT_INPUT_MAX):
                errors.append(f"must be an integer from 0 to {PLAIN_TEXT_INPUT_MAX} [json-pointer:{at}/{key}]")
        initial = element.get("initial_value")
        errors += _max_len(initial, PLAIN_TEXT_INPUT_MAX, f"{at}/initial_value")
        limit = element.get("max_length")
        if isinstance(initial, str) and isinstance(limit, int) and len(initial) > limit:
            errors.append(f"must be at most max_length characters [json-pointer:{at}/initial_value]")
    elif kind == "number_input":
        if not isinstance(element.get("is_decimal_allowed"), bool):
            errors.append(f"missing required field: is_decimal_allowed [json-pointer:{at}]")
        for key in ("initial_value", "min_value", "max_value"):
            value = element.get(key)
            if value is None:
                continue
            try:
                number = float(value) if isinstance(value, str) else None
            except ValueError:
                number = None
            if number is None or (element.get("is_decimal_allowed") is False and not number.is_integer()):
                errors.append(f"must be a number as a string [json-pointer:{at}/{key}]")
    elif kind in ("static_select", "checkboxes", "radio_buttons", "multi_static_select"):
        limit = CHECKBOX_OPTIONS_MAX if kind in ("checkboxes", "radio_buttons") else SELECT_OPTIONS_MAX
        options = element.get("options")
        if not isinstance(options, list) or not 1 <= len(options) <= limit:
            return errors + [f"must hold 1 to {limit} items [json-pointer:{at}/options]"]
        values = []
        for j, option in enumerate(options):
            where = f"{at}/options/{j}"
            if not isinstance(option, dict):
                errors.append(f"must provide an object [json-pointer:{where}]")
                continue
            errors += _text_object(option.get("text"), f"{where}/text", OPTION_TEXT_MAX, plain_only=kind.endswith("select"))
            if not isinstance(option.get("value"), str):
                errors.append(f"missing required field: value [json-pointer:{where}]")
            errors += _max_len(option.get("value"), OPTION_VALUE_MAX, f"{where}/value")
            values.append(option)
        initial = [element["initial_option"]] if "initial_option" in element else element.get("initial_options", [])
        for k, chosen in enumerate(initial if isinstance(initial, list) else [initial]):
            if chosen not in values:
                errors.append(f"must match one of the options [json-pointer:{at}/initial_option{'s/' + str(k) if 'initial_options' in element else ''}]")
    return errors
