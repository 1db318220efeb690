"""Template data filters: tojson, fromjson, b64encode, b64decode, sha256 and Kubernetes quantities."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bot.playbook.data import B64DECODE_MAX_BYTES, FROMJSON_MAX_BYTES, FROMJSON_MAX_DEPTH, QUANTITY_MAX
from bot.playbook.templating import INERT, MARK_OPEN, TemplateError, display, render

CONTEXT: dict[str, Any] = {
    "params": {"x": {"b": [1, "é"], "a": None}, "size": "10Gi"},
    "alert": {"annotations": {"target": '{"zone": "a", "hosts": ["h1", "h2"]}'}},
}


def r(source: str, context: dict[str, Any] | None = None, **kw: Any) -> Any:
    return render(source, {**CONTEXT, **(context or {})}, **kw)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ params.x | tojson }}", '{"a":null,"b":[1,"é"]}'),
        ("{{ params.x | tojson(indent=2) }}", '{\n  "a": null,\n  "b": [\n    1,\n    "é"\n  ]\n}'),
        ("{{ '<&>' | tojson }}", '"<&>"'),  # not HTML-escaped: this is not a web page
        ("{{ alert.annotations.target | fromjson }}", {"zone": "a", "hosts": ["h1", "h2"]}),
        ("{{ (alert.annotations.target | fromjson).hosts | join(',') }}", "h1,h2"),
        ("{{ params.x | tojson | fromjson }}", {"a": None, "b": [1, "é"]}),
        ("{{ 'héllo' | b64encode }}", base64.b64encode("héllo".encode()).decode()),
        ("{{ 'aMOpbGxv' | b64decode }}", "héllo"),
        ("{{ 'aGk' | b64decode }}", "hi"),  # unpadded
        ("{{ 'Pz4_' | b64decode }}", "?>?"),  # URL-safe alphabet
        ("{{ 'hi' | sha256 }}", "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"),
        ("{{ params.x | tojson | sha256 }}", __import__("hashlib").sha256(b'{"a":null,"b":[1,"\xc3\xa9"]}').hexdigest()),
    ],
)
def test_filters(source: str, expected: Any) -> None:
    assert r(source) == expected


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("10Gi", 10 * 2**30), ("1Ki", 1024), ("1.5Gi", 1610612736), ("2Ei", 2 * 2**60),
        ("500m", 0.5), ("250m", 0.25), ("1", 1), ("0", 0), ("1.5", 1.5), ("+2", 2), ("-1k", -1000), (".5", 0.5),
        ("1.5G", 1_500_000_000), ("1k", 1000), ("3M", 3_000_000), ("2T", 2 * 10**12), ("1P", 10**15), ("1E", 10**18),
        ("100n", 1e-7), ("5u", 5e-6), ("1e3", 1000), ("1E3", 1000), ("12e-1", 1.2), ("5.", 5), (" 2Gi ", 2 * 2**30),
    ],
)
def test_quantity_follows_kubernetes_suffixes(text: str, number: float) -> None:
    value = r("{{ q | quantity }}", {"q": text})
    assert value == pytest.approx(number) and type(value) is type(number)


@pytest.mark.parametrize("text", ["10gb", "10GB", "Gi", "", "1.2.3", "1 Gi", "ki", "1Ki2", "0x10", "1e", "1e1000",
                                  "1" * 100, "--1"])
def test_quantity_refuses_what_kubernetes_refuses(text: str) -> None:
    with pytest.raises(TemplateError, match="quantity: .*(not a Kubernetes quantity|larger than)"):
        r("{{ q | quantity }}", {"q": text})


def test_quantity_of_a_number_is_the_number_and_the_cap_is_int64() -> None:
    assert r("{{ 3 | quantity }}") == 3
    with pytest.raises(TemplateError, match=f"larger than {QUANTITY_MAX}"):
        r("{{ '8Ei' | quantity }}")
    assert r("{{ '7Ei' | quantity }}") == 7 * 2**60


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ 'x' | fromjson }}", "fromjson: not valid JSON: Expecting value at line 1 column 1"),
        ("{{ 'NaN' | fromjson }}", "NaN is not a JSON number"),
        ("{{ 3 | fromjson }}", "fromjson takes JSON text, not int"),
        ("{{ '!!' | b64decode }}", "b64decode: '!!' is not base64"),
        ("{{ '//8=' | b64decode }}", "the decoded bytes are not UTF-8 text"),
        ("{{ 3 | sha256 }}", "sha256 takes text, not int (use | tojson | sha256)"),
        ("{{ params | b64encode }}", "b64encode takes text, not dict"),
        ("{{ params.x | tojson(indent=99) }}", "indent is a number from 0 to 8"),
    ],
)
def test_filter_errors_name_the_template_and_the_filter(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        r(source)
    assert str(info.value).startswith(f"template {source!r}: ") and message in str(info.value), str(info.value)


# -- hostile data ----------------------------------------------------------------------------------


def test_fromjson_and_b64decode_are_size_capped_and_do_not_echo_input() -> None:
    huge = json.dumps(["x" * 1000] * (FROMJSON_MAX_BYTES // 1000 + 1))
    with pytest.raises(TemplateError) as info:
        r("{{ out | fromjson }}", {"out": huge})
    assert f"more than {FROMJSON_MAX_BYTES}" in str(info.value) and len(str(info.value)) < 300
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(TemplateError, match=f"nested more than {FROMJSON_MAX_DEPTH} deep"):
        r("{{ out | fromjson }}", {"out": deep[: FROMJSON_MAX_BYTES // 2]})
    blob = base64.b64encode(b"a" * (B64DECODE_MAX_BYTES + 3)).decode()
    with pytest.raises(TemplateError) as info:
        r("{{ out | b64decode }}", {"out": blob})
    assert f"more than {B64DECODE_MAX_BYTES} bytes" in str(info.value) and len(str(info.value)) < 300
    assert r("{{ out | b64decode | length }}", {"out": base64.b64encode(b"a" * B64DECODE_MAX_BYTES).decode()}) \
        == B64DECODE_MAX_BYTES


@pytest.mark.parametrize("source", ["{{ out | fromjson }}", "{{ (out | fromjson)[0] }}", "{{ enc | b64decode }}"])
def test_decoded_data_cannot_spell_a_secret_reference(source: str) -> None:
    """JSON escapes and base64 turn plain data into any code point: the decoded text is made inert."""
    forged = f"{MARK_OPEN}0:T\ue001"
    context = {"out": json.dumps([forged]), "enc": base64.b64encode(forged.encode()).decode()}
    assert MARK_OPEN not in context["out"] and MARK_OPEN not in context["enc"]  # the data itself is plain
    value = r(source, context, secrets=["T"])
    assert MARK_OPEN not in json.dumps(value, ensure_ascii=False) and INERT in json.dumps(value, ensure_ascii=False)
    assert display(value) == value


def test_a_secret_inside_tojson_stays_one_reference() -> None:
    value = r("{{ {'token': secret('T')} | tojson }}", secrets=["T"])
    assert display(value) == '{"token":"${secret:T}"}'


@pytest.mark.parametrize("source", ["{{ secret('T') | b64encode }}", "{{ secret('T') | sha256 }}"])
def test_filters_cannot_transform_a_secret(source: str) -> None:
    with pytest.raises(TemplateError, match="secret\\('T'\\) was changed or dropped"):
        r(source, secrets=["T"])
