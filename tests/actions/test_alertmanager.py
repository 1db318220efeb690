"""alertmanager.silence / expire_silence against a real Alertmanager (Debian: prometheus-alertmanager)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Iterator

import httpx
import pytest

from bot.actions.alertmanager import AlertmanagerActions, SilenceParams, idempotency_tag
from bot.actions.base import ACTION_FAILED, ACTION_REFUSED, INVALID_PARAMS
from bot.actions.egress import EgressClient

CONFIG = """\
route:
  receiver: sink
receivers:
  - name: sink
    webhook_configs:
      - url: http://127.0.0.1:9/
"""


def _binary() -> str | None:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    return found or next((p for p in ["/usr/bin/prometheus-alertmanager"] if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Alertmanager on 127.0.0.1, clustering off, state in a temp dir: its base URL."""
    binary = _binary()
    if binary is None:
        reason = "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    tmp: Path = tmp_path_factory.mktemp("alertmanager")
    (tmp / "alertmanager.yml").write_text(CONFIG)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = (tmp / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'alertmanager.yml'}",
            f"--storage.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"alertmanager exited with {proc.returncode}: {(tmp / 'alertmanager.log').read_text()}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"alertmanager not ready in 15 s: {(tmp / 'alertmanager.log').read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with EgressClient() as http:
        yield http


@pytest.fixture
def key() -> str:
    return f"run-{uuid.uuid4().hex[:8]}/silence"


