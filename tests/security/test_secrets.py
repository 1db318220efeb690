"""Secrets reach an action only where the playbook's own template called `secret()`; data never can.

Every attack runs the real PlaybookRun on the real dev server with the real worker assembly
(`worker_deps`: http.request, SecretStore, audit store, the playbook in its catalog) and sends to a
local HTTP sink that keeps every byte it receives. The sink's base URL is the playbook's own constant
(`vars.sink`, filled in per test): the attacker controls a path or query segment, never the host. The sink must never see a secret value except where the playbook put it
(the X-Legit header: the positive control that the legitimate use still works).
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import pytest
import pytest_asyncio

from bot.alerts.episodes import route
from bot.alerts.payload import Alert
from bot.audit.store import SqliteAuditStore, default_path
from bot.engine.state import RunInput, RunStatus, TriggerContext
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.playbook.loader import Catalog, load_text
from bot.settings import Settings
from bot.slack.commands import slack_run_id
from tests.http_server import serving
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import finished, slack_stack, text_of
from tests.waiting import eventually

DEPLOY = 'dply-7Q2x/+=?&"tok~>>?'  # every encoding below spells it differently
SLACK = "xoxb-bot-token-not-for-playbooks-31337"
MARKERS = "\ue0000:DEPLOY_TOKEN\ue001 \ue0001:DEPLOY_TOKEN\ue001 \ue000DEPLOY_TOKEN\ue001"
SPELLED = f"${{secret:DEPLOY_TOKEN}} ${{secret:PLAYBOOK_BOT_SLACK_BOT_TOKEN}} {MARKERS}"

POLICY = """package playbook.authz

import rego.v1

default decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": []}

# Policy sees the display text, never a marker: a high-impact step is allowed only when it does.
decision := {"allow": false, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": ["no display text"]} if {
	input.step.impact == "high"
	input.step["with"].headers["X-Legit"] != "${secret:DEPLOY_TOKEN}"
}

default approver := {"allow": false, "reasons": []}

default start := {"allow": true, "reasons": []}
"""


def forms(value: str) -> list[str]:
    """How a value looks on its way out: raw, percent-encoded, JSON-escaped, base64."""
    raw = value.encode()
    return [
        value,
        quote(value, safe=""),
        quote(value, safe="/"),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]


def found_in(text: str, value: str) -> list[str]:
    return [form for form in forms(value) if form in text]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Sink:
    """A local HTTP server standing in for both the legitimate API and the attacker."""

    url: str
    requests: list[Request] = field(default_factory=list)

    def leaks(self, value: str, allowed_header: str = "x-legit") -> list[str]:
        """Every place outside the allowed header where any form of `value` arrived."""
        out = []
        for r in self.requests:
            texts = {"path": r.path, "unquoted path": unquote(r.path), "unquote_plus path": unquote_plus(r.path),
                     "body": r.body.decode("utf-8", "replace")}
            texts.update({f"header {k}": v for k, v in r.headers.items() if k != allowed_header})
            out += [f"{r.method} {r.path}: {where}" for where, text in texts.items() if found_in(text, value)]
        return out

    def legit(self) -> list[str]:
        return [r.headers["x-legit"] for r in self.requests if "x-legit" in r.headers]


REF_BODY = {
    "next": "${secret:DEPLOY_TOKEN}",
    "slack": "${secret:PLAYBOOK_BOT_SLACK_BOT_TOKEN}",
    "marker": "\ue0000:DEPLOY_TOKEN\ue001",
    "\ue0001:DEPLOY_TOKEN\ue001": "a marker as a key",
}


@pytest.fixture
def sink() -> Iterator[Sink]:
    requests: list[Request] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, reply = 200, b'{"ok": true}'
            if self.path == "/ref":
                reply = json.dumps(REF_BODY).encode()
            elif self.path.startswith("/reflect"):
                # An API that echoes what it got in every encoding: the masking must catch each.
                got = json.loads(body or b"{}").get("t", "")
                reply = "\n".join(forms(got)).encode()
                status = 500 if self.path.startswith("/reflect-500") else 200
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200 and not self.path.startswith("/reflect") else "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:
                pass

        do_GET = do_POST = _handle

    with serving(Handler) as url:
        yield Sink(url, requests)


SINK = "@SINK@"  # the playbooks' `vars.sink`, replaced by the sink's URL when a test loads them


def with_sink(text: str, sink: Sink) -> str:
    """The playbook with the sink as its base-URL constant (a literal, as `vars` must be)."""
    assert SINK in text
    return text.replace(SINK, sink.url)


@dataclass
class Bot:
    settings: Settings
    client: Any

    async def run(self, text: str, params: dict[str, Any], *, requested_by: str = "cli:tester",
                  alert: dict[str, Any] | None = None, refused: bool = False) -> tuple[RunStatus, Any]:
        """Start the run straight on Temporal (no proof: an unverified requester) and wait for it,
        on a worker whose catalog holds this playbook (it refuses any other)."""
        loaded = load_text(text)
        kind = "alertmanager" if alert is not None else "cli"
        run_input = RunInput(
            playbook=loaded.playbook, playbook_hash=loaded.hash, params=params,
            trigger=TriggerContext(kind=kind, requested_by=requested_by, alert=alert),
        )
        async with worker_deps(self.settings, catalog=Catalog([loaded])) as deps:
            async with make_worker(self.client, f"tq-{uuid.uuid4()}", deps.activities) as worker:
                handle = await self.client.start_workflow(
                    PlaybookRun.run, run_input, id=f"secrets-{uuid.uuid4()}", task_queue=worker.task_queue
                )
                status = await handle.result()
        assert ("refused by the worker" in (status.error or "")) is refused, status.error
        return status, handle

    def audit_text(self, run_id: str) -> str:
        with SqliteAuditStore(default_path(self.settings)) as store:
            return json.dumps([e.model_dump(mode="json") for e in store.events(run_id=run_id)], ensure_ascii=False)


@pytest_asyncio.fixture
async def bot(dev_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bot:
    policies = tmp_path / "policies" / "playbook" / "authz"
    policies.mkdir(parents=True)
    (policies / "authz.rego").write_text(POLICY)
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"DEPLOY_TOKEN={DEPLOY}\n")
    # The bot's own credential, in the worker's environment as deployments have it.
    monkeypatch.setenv("PLAYBOOK_BOT_SLACK_BOT_TOKEN", SLACK)
    settings = Settings(
        data_dir=tmp_path / "data", policies_dir=tmp_path / "policies", secrets_file=secrets, slack_bot_token=None,
    )
    return Bot(settings, dev_env.client)


def assert_nothing_leaked(sink: Sink) -> None:
    assert sink.requests, "the run sent nothing: the test proves nothing"
    assert sink.leaks(DEPLOY) == []
    assert sink.leaks(SLACK, allowed_header="") == []


# -- data that spells a reference ----------------------------------------------------------------

PARAMS_PB = """
name: exfil-params
secrets: [DEPLOY_TOKEN]
vars: {sink: "@SINK@"}
params:
  target: {type: string, pattern: "^.*$"}   # deliberately permissive: the attacker writes path and query
  note: {type: string, default: ""}
