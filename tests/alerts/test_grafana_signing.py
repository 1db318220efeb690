"""Grafana's HMAC signature as grafana/alerting's http/hmac.go makes it: hex HMAC-SHA256 of the
body, or of `<unix seconds>:<body>` when the contact point names a timestamp header."""

from __future__ import annotations

import hashlib
import hmac

from bot.alerts.grafana_signing import SKEW, GrafanaSigning

SECRET, OLD = "contact-point-secret", "the-secret-before-rotation"
BODY = b'{"version": "1", "alerts": []}'
NOW = 1_796_400_000
STAMP = "X-Grafana-Alerting-Timestamp"


def sign(body: bytes, secret: str = SECRET, stamp: int | None = None) -> str:
    signed = body if stamp is None else f"{stamp}:".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def test_a_body_signed_with_the_secret_holds_and_anything_else_names_the_fault():
    signing = GrafanaSigning((SECRET,))
    assert signing.refusal(BODY, {"X-Grafana-Alerting-Signature": sign(BODY)}) is None
    assert signing.refusal(BODY, {"X-Grafana-Alerting-Signature": sign(BODY).upper()}) is None
    assert "missing X-Grafana-Alerting-Signature or X-Grafana-Alert-Signature" in signing.refusal(BODY, {})
    for forged in [sign(BODY, "guessed"), sign(BODY + b" "), sign(BODY)[:-1], "é" * 64, "v1=" + sign(BODY)]:
        why = signing.refusal(BODY, {"X-Grafana-Alerting-Signature": forged})
        assert why and "does not match" in why and "PLAYBOOK_BOT_GRAFANA_HMAC_TIMESTAMP_HEADER" in why, forged
    # a contact point that names a timestamp header signs "<time>:<body>": said, not silently refused
    stamped = sign(BODY, stamp=NOW)
    assert "TIMESTAMP_HEADER" in signing.refusal(BODY, {"X-Grafana-Alerting-Signature": stamped, STAMP: str(NOW)})


def test_by_default_either_name_grafana_has_signed_into_is_read():
    """A contact point with its Header field empty signs into grafana/alerting's default, which has
    been X-Grafana-Alert-Signature as well as X-Grafana-Alerting-Signature."""
    signing = GrafanaSigning((SECRET,))
    assert signing.refusal(BODY, {"X-Grafana-Alert-Signature": sign(BODY)}) is None
    assert "does not match" in signing.refusal(BODY, {"X-Grafana-Alert-Signature": sign(BODY, "guessed")})


def test_either_secret_holds_while_one_is_rotated_and_the_header_is_the_configured_one():
    signing = GrafanaSigning((SECRET, OLD), header="X-Signed")
    assert signing.refusal(BODY, {"X-Signed": sign(BODY, OLD)}) is None
    assert signing.refusal(BODY, {"X-Signed": sign(BODY, SECRET)}) is None
    assert "missing X-Signed" in signing.refusal(BODY, {"X-Grafana-Alerting-Signature": sign(BODY)})


def test_with_a_timestamp_header_the_time_is_signed_and_a_stale_or_future_one_is_refused():
    signing = GrafanaSigning((SECRET,), timestamp_header=STAMP)
    ok = {"X-Grafana-Alerting-Signature": sign(BODY, stamp=NOW), STAMP: str(NOW)}
    assert signing.refusal(BODY, ok, now=NOW + SKEW) is None
    # Attack: a captured delivery replayed later, and one whose time was moved (the signature covers it).
    assert "old" in signing.refusal(BODY, ok, now=NOW + SKEW + 1)
    assert "ahead" in signing.refusal(BODY, ok, now=NOW - SKEW - 1)
    moved = {**ok, STAMP: str(NOW + 60)}
    assert "does not match" in signing.refusal(BODY, moved, now=NOW + 60)
    body_only = {"X-Grafana-Alerting-Signature": sign(BODY), STAMP: str(NOW)}
    assert "does not match" in signing.refusal(BODY, body_only, now=NOW)
    assert f"missing {STAMP}" in signing.refusal(BODY, {"X-Grafana-Alerting-Signature": sign(BODY)}, now=NOW)
    for bad in ["-5", "1.5e9", "１７９６４０００００", "9" * 13, "now"]:
        assert "not a Unix time" in signing.refusal(BODY, {**ok, STAMP: bad}, now=NOW), bad
