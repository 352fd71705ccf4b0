"""Numbers from the outside are bounded: path ids beyond what the database stores are 404,
booleans are not numbers. Real app, SQLite and PostgreSQL (whose INTEGER is 32-bit)."""

from __future__ import annotations

from typing import Any

import pytest

BIG = ["2147483648", "9223372036854775808", "99999999999999999999999999"]


@pytest.mark.parametrize("raw", BIG)
def test_ids_beyond_the_database_are_404_not_500(server: Any, raw: str) -> None:
    cases = [
        ("DELETE", f"/v1/admin/tokens/{raw}"),
        ("DELETE", f"/v1/admin/enrollment-tokens/{raw}"),
        ("GET", f"/v1/admin/rollouts/{raw}"),
        ("POST", f"/v1/admin/rollouts/{raw}/pause"),
    ]
    for method, path in cases:
        answer = server.client.request(method, path, headers=server.auth)
        assert answer.status_code == 404, (method, path, answer.text)
        assert raw in answer.json()["error"]


def test_the_largest_id_the_database_holds_is_an_ordinary_404(server: Any) -> None:
    answer = server.client.delete("/v1/admin/tokens/2147483647", headers=server.auth)
    assert answer.status_code == 404, answer.text


@pytest.mark.parametrize("field", ["expires_in", "max_uses"])
@pytest.mark.parametrize("value", [True, False])
def test_enrollment_token_numbers_are_not_booleans(server: Any, field: str, value: bool) -> None:
    answer = server.client.post(
        "/v1/admin/enrollment-tokens", json={field: value}, headers=server.auth
    )
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["error"]
    assert server.admin_get("/v1/admin/enrollment-tokens")["tokens"] == []


@pytest.mark.parametrize("path", ["/v1/admin/enrollment-tokens", "/v1/admin/tokens"])
def test_numbers_too_large_for_the_database_are_400(server: Any, path: str) -> None:
    body: dict[str, Any] = {"name": "huge", "role": "viewer", "expires_in": 10**400}
    answer = server.client.post(path, json=body, headers=server.auth)
    assert answer.status_code == 400, answer.text
    if path.startswith("/v1/admin/enrollment"):
        answer = server.client.post(path, json={"max_uses": 2**31}, headers=server.auth)
        assert answer.status_code == 400, answer.text


def test_server_info_is_public_and_signs_only_a_bounded_challenge(server: Any) -> None:
    plain = server.client.get("/v1/server-info")
    assert plain.status_code == 200
    assert "proof" not in plain.json()
    for bad in ["short", "x" * 129, "has space in it 123", "a" * 20 + "\n"]:
        answer = server.client.get("/v1/server-info", params={"challenge": bad})
        assert answer.status_code == 400, bad
    good = server.client.get("/v1/server-info", params={"challenge": "c" * 32})
    assert good.json()["proof"]["payloadType"] == "application/vnd.kernex.server-info+json"
    assert good.headers["cache-control"] == "no-store"