steps:
  - id: call
    action: http.request
    with:
      method: POST
      url: "{{ vars.sink }}/in/{{ params.target }}"
      query: {note: "{{ params.note }}"}
      headers: {X-Legit: "{{ secret('DEPLOY_TOKEN') }}"}
      body: "note={{ params.note }}"
"""


async def test_a_param_spelling_a_reference_reaches_no_secret(bot: Bot, sink: Sink) -> None:
    # `/playbook run ... target=${secret:PLAYBOOK_BOT_SLACK_BOT_TOKEN}/`: the path after /in/ is the attacker's
    target = f"${{secret:DEPLOY_TOKEN}}/${{secret:PLAYBOOK_BOT_SLACK_BOT_TOKEN}}/{MARKERS}?s=${{secret:DEPLOY_TOKEN}}"
    status, _ = await bot.run(with_sink(PARAMS_PB, sink), {"target": target, "note": SPELLED})
    assert status.state == "completed", status.error
    [sent] = sink.requests
    assert unquote(sent.path).startswith("/in/${secret:DEPLOY_TOKEN}/${secret:PLAYBOOK_BOT_SLACK_BOT_TOKEN}/"), (
        "the attacker's path reached the URL, as text"
    )
    assert_nothing_leaked(sink)
    assert sink.legit() == [DEPLOY], "the template's own secret() still reaches the action"


ALERT_PB = """
name: exfil-alert
secrets: [DEPLOY_TOKEN]
vars: {sink: "@SINK@"}
params:
  service: {type: string, pattern: "^.*$"}   # deliberately permissive: the alert writes a path segment
  summary: {type: string, default: ""}
triggers:
  alertmanager:
    - matchers: ['alertname="Exfil"']
      params: {service: "{{ alert.labels.service }}", summary: "{{ alert.annotations.summary }}"}
steps:
  - id: call
    action: http.request
    with:
      method: POST
      url: "{{ vars.sink }}/alert/{{ params.service }}"
      query: {label: "{{ alert.labels.service }}", annotation: "{{ alert.annotations.summary }}"}
      headers: {X-Legit: "{{ secret('DEPLOY_TOKEN') }}"}
      body: "{{ params.summary }} | {{ alert.annotations.summary }} | {{ alert.labels.service }}"
