"""An alert's fingerprint computed from its labels, as Alertmanager computes it.

Alertmanager sends `fingerprint` = prometheus/common `model.LabelSet.Fingerprint()`: FNV-1a 64
over the label names in byte order, each name and value followed by the separator byte 0xff,
printed as 16 lower-case hex digits (Fingerprint.String()). Senders that leave it out (older Grafana) get the same value
here, so their repeats land on one episode and match what a newer sender would have said.
"""

from __future__ import annotations

from collections.abc import Mapping

_OFFSET64 = 14695981039346656037
_PRIME64 = 1099511628211
_MASK64 = (1 << 64) - 1
_SEPARATOR = 0xFF  # cannot occur in UTF-8, so ("a", "bc") and ("ab", "c") never hash alike


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """`%016x` of FNV-1a 64 over sorted (name, 0xff, value, 0xff); the empty set is the offset basis."""
    h = _OFFSET64
    # Go sorts the names as byte strings; UTF-8 keeps code point order, so Python's str sort agrees.
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                h = ((h ^ byte) * _PRIME64) & _MASK64
            h = ((h ^ _SEPARATOR) * _PRIME64) & _MASK64
    return f"{h:016x}"


def alert_fingerprint(labels: Mapping[str, str]) -> str:
    """The fingerprint Alertmanager gives an alert posted with these labels: its API drops
    empty-valued labels first (an empty value is an absent label in Prometheus), then fingerprints."""
    return label_fingerprint({name: value for name, value in labels.items() if value != ""})
