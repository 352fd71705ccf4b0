"""CORS: off by default; when origins are set, only the admin API answers a browser's
preflight, and only for those origins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kernex_server.errors import ServerSetupError
from kernex_server.settings import Settings

DASHBOARD = "https://ops.example.com"


def preflight(server: Any, path: str, origin: str, method: str = "GET") -> Any:
    return server.client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization",
        },
    )


def test_cors_is_off_by_default(server: Any) -> None:
    answer = preflight(server, "/v1/admin/devices", DASHBOARD)
    assert "access-control-allow-origin" not in answer.headers
    got = server.client.get("/v1/admin/devices", headers={**server.auth, "Origin": DASHBOARD})
    assert got.status_code == 200
    assert "access-control-allow-origin" not in got.headers


def test_an_allowed_origin_may_call_the_admin_api_and_nothing_else(start_server: Any) -> None:
    server = start_server(cors_origins=[DASHBOARD, "http://localhost:5173"])

    answer = preflight(server, "/v1/admin/devices", DASHBOARD, method="POST")
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == DASHBOARD
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in answer.headers

    got = server.client.get("/v1/admin/devices", headers={**server.auth, "Origin": DASHBOARD})
    assert got.status_code == 200
    assert got.headers["access-control-allow-origin"] == DASHBOARD
    assert "x-request-id" in got.headers["access-control-expose-headers"].lower()

    # another origin: the preflight fails and no header lets the browser read anything
    other = preflight(server, "/v1/admin/devices", "https://evil.example.net")
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    got = server.client.get(
        "/v1/admin/devices", headers={**server.auth, "Origin": "https://evil.example.net"}
    )
    assert "access-control-allow-origin" not in got.headers

    # device routes and the rest never speak CORS, even to an allowed origin
    for path in ("/v1/manifest", "/v1/enroll", "/v1/status", "/metrics", "/healthz"):
        answer = preflight(server, path, DASHBOARD, method="POST")
        assert "access-control-allow-origin" not in answer.headers, path
    assert "access-control-allow-origin" not in preflight(server, "/v1/adminx", DASHBOARD).headers


@pytest.mark.parametrize(
    ("origins", "message"),
    [
        (["*"], "may not contain '*'"),
        (["https://ops.example.com/"], "is not an origin"),
        (["ops.example.com"], "is not an origin"),
    ],
)
def test_bad_origins_are_refused_with_a_hint(
    start_server: Any, origins: list[str], message: str
) -> None:
    with pytest.raises(ServerSetupError, match=message) as caught:
        start_server(cors_origins=origins)
    assert caught.value.hint


def test_cors_origins_must_be_a_list_of_strings(tmp_path: Path) -> None:
    with pytest.raises(ServerSetupError, match="must be a list of strings"):
        Settings.from_mapping({"data_dir": tmp_path, "cors_origins": "https://a.example"})
    settings = Settings.from_mapping({"data_dir": tmp_path, "cors_origins": [DASHBOARD]})
    assert settings.cors_origins == (DASHBOARD,)
