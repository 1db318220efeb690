"""The secret store: where values come from, which references resolve, and masking of every form."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
import structlog

from bot.actions.base import INVALID_PARAMS, SECRET_MISSING, SECRET_NOT_DECLARED
from bot.actions.core import CoreActions
from bot.actions.secrets import MASK, SecretStore, mask
from bot.logging import configure, mask_secrets, mask_secrets_with
from bot.playbook.templating import MARK_CLOSE, MARK_OPEN
from tests.secret_refs import ref

VALUE = 'v4l/ue+with "quotes"&more=é~'
CORE = [CoreActions()]


def every_form(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "raw": value,
        "quote safe=''": quote(value, safe=""),
        "quote safe='/'": quote(value, safe="/"),
        "quote lower-case hex": quote(value, safe="").lower(),
        "quote_plus": quote_plus(value),
        "httpx url query": str(httpx.URL("http://h/p", params={"t": value})).split("t=", 1)[1],
        "json": json.dumps(value)[1:-1],
        "json ensure_ascii=False": json.dumps(value, ensure_ascii=False)[1:-1],
        "base64": base64.b64encode(raw).decode(),
        "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "base64 url-safe": base64.urlsafe_b64encode(raw).decode(),
        "base64 url-safe unpadded": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


def test_values_come_from_the_file_or_prefixed_variables_only(tmp_path: Path) -> None:
    file = tmp_path / "secrets.env"
    file.write_text("# comment\nexport FROM_FILE='file value'\nBOTH=file wins\n")
    environ = {
        "PLAYBOOK_BOT_SECRET_FROM_ENV": "env value",
        "PLAYBOOK_BOT_SECRET_BOTH": "env loses",
        "PLAYBOOK_BOT_SLACK_BOT_TOKEN": "xoxb-bot",
        "PLAIN": "plain",
    }
    store = SecretStore(file, environ)
    assert (store.lookup("FROM_FILE"), store.lookup("FROM_ENV"), store.lookup("BOTH")) == ("file value", "env value", "file wins")
    for name in ("PLAYBOOK_BOT_SLACK_BOT_TOKEN", "PLAIN", "SLACK_BOT_TOKEN"):
        with pytest.raises(Exception) as info:
            store.lookup(name)
        assert getattr(info.value, "type", None) == SECRET_MISSING
        assert f"PLAYBOOK_BOT_SECRET_{name}" in str(info.value) and "PLAYBOOK_BOT_SECRETS_FILE" in str(info.value)
    assert sorted(store.known()) == ["env value", "file value", "file wins"]


@pytest.mark.parametrize(("suffix", "text"), [(".json", '{"A": "json-a"}'), (".yaml", "A: yaml-a\n")])
def test_structured_secrets_files(tmp_path: Path, suffix: str, text: str) -> None:
    file = tmp_path / f"secrets{suffix}"
    file.write_text(text)
    assert SecretStore(file, {}).lookup("A").endswith("-a")


def test_a_missing_file_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        SecretStore(tmp_path / "nope.env", {}).lookup("X")
    assert "nope.env, which does not exist" in str(info.value)


async def test_an_unreadable_secrets_file_fails_closed_without_quoting_it(tmp_path: Path, run_failing) -> None:
    file = tmp_path / "secrets.yaml"
    file.write_text("A: [unclosed s3cr3t-in-the-file\n")
    error = await run_failing("core.log", {"message": "no secret used"}, CORE, secrets=SecretStore(file, {}))
    assert "cannot be read" in error.message and str(file) in error.message
    assert "s3cr3t" not in str(error) and not error.non_retryable, "fixing the file lets a retry run"
    assert error.details[0]["attempt"] == 1


def test_the_log_processor_withholds_a_line_it_cannot_mask(tmp_path: Path) -> None:
    file = tmp_path / "secrets.json"
    file.write_text("{not json s3cr3t")
    restore = mask_secrets_with(SecretStore(file, {}).mask)
    try:
        line = mask_secrets(None, "info", {"event": "hello s3cr3t", "level": "info"})
    finally:
        restore()
    assert line == {"level": "info", "event": "log line withheld: secret masking failed"}


def test_the_environment_is_read_when_the_store_is_built() -> None:
    """The worker builds its store once, at start; no action scans the environment again (a
    process's environment cannot change from outside it). The file is still read as it changes."""
    environ = {"PLAYBOOK_BOT_SECRET_A": "a-value"}
    store = SecretStore(environ=environ)
    environ["PLAYBOOK_BOT_SECRET_B"] = "b-value"
    environ["PLAYBOOK_BOT_SECRET_A"] = "changed"
    assert store.lookup("A") == "a-value" and store.known() == ["a-value"]
    with pytest.raises(Exception) as info:
        store.lookup("B")
    assert getattr(info.value, "type", None) == SECRET_MISSING


def test_only_declared_markers_resolve() -> None:
    store = SecretStore(environ={"PLAYBOOK_BOT_SECRET_A": "a-value", "PLAYBOOK_BOT_SECRET_B": "b-value"})
    params = {"x": f"{ref('A')}/${{secret:B}}", "n": [1, ref("A")]}
    assert store.resolve(params, ["A"]) == {"x": "a-value/${secret:B}", "n": [1, "a-value"]}
    with pytest.raises(Exception) as info:
        store.resolve({"x": ref("B")}, ["A"])
    assert (info.value.type, info.value.non_retryable) == (SECRET_NOT_DECLARED, True)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "params",
    [{"x": f"{MARK_OPEN}A"}, {"x": f"{MARK_OPEN}0:A"}, {"x": f"0:A{MARK_CLOSE}"}, {f"{MARK_OPEN}0:A{MARK_CLOSE}": "k"}],
)
def test_a_malformed_marker_is_refused(params: dict[str, str]) -> None:
    store = SecretStore(environ={"PLAYBOOK_BOT_SECRET_A": "a-value"})
    with pytest.raises(Exception) as info:
        store.resolve(params, ["A"])
    assert (info.value.type, info.value.non_retryable) == (INVALID_PARAMS, True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("form", list(every_form(VALUE)))
def test_every_form_of_a_value_is_masked(form: str) -> None:
    text = f"before {every_form(VALUE)[form]} after"
    assert mask(text, [VALUE]) == f"before {MASK} after"


def test_base64_of_a_value_inside_a_longer_text_is_masked() -> None:
    """Basic auth encodes `user:token` together: the token's encoding depends on where it sits."""
    for prefix in ("", "u", "us", "user:"):
        encoded = base64.b64encode(f"{prefix}{VALUE}".encode()).decode()
        masked = mask(encoded, [VALUE])
        assert MASK in masked and len(masked) < len(encoded) - 20, (prefix, masked)


def test_masking_walks_nested_values_and_keys_and_leaves_other_types() -> None:
    assert mask({VALUE: [VALUE, 3, None, {"k": f"x{VALUE}"}]}, [VALUE]) == {MASK: [MASK, 3, None, {"k": f"x{MASK}"}]}
    assert mask("nothing here", []) == "nothing here"


def test_the_longer_of_two_overlapping_values_is_masked_whole() -> None:
    assert mask("token-123456 and token", ["token", "token-123456"]) == f"{MASK} and {MASK}"


async def test_output_is_masked_of_every_known_value_not_only_the_used_one(run_action) -> None:
    store = SecretStore(environ={"PLAYBOOK_BOT_SECRET_USED": "used-value", "PLAYBOOK_BOT_SECRET_OTHER": VALUE})
    message = f"{ref('USED')} and {quote(VALUE, safe='')}"
    result = await run_action("core.log", {"message": message}, CORE, secrets=store, declared=["USED"])
    assert result.output == {"message": f"{MASK} and {MASK}"}


async def test_an_undeclared_marker_fails_the_step_without_retries(run_failing) -> None:
    store = SecretStore(environ={"PLAYBOOK_BOT_SECRET_OTHER": "other-value"})
    error = await run_failing("core.log", {"message": ref("OTHER")}, CORE, secrets=store, declared=["MINE"])
    assert (error.type, error.non_retryable) == (SECRET_NOT_DECLARED, True)
    assert "other-value" not in str(error)


def test_the_worker_log_processor_masks_every_known_value() -> None:
    store = SecretStore(environ={"PLAYBOOK_BOT_SECRET_T": VALUE})
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure("INFO", "json", stream)
    restore = mask_secrets_with(store.mask)
    try:
        structlog.get_logger("t").info("sent", url=f"https://h/?t={quote(VALUE, safe='')}", nested={"v": [VALUE]})
        logging.getLogger("library").warning("library line with %s", VALUE)
        try:
            raise RuntimeError(f"boom {VALUE}")
        except RuntimeError:
            structlog.get_logger("t").exception("failed")
    finally:
        restore()
        root.handlers[:], root.level = handlers, level
        structlog.reset_defaults()
    text = stream.getvalue()
    assert text.count("\n") >= 3 and "library line" in text and "Traceback" in text
    assert [form for form in every_form(VALUE).values() if form in text] == []
    assert MASK in text