"""


async def test_alert_labels_and_annotations_spelling_a_reference_reach_no_secret(bot: Bot, sink: Sink) -> None:
    alert = Alert.model_validate({
        "status": "firing",
        "labels": {"alertname": "Exfil", "service": "${secret:DEPLOY_TOKEN}" + MARKERS},
        "annotations": {"summary": SPELLED},
        "startsAt": datetime.now(timezone.utc).isoformat(),
        "fingerprint": uuid.uuid4().hex,
    })
    text = with_sink(ALERT_PB, sink)
    [match] = route([load_text(text)], alert)  # the receiver's own routing renders the trigger params
    assert match.ok, match.error
    status, _ = await bot.run(text, match.params or {}, requested_by="alertmanager", alert=alert.as_context())
    assert status.state == "completed", status.error
    assert_nothing_leaked(sink)
    assert sink.legit() == [DEPLOY]


OUTPUT_PB = """
name: exfil-output
secrets: [DEPLOY_TOKEN]
vars: {sink: "@SINK@"}
steps:
  - id: fetch
    action: http.request
    with: {method: GET, url: "{{ vars.sink }}/ref"}
  - id: use
    action: http.request
    with:
      method: POST
      url: "{{ vars.sink }}/use/{{ steps.fetch.output.json.next }}"
      query: {next: "{{ steps.fetch.output.json.next }}", slack: "{{ steps.fetch.output.json.slack }}",
              marker: "{{ steps.fetch.output.json.marker }}"}
      headers: {X-Legit: "{{ secret('DEPLOY_TOKEN') }}", X-Next: "{{ steps.fetch.output.json.next }}"}
      json: {all: "{{ steps.fetch.output.json }}", body: "{{ steps.fetch.output.body }}"}
"""


async def test_a_step_output_spelling_a_reference_reaches_no_secret(bot: Bot, sink: Sink) -> None:
    status, _ = await bot.run(with_sink(OUTPUT_PB, sink), {})
    assert status.state == "completed", status.error
    assert [r.path.split("?")[0] for r in sink.requests][:1] == ["/ref"]
    assert len(sink.requests) == 2
    assert_nothing_leaked(sink)
    assert sink.legit() == [DEPLOY]


REQUESTER_PB = """
name: exfil-requester
secrets: [DEPLOY_TOKEN]
vars: {sink: "@SINK@"}
steps:
  - id: call
    action: http.request
    impact: high                      # policy sees the arguments too
    with:
      method: POST
      url: "{{ vars.sink }}/by"
      query: {by: "{{ run.requested_by }}"}
      headers: {X-Legit: "{{ secret('DEPLOY_TOKEN') }}"}
      body: "requested by {{ run.requested_by }}"
