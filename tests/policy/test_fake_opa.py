"""The fake OPA answers as OPA's REST API does (status, body shape, token authentication, the
deployment's authorization) and only from its fixtures, so the OPA backend tests mean something."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.policy.fake_opa import FakeOpa, FixtureAnswers, identity
from tests.policy.oracle import BASE_INPUT, OPA_API_TOKEN, SYSTEM_AUTHZ, ApiRequest, digest, rule_path

DECISION = "playbook/authz/decision"
ANSWER = {"allow": True, "reasons": ["from the fixture"]}
NO_INPUT_ANSWER = {"allow": False, "reasons": ["no input"]}
MISSING_INPUT_WARNING = {"code": "api_usage_warning", "message": "'input' key missing from the request"}
UNAUTHORIZED = {"code": "unauthorized", "message": "request rejected by administrative policy"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpa]:
    table = {(DECISION, digest(BASE_INPUT)): ANSWER, (DECISION, digest(None)): NO_INPUT_ANSWER}
    fake = FakeOpa(FixtureAnswers(table))
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: FakeOpa) -> Iterator[FakeOpa]:
    server.reset()
    server.token = server.revision = None
    server.decision_logs = True
    yield server
    server.token = None


async def post(fake: FakeOpa, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        return await client.post(f"/v1/data/{path}", **kwargs)


async def test_the_fixture_is_the_result_with_a_decision_id(fake: FakeOpa) -> None:
    response = await post(fake, DECISION, json={"input": BASE_INPUT})

    body = response.json()
    assert (response.status_code, body["result"]) == (200, ANSWER)
    assert set(body) == {"result", "decision_id"}
    assert fake.requests[-1]["decision_id"] == body["decision_id"]


async def test_the_fixture_is_found_whatever_the_key_order(fake: FakeOpa) -> None:
    shuffled = dict(reversed(list(BASE_INPUT.items())))

    response = await post(fake, DECISION, json={"input": shuffled})

    assert response.json()["result"] == ANSWER


async def test_an_input_without_a_fixture_is_an_evaluation_error_and_recorded(fake: FakeOpa) -> None:
    response = await post(fake, DECISION, json={"input": {**BASE_INPUT, "now": "2031-01-01T00:00:00Z"}})

    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert response.json()["message"] == "error(s) occurred while evaluating query"
    assert len(fake.unmatched) == 1 and "no decision fixture for data.playbook.authz.decision" in fake.unmatched[0]


async def test_an_undefined_document_has_no_result(fake: FakeOpa) -> None:
    response = await post(fake, "playbook/authz/nothing_here", json={"input": {}})

    assert response.status_code == 200
    assert set(response.json()) == {"decision_id"}


async def test_no_decision_id_without_decision_logs(fake: FakeOpa) -> None:
    fake.decision_logs = False

    response = await post(fake, DECISION, json={"input": BASE_INPUT})

    assert response.json() == {"result": ANSWER}


@pytest.mark.parametrize("body", [b"", b"{}", b'{"input": null}'], ids=["empty body", "no input key", "null input"])
async def test_a_request_without_input_is_evaluated_without_it_and_warned(fake: FakeOpa, body: bytes) -> None:
    response = await post(fake, DECISION, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 200
    assert response.json()["result"] == NO_INPUT_ANSWER
    assert response.json()["warning"] == MISSING_INPUT_WARNING


async def test_bad_json_is_a_400_invalid_parameter(fake: FakeOpa) -> None:
    response = await post(fake, DECISION, content=b'{"input": ', headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameter"
    assert response.json()["message"].startswith("body contains malformed input document")


async def test_a_body_that_is_not_an_object_is_a_400(fake: FakeOpa) -> None:
    response = await post(fake, DECISION, json=[BASE_INPUT])

    assert (response.status_code, response.json()["code"]) == (400, "invalid_parameter")


async def test_provenance_on_request(fake: FakeOpa) -> None:
    plain = await post(fake, DECISION, json={"input": BASE_INPUT})
    files = await post(fake, f"{DECISION}?provenance=true", json={"input": BASE_INPUT})
    fake.revision = "rev-7"
    bundle = await post(fake, f"{DECISION}?provenance", json={"input": BASE_INPUT})

    assert "provenance" not in plain.json()
    assert files.json()["provenance"]["version"] and "bundles" not in files.json()["provenance"]
    assert bundle.json()["provenance"]["bundles"] == {"playbook": {"revision": "rev-7"}}


async def test_health(fake: FakeOpa) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.get("/health")

    assert (response.status_code, response.json()) == (200, {})


# --- token authentication and the deployment's authorization ------------------------------


async def send(fake: FakeOpa, request: ApiRequest) -> httpx.Response:
    headers = {"authorization": request.authorization} if request.authorization is not None else {}
    kwargs: dict[str, Any] = {}
    if request.body is not None:
        kwargs["json"] = request.body
    async with httpx.AsyncClient(base_url=fake.url) as client:
        return await client.request(request.method, request.target, headers=headers, **kwargs)


@pytest.mark.parametrize("request_", SYSTEM_AUTHZ, ids=[r.name for r in SYSTEM_AUTHZ])
async def test_with_a_token_only_what_the_deployment_allows_passes(fake: FakeOpa, request_: ApiRequest) -> None:
    fake.token = OPA_API_TOKEN

    response = await send(fake, request_)

    if request_.allowed:
        assert response.status_code != 401, response.text
    else:
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


async def test_the_token_lets_a_decision_through(fake: FakeOpa) -> None:
    fake.token = OPA_API_TOKEN
    headers = {"authorization": f"Bearer {OPA_API_TOKEN}"}

    response = await post(fake, DECISION, json={"input": BASE_INPUT}, headers=headers)

    assert (response.status_code, response.json()["result"]) == (200, ANSWER)


async def test_without_a_token_configured_anything_passes(fake: FakeOpa) -> None:
    """Positive control for the table above: the 401s come from the authorization, not the route."""
    refused = [r for r in SYSTEM_AUTHZ if not r.allowed]

    statuses = {(await send(fake, request)).status_code for request in refused}

    assert 401 not in statuses


async def test_with_authorization_bad_json_is_a_400_before_the_token_is_checked(fake: FakeOpa) -> None:
    """OPA's authorizer parses a data POST's body into its input before it decides."""
    fake.token = OPA_API_TOKEN

    response = await post(fake, DECISION, content=b"{", headers={"content-type": "application/json"})

    assert (response.status_code, response.json()["code"]) == (400, "invalid_parameter")


async def test_with_authorization_a_body_that_is_not_an_object_has_no_input(fake: FakeOpa) -> None:
    fake.token = OPA_API_TOKEN

    response = await post(fake, DECISION, json=[1], headers={"authorization": f"Bearer {OPA_API_TOKEN}"})

    assert response.status_code == 200
    assert response.json()["warning"] == MISSING_INPUT_WARNING


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("Bearer \t abc", "abc"),
        ("bearer abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
        ("Basic abc", None),
        (None, None),
        ("Bearer " + "x" * 8200, None),  # OPA ignores headers over 8192 bytes
    ],
)
def test_identity_is_taken_as_opa_takes_it(header: str | None, expected: str | None) -> None:
    assert identity(header) == expected


def test_rule_paths_are_opas_rest_paths() -> None:
    assert rule_path("cancel") == "playbook/authz/cancel"
