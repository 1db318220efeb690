"""Fingerprints computed from labels match Alertmanager's (prometheus/common model.LabelSet.Fingerprint)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from bot.alerts.fingerprint import alert_fingerprint, label_fingerprint
from tests.reliability.alertmanager_support import Alertmanager

# prometheus/common model/signature_test.go (TestMetricToFingerprint, BenchmarkMetricToFingerprint*):
# the decimal values Go's labelSetToFingerprint returns, printed here as Fingerprint.String() does (%016x).
GO_VECTORS = [
    ({}, 14695981039346656037),
    ({"name": "garland, briggs", "fear": "love is not enough"}, 5799056148416392346),
    ({"first-label": "first-label-value"}, 5146282821936882169),
    ({"first-label": "first-label-value", "second-label": "second-label-value"}, 3195800080984914717),
    (
        {"first-label": "first-label-value", "second-label": "second-label-value", "third-label": "third-label-value"},
        13843036195897128121,
    ),
]


@pytest.mark.parametrize("labels, expected", GO_VECTORS)
def test_prometheus_common_test_vectors(labels: dict[str, str], expected: int) -> None:
    assert label_fingerprint(labels) == f"{expected:016x}"


def test_an_alerts_empty_valued_labels_are_absent_labels() -> None:
    assert alert_fingerprint({"alertname": "A", "x": ""}) == label_fingerprint({"alertname": "A"})


def test_order_of_the_mapping_does_not_matter_and_the_separator_does() -> None:
    assert label_fingerprint({"a": "1", "b": "2"}) == label_fingerprint({"b": "2", "a": "1"})
    assert label_fingerprint({"a": "bc"}) != label_fingerprint({"ab": "c"})
    assert len(label_fingerprint({"x": "y"})) == 16


async def test_a_real_alertmanager_computes_the_same_fingerprints(tmp_path: Path) -> None:
    """The fingerprint Alertmanager reports for alerts it was sent (its /api/v2/alerts) is ours,
    for label sets with sorting traps (case, prefixes, `_` between cases), empty and non-ASCII values.
    (Alertmanager 0.25 refuses non-ASCII label names; the byte order we sort by is Go's anyway.)"""
    label_sets = [
        {"alertname": "DiskFull", "instance": "db-1:9100", "severity": "critical"},
        {"alertname": "Z", "a": "", "B": "x", "ab": "y", "a_b": "z"},
        {"alertname": "Ünïcødé", "zone": "eu-🔥 ünï", "Zone": "é", "zone_": "\u00ff"},
    ]
    am = Alertmanager(tmp_path, "route: {receiver: none}\nreceivers: [{name: none}]\n")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await am.ready(http)
            starts = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
            sent = [{"labels": labels, "startsAt": starts} for labels in label_sets]
            posted = await http.post(f"{am.url}/api/v2/alerts", json=sent)
            assert posted.status_code == 200, posted.text
            listed = (await http.get(f"{am.url}/api/v2/alerts")).json()
    finally:
        am.stop()
    theirs = {alert["labels"]["alertname"]: alert["fingerprint"] for alert in listed}
    assert theirs == {labels["alertname"]: alert_fingerprint(labels) for labels in label_sets}
    # its API dropped the empty-valued label before fingerprinting, as alert_fingerprint does
    assert theirs["Z"] != label_fingerprint(label_sets[1])
