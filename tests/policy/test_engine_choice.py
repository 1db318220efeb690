"""make_engine picks the backend from settings, and both satisfy the PolicyEngine protocol."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from bot.policy.embedded import EmbeddedEngine
from bot.policy.engine import PolicyEngine, make_engine
from bot.policy.opa import OpaEngine
from bot.settings import Settings


async def test_opa_url_selects_the_opa_backend() -> None:
    settings = Settings(opa_url="http://opa.internal:8181", opa_token=SecretStr("t0k"), opa_timeout=0.7)

    engine = make_engine(settings)

    assert isinstance(engine, OpaEngine) and isinstance(engine, PolicyEngine)
    assert (engine.url, engine.timeout) == ("http://opa.internal:8181", 0.7)
    assert engine._client.headers == {"Authorization": "Bearer t0k"}
    await engine.close()


async def test_no_opa_url_selects_the_embedded_backend(tmp_path: Path) -> None:
    engine = make_engine(Settings(opa_url=None, policies_dir=tmp_path, opa_timeout=1.5))

    assert isinstance(engine, EmbeddedEngine) and isinstance(engine, PolicyEngine)
    assert (engine.policies_dir, engine.timeout) == (tmp_path, 1.5)
    await engine.close()
