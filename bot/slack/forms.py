"""Slack forms for playbook params: the modal built from a playbook's params, the values read
back from a `view_submission`, and the sealed `private_metadata` that says which form it was.

Pure functions (no I/O), so tests compare shapes. Everything a submission carries is treated as
forged until checked: the metadata must carry our seal (HMAC under a key derived from the Slack
signing secret) and name the submitting user; every value is re-typed by `coerce_params`, the
same checks as `/playbook run NAME key=value`; a block we never drew refuses the submission.
Slack's view limits are kept here, not learned from a refused `views.open` mid-incident.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from bot.playbook.loader import Catalog, LoadedPlaybook
from bot.playbook.model import ParamSpec
from bot.playbook.params import ParamError, coerce_params, unknown_param_message
from bot.slack.blocks import truncate

FORM_CALLBACK = "playbook.run_form"
PICKER_CALLBACK = "playbook.picker"
PICK_ACTION = "playbook.pick"
VALUE_ACTION = "value"  # every input element's action_id: its block id names the param
BLOCK_PREFIX = "param:"

TITLE_MAX = 24  # modal title, submit and close texts
VIEW_BLOCKS_MAX = 100
METADATA_MAX = 3000
LABEL_MAX = HINT_MAX = 2000
INPUT_MAX = 3000  # plain_text_input max_length, and what a submitted text may hold
OPTIONS_MAX, OPTION_TEXT_MAX, OPTION_VALUE_MAX = 100, 75, 150
SECTION_MAX = 3000
ERROR_MAX = 300  # characters of one field's error shown under it
FORM_MAX_AGE = 12 * 3600  # seconds a form may stay open; a modal Slack keeps longer is refused on submit

Kind = Literal["text", "number", "select", "checkbox"]
_BLOCK_ID = re.compile(r"^param:[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
_TRUE = "true"


class FormRefused(ValueError):
    """A submission that is not one of our forms as we drew it: nothing is started."""


# ---- sealed metadata --------------------------------------------------------------------------


@dataclass(frozen=True)
class FormMeta:
    """Where a form came from: the playbook (empty in the picker), who it was opened for, the
    channel and response_url of the command that opened it, its trigger_id (the run's natural
    key), the playbook's hash when it was drawn, and when."""

    playbook: str
    user: str
    channel: str
    trigger_id: str
    response_url: str
    playbook_hash: str
    issued_at: int

    def fields(self) -> dict[str, Any]:
        return {"pb": self.playbook, "u": self.user, "ch": self.channel, "t": self.trigger_id,
                "r": self.response_url, "h": self.playbook_hash, "at": self.issued_at}


class Sealer:
    """HMAC-SHA256 over the metadata, under a key derived from the Slack signing secret (only
    Slack and this app hold it), so a form's metadata cannot be written by anyone else."""

    LABEL = b"playbook-bot slack form metadata v1"

    def __init__(self, signing_secret: str) -> None:
        self._key = hmac.new(signing_secret.encode(), self.LABEL, hashlib.sha256).digest()

    def _mac(self, fields: Mapping[str, Any]) -> str:
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def seal(self, meta: FormMeta) -> str:
        fields = meta.fields()
        text = json.dumps({"d": fields, "m": self._mac(fields)}, separators=(",", ":"), ensure_ascii=False)
        if len(text) > METADATA_MAX and meta.response_url:  # never in practice: a response_url is ~100 characters
            return self.seal(FormMeta(**{**meta.__dict__, "response_url": ""}))
        return text

    def open(self, text: Any, user: str, now: float | None = None) -> FormMeta:
        """The metadata if we sealed it, for this user, recently; FormRefused otherwise."""
        if not isinstance(text, str) or len(text) > METADATA_MAX:
            raise FormRefused("this form was not opened by playbook-bot")
        try:
            doc = json.loads(text)
            fields, mac = doc["d"], doc["m"]
        except (ValueError, TypeError, KeyError, RecursionError):
            raise FormRefused("this form was not opened by playbook-bot") from None
        if not isinstance(fields, dict) or not isinstance(mac, str) or not hmac.compare_digest(self._mac(fields), mac):
            raise FormRefused("this form was not opened by playbook-bot (its metadata is not ours)")
        try:
            meta = FormMeta(str(fields["pb"]), str(fields["u"]), str(fields["ch"]), str(fields["t"]),
                            str(fields["r"]), str(fields["h"]), int(fields["at"]))
        except (KeyError, TypeError, ValueError):
            raise FormRefused("this form was not opened by playbook-bot") from None
        if meta.user != user:
            raise FormRefused("this form was opened for someone else")
        if (time.time() if now is None else now) - meta.issued_at > FORM_MAX_AGE:
            raise FormRefused("this form has been open too long; run the command again")
        return meta


