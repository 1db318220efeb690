"""The fixture server answers like OPA's REST data API, so the OPA backend tests mean something."""

from __future__ import annotations

import httpx

from tests.policy.conftest import BASE_INPUT
from tests.policy.fake_opa import FakeOpa


async def test_result_and_decision_id(opa: FakeOpa) -> None:
    async with httpx.AsyncClient(base_url=opa.url) as client:
        response = await client.post("/v1/data/playbook/authz/decision", json={"input": BASE_INPUT})

    body = response.json()
    assert response.status_code == 200
    assert body["result"]["allow"] is True
    assert isinstance(body["decision_id"], str)


async def test_undefined_document_is_an_empty_object(opa: FakeOpa) -> None:
    async with httpx.AsyncClient(base_url=opa.url) as client:
        response = await client.post("/v1/data/playbook/authz/nothing_here", json={"input": {}})

    assert response.status_code == 200
    assert set(response.json()) == {"decision_id"}


async def test_bad_json_is_a_400_invalid_parameter(opa: FakeOpa) -> None:
    async with httpx.AsyncClient(base_url=opa.url) as client:
        response = await client.post(
            "/v1/data/playbook/authz/decision", content=b'{"input": ', headers={"content-type": "application/json"}
        )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameter"
    assert response.json()["message"].startswith("body contains malformed input document")


async def test_health(opa: FakeOpa) -> None:
    async with httpx.AsyncClient(base_url=opa.url) as client:
        response = await client.get("/health")

    assert (response.status_code, response.json()) == (200, {})