async def _silence(client: httpx.AsyncClient, url: str, silence_id: str) -> dict:
    response = await client.get(f"{url}/api/v2/silence/{silence_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def _tagged(client: httpx.AsyncClient, url: str, key: str) -> list[dict]:
    silences = (await client.get(f"{url}/api/v2/silences")).json()
    return [s for s in silences if idempotency_tag(key) in s["comment"]]


async def test_silence_creates_an_active_silence_with_the_matchers(alertmanager, client, key, run_action) -> None:
    params = {
        "matchers": ['service="api"', "env=~prod|staging", 'team!="db"', 'pod!~"canary-.*"'],
        "duration": "30m",
        "comment": "restarting api",
    }
    providers = [AlertmanagerActions(client)]
    result = await run_action("alertmanager.silence", {**params, "url": alertmanager}, providers, key=key)

    out = result.output
    assert out["reused"] is False
    silence = await _silence(client, alertmanager, out["silence_id"])
    assert silence["status"]["state"] == "active"
    assert silence["createdBy"] == "playbook-bot"
    assert silence["comment"] == f"restarting api [playbook-bot {key}]"
    assert sorted((m["name"], m["value"], m["isRegex"], m["isEqual"]) for m in silence["matchers"]) == [
        ("env", "prod|staging", True, True),
        ("pod", "canary-.*", True, False),
        ("service", "api", False, True),
        ("team", "db", False, False),
    ]
    assert silence["endsAt"].startswith(out["ends_at"][:16])  # same minute; Alertmanager re-spells the time


async def test_retry_of_the_same_step_reuses_its_silence(alertmanager, client, key, run_action) -> None:
    providers = [AlertmanagerActions(client, default_url=alertmanager)]  # url from settings
    params = {"matchers": ['service="api"'], "duration": "30m"}

    first = await run_action("alertmanager.silence", params, providers, key=key)
    again = await run_action("alertmanager.silence", params, providers, key=key)
    other = await run_action("alertmanager.silence", params, providers, key=key + "-2")

    assert again.output["silence_id"] == first.output["silence_id"]
    assert again.output["reused"] is True
    assert other.output["silence_id"] != first.output["silence_id"]
    [only] = await _tagged(client, alertmanager, key)
    assert only["id"] == first.output["silence_id"]
    assert only["comment"].startswith("playbook restart-service, run run-42, step restart ")


async def test_expire_then_expire_again_both_succeed(alertmanager, client, key, run_action) -> None:
    providers = [AlertmanagerActions(client)]
    silence = {"matchers": ['service="api"'], "duration": "1h", "url": alertmanager}
    created = await run_action("alertmanager.silence", silence, providers, key=key)
    silence_id = created.output["silence_id"]

    first = await run_action(
        "alertmanager.expire_silence", {"silence_id": silence_id, "url": alertmanager}, providers, compensation=True
    )
    assert first.output == {"silence_id": silence_id, "result": "expired"}
    assert (await _silence(client, alertmanager, silence_id))["status"]["state"] == "expired"

    second = await run_action(
        "alertmanager.expire_silence", {"silence_id": silence_id, "url": alertmanager}, providers, compensation=True
    )
    assert second.output["silence_id"] == silence_id
    assert second.output["result"] in ("expired", "already_expired")
    assert (await _silence(client, alertmanager, silence_id))["status"]["state"] == "expired"

    # An expired silence is not reused: the same key after an expiry gets a fresh one.
    anew = await run_action("alertmanager.silence", silence, providers, key=key)
    assert anew.output["silence_id"] != silence_id


async def test_expiring_an_unknown_silence_is_success(alertmanager, client, run_action) -> None:
    missing = str(uuid.uuid4())
    result = await run_action(
        "alertmanager.expire_silence", {"silence_id": missing, "url": alertmanager}, [AlertmanagerActions(client)]
    )
    assert result.output == {"silence_id": missing, "result": "not_found"}


async def test_alertmanager_rejection_is_not_retried(alertmanager, client, run_failing) -> None:
    # C++ RE2 accepts capture groups nested this deep; Go's regexp (Alertmanager) refuses: a 400.
    nested = "(" * 1000 + "api" + ")" * 1000
    err = await run_failing(
        "alertmanager.silence",
        {"matchers": [f'service=~"{nested}"'], "duration": "5m", "url": alertmanager},
        [AlertmanagerActions(client)],
    )
    assert (err.type, err.non_retryable) == (ACTION_FAILED, True)
    assert "returned 400" in err.message and "POST" in err.message


async def test_regex_matchers_are_checked_as_alertmanager_checks_them(alertmanager, client, key, run_action) -> None:
    # RE2, not Python `re`: `a{,2}` is a literal (so it does not match ""), `\pN` a Unicode class.
    params = {"matchers": ['x=~"a{,2}"', r'digits=~"\\pN+"'], "duration": "5m", "url": alertmanager}
    result = await run_action("alertmanager.silence", params, [AlertmanagerActions(client)], key=key)
    silence = await _silence(client, alertmanager, result.output["silence_id"])
    assert silence["status"]["state"] == "active"
    assert sorted(m["value"] for m in silence["matchers"]) == ["\\pN+", "a{,2}"]


@pytest.mark.parametrize(
    "pattern", ["a{,2}", "\\pN+", "(?U)a+", "a)|(b", "(?=a)b", "a++", "\\Cx", "(?P<n>a)", "a\\z", "\\Qa"]
)
async def test_silence_regex_checks_agree_with_alertmanager(alertmanager, client, pattern) -> None:
    """Our params check accepts the regexes Alertmanager's silence API accepts, bar one kind."""
    try:
        SilenceParams.model_validate({"matchers": ['service="api"', f"x=~{pattern}"], "duration": "5m"})
        ours = True
    except ValueError:
        ours = False
    now = datetime.now(timezone.utc)
    body = {
        "matchers": [{"name": "x", "value": pattern, "isRegex": True, "isEqual": True}],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=5)).isoformat(),
        "createdBy": "test",
        "comment": "regex agreement",
    }
    response = await client.post(f"{alertmanager}/api/v2/silences", json=body)
    assert response.status_code in (200, 400), response.text
    if pattern == "\\Qa":
        # Alertmanager stores it (the pattern compiles alone) but cannot anchor it (`^(?:\Qa)$`
        # quotes the `)$`), so the silence would never match: refused here.
        assert (ours, response.status_code) == (False, 200)
        return
    assert ours is (response.status_code == 200), response.text


# -- without a real Alertmanager: errors and params --------------------------------------------


@pytest.mark.parametrize(("code", "retryable"), [(400, False), (403, False), (500, True), (503, True)])
async def test_http_errors_4xx_final_5xx_retried(client, fake_api, run_failing, code, retryable) -> None:
    err = await run_failing(
        "alertmanager.silence",
        {"matchers": ['service="api"'], "duration": "5m", "url": fake_api.url(f"/status/{code}")},
        [AlertmanagerActions(client)],
    )
    assert err.type == ACTION_FAILED
    assert err.non_retryable is not retryable
    assert f"returned {code}: status {code}: upstream says no" in err.message