# ---- drawing ----------------------------------------------------------------------------------


def kind_of(spec: ParamSpec) -> Kind:
    """Which input a param gets: enums a select (when Slack's option limits can hold them),
    booleans a checkbox, numbers a number input, the rest (strings, arrays, objects) text."""
    if spec.enum is not None and _fits_select(spec.enum):
        return "select"
    if spec.type == "boolean" and spec.enum is None:
        return "checkbox"
    if spec.type in ("integer", "number") and spec.enum is None:
        return "number"
    return "text"


def _fits_select(enum: list[Any]) -> bool:
    return 1 <= len(enum) <= OPTIONS_MAX and all(0 < len(_typed(v)) <= OPTION_VALUE_MAX for v in enum)


def _typed(value: Any) -> str:
    """A value as the user would type it: JSON for an array or object, else its text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": truncate(text or " ", limit), "emoji": False}


def _option(value: Any) -> dict[str, Any]:
    return {"text": _plain(_typed(value), OPTION_TEXT_MAX), "value": _typed(value)}


def form_view(loaded: LoadedPlaybook, meta: str, typed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The modal for one playbook: an input per param, pre-filled with what was typed or the default."""
    pb = loaded.playbook
    typed = typed or {}
    blocks: list[dict[str, Any]] = []
    if pb.summary:
        blocks.append({"type": "section", "text": _plain(pb.summary, SECTION_MAX)})
    if not pb.params:
        blocks.append({"type": "section", "text": _plain(f"{pb.name} takes no params.", SECTION_MAX)})
    for name, spec in pb.params.items():
        blocks.append(_input(name, spec, typed.get(name)))
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": FORM_CALLBACK,
        "title": _plain(f"Run {pb.name}", TITLE_MAX),
        "submit": _plain("Run", TITLE_MAX),
        "close": _plain("Cancel", TITLE_MAX),
        "private_metadata": meta,
        "blocks": blocks,
    }
    return view


def fits_a_form(loaded: LoadedPlaybook) -> bool:
    """Whether every param gets an input within Slack's 100 blocks (one more for the summary)."""
    return len(loaded.playbook.params) < VIEW_BLOCKS_MAX


def _input(name: str, spec: ParamSpec, typed: str | None) -> dict[str, Any]:
    kind = kind_of(spec)
    initial = typed if typed is not None else (None if spec.default is None else _typed(spec.default))
    element: dict[str, Any] = {"action_id": VALUE_ACTION}
    hint = spec.description
    if kind == "select":
        assert spec.enum is not None
        options = [_option(v) for v in spec.enum]
        element |= {"type": "static_select", "options": options, "placeholder": _plain("Choose", 150)}
        chosen = next((o for o in options if o["value"] == initial), None)
        if chosen is not None:
            element["initial_option"] = chosen
    elif kind == "checkbox":
        option = {"text": _plain(spec.description or name, OPTION_TEXT_MAX), "value": _TRUE}
        element |= {"type": "checkboxes", "options": [option]}
        if initial is not None and initial.strip().lower() in ("true", "yes", "1"):
            element["initial_options"] = [option]
        hint = ""  # the description is the checkbox's own text
    elif kind == "number":
        element |= {"type": "number_input", "is_decimal_allowed": spec.type == "number"}
        if initial is not None and _is_number(initial, spec.type == "number"):
            element["initial_value"] = initial.strip()
    else:
        element |= {"type": "plain_text_input", "max_length": INPUT_MAX}
        if spec.type in ("array", "object"):
            element["multiline"] = True
            shape = '["a","b"]' if spec.type == "array" else '{"key":"value"}'
            hint = " ".join(p for p in (hint, f"JSON like {shape}" + (", or a,b" if spec.type == "array" else "")) if p)
        if spec.enum is not None:
            hint = " ".join(p for p in (hint, "One of: " + ", ".join(_typed(v) for v in spec.enum)) if p)
        if spec.pattern:
            hint = " ".join(p for p in (hint, f"Must match {spec.pattern}") if p)
        if initial is not None and 0 < len(initial) <= INPUT_MAX:
            element["initial_value"] = initial
    block: dict[str, Any] = {
        "type": "input",
        "block_id": BLOCK_PREFIX + name,
        "label": _plain(name, LABEL_MAX),
        "element": element,
        "optional": kind == "checkbox" or not spec.is_required,
    }
    if hint:
        block["hint"] = _plain(hint, HINT_MAX)
    return block


def _is_number(text: str, decimal: bool) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return value == value and abs(value) != float("inf") and (decimal or value.is_integer())


