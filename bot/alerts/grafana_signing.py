"""Grafana's optional HMAC signature on its webhook deliveries (contact point, HMAC Signature).

Grafana signs with HMAC-SHA256 under a shared secret, lowercase hex, in one header (default
`X-Grafana-Alerting-Signature`). When the contact point names a timestamp header, Grafana puts the
Unix time in seconds there and signs `<time>:<body>` instead of the body alone (grafana/alerting,
http/hmac.go). Without a timestamp a captured delivery verifies forever (its episode still starts
at most one run); with one, a delivery more than SKEW from this server's clock is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_HEADER = "X-Grafana-Alerting-Signature"
# What a contact point whose Header field is left empty signs into: grafana/alerting's default has
# been either name (http/hmac.go `defaultHeaderName`), so the default setting reads both.
DEFAULT_HEADERS = (DEFAULT_HEADER, "X-Grafana-Alert-Signature")
SKEW = 300  # seconds a signed timestamp may differ from this server's clock, either way
STAMP_DIGITS = 12  # Unix seconds; longer is not a time


@dataclass(frozen=True)
class GrafanaSigning:
    """What the contact point is set to: its secrets (several while one is rotated), the signature
    header, and the timestamp header ("" when it names none)."""

    secrets: tuple[str, ...]
    header: str = DEFAULT_HEADER
    timestamp_header: str = ""

    @property
    def _headers(self) -> tuple[str, ...]:
        return DEFAULT_HEADERS if self.header.lower() == DEFAULT_HEADER.lower() else (self.header,)

    def signature(self, headers: Mapping[str, str]) -> str:
        """The signature the delivery carries ("" for none), from whichever header it is in."""
        return next((headers[n].strip() for n in self._headers if headers.get(n, "").strip()), "")

    def refusal(self, body: bytes, headers: Mapping[str, str], now: float | None = None) -> str | None:
        """None when the delivery is signed as configured; else why not, naming what to fix."""
        given = self.signature(headers)
        if not given:
            return (f"missing {' or '.join(self._headers)} (Grafana's HMAC signature: the contact point's "
                    "HMAC Signature secret)")
        signed = body
        if self.timestamp_header:
            stamp = headers.get(self.timestamp_header, "").strip()
            if not stamp:
                return (f"missing {self.timestamp_header} (the contact point's HMAC Timestamp Header must be "
                        f"{self.timestamp_header})")
            if not stamp.isascii() or not stamp.isdigit() or len(stamp) > STAMP_DIGITS:
                return f"{self.timestamp_header} is not a Unix time in seconds"
            skew = (time.time() if now is None else now) - int(stamp)
            if abs(skew) > SKEW:
                return (f"{self.timestamp_header} is {abs(skew):.0f}s {'old' if skew > 0 else 'ahead'}, more than "
                        f"{SKEW}s from this server's clock: a replayed or delayed delivery (or a clock to fix)")
            signed = stamp.encode() + b":" + body
        matched = False
        for secret in self.secrets:  # every secret, constant-time: which one matched does not show
            expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
            matched |= hmac.compare_digest(expected, given.lower().encode("ascii", "replace"))
        if matched:
            return None
        what = f"<{self.timestamp_header}>:<body>" if self.timestamp_header else "the body"
        hint = "" if self.timestamp_header else (
            "; if the contact point names a Timestamp Header, set PLAYBOOK_BOT_GRAFANA_HMAC_TIMESTAMP_HEADER to it")
        return f"{self.header} does not match (hex HMAC-SHA256 of {what}){hint}"