async def test_unreachable_alertmanager_is_retried(client, run_failing) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    for name, params in [
        ("alertmanager.silence", {"matchers": ['a="b"'], "duration": "5m"}),
        ("alertmanager.expire_silence", {"silence_id": str(uuid.uuid4())}),
    ]:
        err = await run_failing(name, {**params, "url": url}, [AlertmanagerActions(client)])
        assert (err.type, err.non_retryable) == (ACTION_FAILED, False)
        assert "ConnectError" in err.message


async def test_expire_on_a_url_that_is_not_alertmanager_fails(client, fake_api, run_failing) -> None:
    # Every path 404s there: "silence not found" must not be read into it.
    err = await run_failing(
        "alertmanager.expire_silence",
        {"silence_id": str(uuid.uuid4()), "url": fake_api.url("/nothing")},
        [AlertmanagerActions(client)],
    )
    assert (err.type, err.non_retryable) == (ACTION_FAILED, True)
    assert "/api/v2/status returned 404" in err.message


async def test_no_url_anywhere_is_refused(client, run_failing) -> None:
    params = {"matchers": ['a="b"'], "duration": "5m"}
    err = await run_failing("alertmanager.silence", params, [AlertmanagerActions(client)])
    assert (err.type, err.non_retryable) == (ACTION_REFUSED, True)
    assert "PLAYBOOK_BOT_ALERTMANAGER_URL" in err.message


async def test_credentials_in_the_url_stay_out_of_errors(client, fake_api, run_failing) -> None:
    url = fake_api.url("/status/400").replace("http://", "http://admin:hunter2@")
    err = await run_failing(
        "alertmanager.silence", {"matchers": ['a="b"'], "duration": "5m", "url": url}, [AlertmanagerActions(client)]
    )
    assert "hunter2" not in err.message


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"matchers": [], "duration": "5m"}, "matchers"),
        ({"matchers": ["service"], "duration": "5m"}, "bad matcher 'service'"),
        ({"matchers": ['service="api'], "duration": "5m"}, "unterminated quoted value"),
        ({"matchers": ['service=~"(api"'], "duration": "5m"}, "invalid regex"),
        # RE2 refuses what Python `re` accepts: refused here, before Alertmanager would 400
        ({"matchers": ['service=~"(?=api).*"'], "duration": "5m"}, "invalid regex: invalid perl operator"),
        ({"matchers": ['service=~"api++"'], "duration": "5m"}, "bad repetition operator"),
        ({"matchers": [r'service=~"\\Capi"'], "duration": "5m"}, "invalid escape sequence: \\C"),
        ({"matchers": ['env=~"(?U)x*"'], "duration": "5m"}, "must not match the empty string"),
        ({"matchers": ['env=~"(?U)(x|)"'], "duration": "5m"}, "must not match the empty string"),
        # a fine route matcher (^(?:a)|(b)$), but the silence API compiles the pattern alone too
        ({"matchers": ['env=~"a)|(b"'], "duration": "5m"}, "invalid regex: unexpected ): 'a)|(b'"),
        ({"matchers": ['service=""', 'env=~".*"'], "duration": "5m"}, "must not match the empty string"),
        ({"matchers": ['a="b"'], "duration": "0s"}, "duration must be positive"),
        ({"matchers": ['a="b"'], "duration": "30"}, "bad duration"),
        ({"matchers": ['a="b"'], "duration": "5m", "url": "am:9093"}, "http://"),
        ({"matchers": ['a="b"'], "duration": "5m", "silence_id": "x"}, "silence_id"),
    ],
)
async def test_bad_params(client, run_failing, params, problem) -> None:
    err = await run_failing("alertmanager.silence", params, [AlertmanagerActions(client, "http://127.0.0.1:9")])
    assert (err.type, err.non_retryable) == (INVALID_PARAMS, True)
    assert problem in err.message


async def test_expire_refuses_a_path_in_the_id(client, run_failing) -> None:
    err = await run_failing(
        "alertmanager.expire_silence", {"silence_id": "../status"}, [AlertmanagerActions(client, "http://127.0.0.1:9")]
    )
    assert err.type == INVALID_PARAMS