def picker_view(catalog: Catalog, meta: str, help_text: str) -> dict[str, Any]:
    """The playbook list as a select: picking one turns this modal into its form (views.update)."""
    names = sorted(catalog.names())[:OPTIONS_MAX]
    blocks: list[dict[str, Any]] = []
    if names:
        blocks.append({
            "type": "actions",
            "block_id": "pick",
            "elements": [{
                "type": "static_select",
                "action_id": PICK_ACTION,
                "placeholder": _plain("Choose a playbook", 150),
                "options": [{"text": _plain(n, OPTION_TEXT_MAX), "value": n} for n in names],
            }],
        })
        if len(catalog) > OPTIONS_MAX:
            blocks.append({"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"{len(catalog) - OPTIONS_MAX} more: `/playbook run NAME` starts any of them."}]})
    else:
        blocks.append({"type": "section", "text": _plain("No playbooks are loaded.", SECTION_MAX)})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(help_text, SECTION_MAX)}]})
    return {
        "type": "modal",
        "callback_id": PICKER_CALLBACK,
        "title": _plain("Run a playbook", TITLE_MAX),
        "close": _plain("Close", TITLE_MAX),
        "private_metadata": meta,
        "blocks": blocks,
    }


def notice_view(title: str, text: str) -> dict[str, Any]:
    """A modal that only says something (a refused submission), shown in place of the form."""
    return {
        "type": "modal",
        "title": _plain(title, TITLE_MAX),
        "close": _plain("Close", TITLE_MAX),
        "blocks": [{"type": "section", "text": _plain(text, SECTION_MAX)}],
    }


# ---- reading a submission ---------------------------------------------------------------------


class FieldErrors(ValueError):
    """Values the form must show errors for, by block id: Slack's `response_action: errors`."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def read_submission(loaded: LoadedPlaybook, values: Any) -> dict[str, Any]:
    """The typed params of a submitted form, checked exactly as a typed command's are; FieldErrors
    naming each bad field, or FormRefused for a state we never drew (a forgery)."""
    pb = loaded.playbook
    if not isinstance(values, dict) or len(values) > len(pb.params):
        raise FormRefused("this submission holds fields the form does not have")
    raw: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for block_id, actions in values.items():
        if not isinstance(block_id, str) or not _BLOCK_ID.match(block_id):
            raise FormRefused("this submission holds fields the form does not have")
        name = block_id.removeprefix(BLOCK_PREFIX)
        spec = pb.params.get(name)
        if spec is None:
            raise FormRefused(unknown_param_message(name, pb.params))
        if not isinstance(actions, dict) or set(actions) != {VALUE_ACTION} or not isinstance(actions[VALUE_ACTION], dict):
            raise FormRefused(f"field {name!r} is not as the form drew it")
        try:
            value = _value(kind_of(spec), actions[VALUE_ACTION])
        except ValueError as exc:
            errors[block_id] = f"{name}: {exc}"
            continue
        if value is not None:
            raw[name] = value
    first = BLOCK_PREFIX + next(iter(pb.params)) if pb.params else None
    try:
        params = coerce_params(pb, raw)
    except ParamError as exc:
        for name, message in exc.problems:
            block = BLOCK_PREFIX + name if name in pb.params else first
            if block is not None and block not in errors:
                errors[block] = truncate(message, ERROR_MAX)
        if not errors:
            raise FormRefused(str(exc)) from None
    if errors:
        raise FieldErrors(errors)
    return params


def _value(kind: Kind, state: Mapping[str, Any]) -> Any:
    """One element's submitted value as text (None: left empty); ValueError for one the element
    we drew cannot hold (a forged type, an over-long text)."""
    expected = {"text": "plain_text_input", "number": "number_input", "select": "static_select",
                "checkbox": "checkboxes"}[kind]
    if state.get("type") != expected:
        raise ValueError(f"expected a {expected} value")
    if kind == "checkbox":
        chosen = state.get("selected_options")
        if chosen is None:
            return False
        if not isinstance(chosen, list) or len(chosen) > 1:
            raise ValueError("not a value the checkbox can hold")
        if chosen and (not isinstance(chosen[0], dict) or chosen[0].get("value") != _TRUE):
            raise ValueError("not a value the checkbox can hold")
        return bool(chosen)
    if kind == "select":
        option = state.get("selected_option")
        if option is None:
            return None
        value = option.get("value") if isinstance(option, dict) else None
        if not isinstance(value, str) or len(value) > OPTION_VALUE_MAX:
            raise ValueError("not one of the options")
        return value  # coerce_params checks it is one of the enum
    value = state.get("value")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected text")
    if len(value) > INPUT_MAX:
        raise ValueError(f"{len(value)} characters, more than the {INPUT_MAX} a field holds")
    return value if value.strip() else None