"""


async def test_requested_by_spelling_a_reference_reaches_no_secret(bot: Bot, sink: Sink) -> None:
    """A requester can only be a principal (`cli:<name>`: letters, digits and . _ @ -), so a raw
    client that names one spelling references is refused before any template reads it; the other
    tests here show the templates would not resolve it anyway."""
    status, _ = await bot.run(with_sink(REQUESTER_PB, sink), {}, requested_by="cli:" + SPELLED, refused=True)
    assert status.state == "cancelled" and "the requester is not a principal" in (status.error or "")
    assert status.step("call").state == "pending" and sink.requests == []
    ok, _ = await bot.run(with_sink(REQUESTER_PB, sink), {}, requested_by="cli:alice")  # positive control
    assert ok.state == "completed" and sink.legit() == [DEPLOY]
    assert_nothing_leaked(sink)


async def test_the_slash_command_attack_from_the_issue(
    dev_env, fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: Sink
) -> None:
    """`/playbook run ... target=${secret:...}` through the real front door."""
    monkeypatch.setenv("PLAYBOOK_BOT_SECRET_DEPLOY_TOKEN", DEPLOY)  # the variable source, this time
    monkeypatch.setenv("PLAYBOOK_BOT_SLACK_BOT_TOKEN", SLACK)
    target = "${secret:DEPLOY_TOKEN}/${secret:PLAYBOOK_BOT_SLACK_BOT_TOKEN}"
    note = "\ue0000:DEPLOY_TOKEN\ue001"
    playbooks = {"exfil-params": with_sink(PARAMS_PB, sink)}
    async with slack_stack(dev_env.client, fake_slack, tmp_path, playbooks=playbooks) as stack:
        body, key = stack.command(f"dry-run exfil-params target={target} note={note}")
        assert (await stack.post(body)).status_code == 200
        shown = text_of(await stack.answers(key))
        assert '"X-Legit": "${secret:DEPLOY_TOKEN}"' in shown, shown  # what the template's own call shows as
        assert "\ufffd0:DEPLOY_TOKEN\ufffd" in shown and "\ue000" not in shown  # the param's marker is inert

        trigger = f"{int(datetime.now().timestamp())}.7.{uuid.uuid4().hex[:20]}"
        body, key = stack.command(f"run exfil-params target={target} note={note}", trigger_id=trigger)
        assert (await stack.post(body)).status_code == 200
        status = await eventually(lambda: finished(stack, slack_run_id("exfil-params", trigger)), what="run finished")
        slack_text = json.dumps([m.__dict__ for m in stack.fake.messages], ensure_ascii=False)
    assert slack_text != "[]", "the run was shown in Slack: the check below is not vacuous"
    assert status.state == "completed", status.error
    assert [unquote(r.path.split("?")[0]) for r in sink.requests] == [
        "/in/${secret:DEPLOY_TOKEN}/${secret:PLAYBOOK_BOT_SLACK_BOT_TOKEN}"
    ], "the attacker's path reached the URL, as text"
    assert_nothing_leaked(sink)
    assert sink.legit() == [DEPLOY]
    assert found_in(slack_text, DEPLOY) == [] and SLACK not in slack_text


# -- the bot's own credentials are no playbook secrets ---------------------------------------------

SETTINGS_PB = """
name: read-settings
secrets: [PLAYBOOK_BOT_SLACK_BOT_TOKEN]  # declaring it does not make the bot's own setting readable
vars: {sink: "@SINK@"}
steps:
  - id: call
    action: http.request
    with:
      method: POST
      url: "{{ vars.sink }}/token"
      headers: {X-Token: "{{ secret('PLAYBOOK_BOT_SLACK_BOT_TOKEN') }}"}
    retry: {max_attempts: 1}
"""


async def test_the_bots_own_slack_token_is_not_readable_as_a_secret(bot: Bot, sink: Sink) -> None:
    status, _ = await bot.run(with_sink(SETTINGS_PB, sink), {})
    assert status.step("call").state == "failed"
    assert sink.requests == [], "the step must fail before sending anything"
    error = status.step("call").error or ""
    assert "PLAYBOOK_BOT_SECRET_PLAYBOOK_BOT_SLACK_BOT_TOKEN" in error and "PLAYBOOK_BOT_SECRETS_FILE" in error
    assert SLACK not in error


# -- masking: every encoded form, in output, error, history and audit --------------------------------

MASK_PB = """
name: mask-forms
secrets: [DEPLOY_TOKEN]
vars: {sink: "@SINK@"}
steps:
  - id: ok
    action: http.request
    with:
      method: POST
      url: "{{ vars.sink }}/reflect?t={{ secret('DEPLOY_TOKEN') }}"
      json: {t: "{{ secret('DEPLOY_TOKEN') }}"}
  - id: bad
    action: http.request
    with:
      method: POST
      url: "{{ vars.sink }}/reflect-500"
      json: {t: "{{ secret('DEPLOY_TOKEN') }}"}
    retry: {max_attempts: 1}
"""


async def test_every_encoded_form_is_masked_in_output_error_history_and_audit(bot: Bot, sink: Sink) -> None:
    status, handle = await bot.run(with_sink(MASK_PB, sink), {})
    assert (status.step("ok").state, status.step("bad").state) == ("succeeded", "failed")
    sent = [json.loads(r.body)["t"] for r in sink.requests]
    assert sent == [DEPLOY, DEPLOY], "the value did reach the API: the masking below is tested, not vacuous"

    ok = status.step("ok")
    assert ok.output is not None
    assert "***" in ok.output["url"], "output.url holds the percent-encoded secret: it must be masked"
    shown = json.dumps(ok.output) + json.dumps(ok.output, ensure_ascii=False)
    assert found_in(shown, DEPLOY) == []
    assert ok.output["body"].count("***") == len(forms(DEPLOY))

    error = status.step("bad").error or ""
    assert "returned 500" in error and "***" in error
    assert found_in(error, DEPLOY) == []

    history = await handle.fetch_history()
    raw = b"".join(e.SerializeToString() for e in history.events)
    text = raw.decode("utf-8", "replace") + history.to_json()
    assert found_in(text, DEPLOY) == [], "a secret value entered the workflow history"
    audit = bot.audit_text(status.run_id)
    assert found_in(audit, DEPLOY) == []
    assert '"t": "${secret:DEPLOY_TOKEN}"' in audit, "step_started shows the arguments with display text"
    assert ok.args and ok.args["json"] == {"t": "${secret:DEPLOY_TOKEN}"}
