"""A playbook directory for rehearsal tests: a small playbook with an undo, a fallback, a
high-impact step and an on_failure step, plus a test file written per test."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.support import ROOT

POLICIES = ROOT / "policies"

PLAYBOOK = """\
name: tiny
owner: sre-oncall
params:
  service: {type: string, pattern: "^[a-z0-9-]+$"}
  environment: {type: string, enum: [staging, production], default: production}
steps:
  - id: drain
    action: http.request
    with: {method: POST, url: "https://lb.internal/{{ params.service }}/drain"}
    compensate: {action: http.request, with: {method: POST, url: "https://lb.internal/{{ params.service }}/enable"}}
  - id: restart
    action: http.request
    impact: high
    with: {method: POST, url: "https://deploy.internal/{{ params.service }}/restart"}
    fallback: {action: http.request, with: {method: POST, url: "https://deploy.internal/{{ params.service }}/kill"}}
  - id: note
    action: core.log
    with: {message: "restarted {{ params.service }}: {{ steps.restart.output.status }}"}
on_failure:
  - {id: page, action: slack.post, with: {channel: "#oncall", text: "{{ run.error }}"}}
"""

LOCKED = """\
name: locked
owner: sre-oncall
concurrency: {key: "svc-{{ params.service }}", on_busy: ON_BUSY}
params:
  service: {type: string, pattern: "^[a-z0-9-]+$"}
steps:
  - {id: work, action: http.request, with: {method: GET, url: "https://x.internal/{{ params.service }}"}}
"""

APPROVE = '{restart: [{by: "slack:U0BOB", vote: approve, groups: [sre-oncall]}]}'


def directory(tmp_path: Path, test_yaml: str, *, name: str = "tiny.test.yaml", extra: dict[str, str] | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tiny.yaml").write_text(PLAYBOOK)
    for file, text in (extra or {}).items():
        (tmp_path / file).write_text(text)
    (tmp_path / name).write_text(test_yaml)
    return tmp_path

ROLL = """\
name: roll
owner: sre-oncall
params:
  hosts: {type: array, items: {type: string, pattern: "^[a-z0-9-]+$"}}
steps:
  - id: pick
    action: core.confirm
    with: {message: "go?", choices: [go, stop]}
  - id: roll
    foreach: "{{ params.hosts }}"
    as: host
    max_failures: 1
    steps:
      - id: drain
        action: http.request
        with: {method: POST, url: "https://lb.internal/{{ host }}/drain"}
        compensate: {action: http.request, with: {method: POST, url: "https://lb.internal/{{ host }}/enable"}}
      - {id: check, action: http.request, with: {method: GET, url: "https://{{ host }}.internal/{{ steps.pick.output.choice }}"}}
  - {id: call, action: playbook.run, with: {name: tiny, params: {service: "{{ params.hosts[0] }}"}}}
"""
