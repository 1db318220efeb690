"""bot/services.py: how `dev` and `serve` describe their doors."""

from __future__ import annotations

from typing import Any

from bot.services import _grafana_door
from bot.settings import Settings


def test_dev_says_which_proofs_the_grafana_route_requires(tmp_path):
    def door(**fields: Any) -> str:
        return _grafana_door(Settings(data_dir=tmp_path, **fields))

    assert door() == "no token: 401"
    assert door(grafana_token="t" * 20) == "bearer token required"
    assert door(grafana_hmac_secrets=" , ") == "no token: 401", "blank secrets are no secrets"
    assert door(grafana_token="t" * 20, grafana_hmac_secrets="s1,s2") == "bearer token + HMAC signature required"
