"""`concurrency:` (format v1.1): load-time checks name file and line; the key renders bounded."""

from __future__ import annotations

import pytest

from bot.engine.locking import LockKeyError, lock_workflow_id, render_lock_key
from bot.playbook.loader import PlaybookLoadErrors, load_text
from bot.playbook.model import LOCK_KEY_MAX, Playbook

BASE = """\
name: locked
params:
  service: {{type: string}}
concurrency:
{lock}
steps:
  - {{id: a, action: core.log, with: {{message: hi}}}}
"""


def errors(lock: str) -> list[str]:
    with pytest.raises(PlaybookLoadErrors) as info:
        load_text(BASE.format(lock=lock), path="locked.yaml")
    return [str(e) for e in info.value.errors]


def test_a_valid_lock_loads_with_queue_as_default() -> None:
    loaded = load_text(BASE.format(lock='  key: "{{ params.service }}"'), path="locked.yaml")
    lock = loaded.playbook.concurrency
    assert lock is not None and (lock.limit, lock.on_busy) == (1, "queue")


@pytest.mark.parametrize(
    ("lock", "expected"),
    [
        ('  key: "{{ params.service }}"\n  limit: 0', "locked.yaml:6: concurrency.limit: Input should be greater than or equal to 1"),
        ('  key: "{{ params.service }}"\n  on_busy: wait',
         "locked.yaml:6: concurrency.on_busy: Input should be 'queue', 'refuse' or 'attach' (got 'wait')"),
        ('  key: "{{ params.servce }}"', "locked.yaml:5: concurrency.key: template reads unknown param 'servce'; did you mean 'service'?"),
        ('  key: "{{ steps.a.output }}"', "locked.yaml:5: concurrency.key: unknown template variable 'steps' (a concurrency key is decided before the run starts"),
        ('  key: "{{ params.service"', "locked.yaml:5: concurrency.key: template syntax error"),
        ('  key: "x"\n  ttl: 5m', "locked.yaml:6: concurrency: unknown key 'ttl'"),
    ],
)
def test_mistakes_name_the_file_and_line(lock: str, expected: str) -> None:
    found = errors(lock)
    assert any(e.startswith(expected) for e in found), found


def test_a_constant_key_is_a_warning_not_an_error() -> None:
    loaded = load_text(BASE.format(lock='  key: "global"'), path="locked.yaml")
    assert any("concurrency.key" in w for w in loaded.warnings)


def test_a_v1_playbook_hashes_as_before_and_a_lock_changes_the_hash() -> None:
    v1 = {"name": "p", "steps": [{"id": "a", "action": "core.log"}]}
    # The hash of this playbook before format v1.1 (computed with the v1 model on main).
    before = "sha256:7d042d27e04920f5f59b5deb47fe6a523ee4de1e0164a4e156eec18f5d6f40bd"
    assert Playbook.model_validate(v1).content_hash() == before
    locked = Playbook.model_validate({**v1, "concurrency": {"key": "k"}})
    assert locked.content_hash() != Playbook.model_validate(v1).content_hash()


def pb(key: str) -> Playbook:
    return Playbook.model_validate({
        "name": "p", "params": {"service": {"type": "string"}}, "concurrency": {"key": key},
        "steps": [{"id": "a", "action": "core.log"}],
    })


def test_the_key_renders_from_params_and_alert() -> None:
    assert render_lock_key(pb("svc-{{ params.service }}"), {"service": "api"}, None) == "svc-api"
    alert = {"labels": {"service": "db"}}
    assert render_lock_key(pb("{{ alert.labels.service }}"), {"service": "x"}, alert) == "db"
    assert render_lock_key(Playbook.model_validate({"name": "p", "steps": [{"id": "a", "action": "core.log"}]}), {}, None) is None


@pytest.mark.parametrize(
    ("service", "why"),
    [
        ("x" * (LOCK_KEY_MAX + 1), f"at most {LOCK_KEY_MAX}"),
        ("   ", "renders empty"),
        ("api\nother", "control characters"),
    ],
)
def test_hostile_params_cannot_make_an_unbounded_or_blank_key(service: str, why: str) -> None:
    with pytest.raises(LockKeyError, match=why):
        render_lock_key(pb("{{ params.service }}"), {"service": service}, None)


def test_a_key_cannot_read_secrets_or_render_a_mapping() -> None:
    with pytest.raises(LockKeyError):
        render_lock_key(pb('{{ secret("X") }}'), {"service": "a"}, None)
    with pytest.raises(LockKeyError, match="must render to text"):
        render_lock_key(pb("{{ alert.labels }}"), {"service": "a"}, {"labels": {"a": "b"}})


def test_the_lock_id_is_fixed_size_and_per_key() -> None:
    ids = {lock_workflow_id(k) for k in ("a", "b", "x" * LOCK_KEY_MAX, "ü/../\x00")}
    assert len(ids) == 4 and all(len(i) == len("lock-") + 40 for i in ids)
