"""Attacks on the server from the network, from admitted devices and from low-role tokens.

Each test names the attack; every refusal also checks that nothing was stored.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kit.device import SimDevice


def enrolled(server: Any, device_id: str = "dev-1") -> SimDevice:
    device = SimDevice(device_id)
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    return device


def signed_enroll(server: Any, device: SimDevice, body: bytes) -> Any:
    headers = {**device.headers("POST", "/v1/enroll", body), "Content-Type": "application/json"}
    return server.client.post("/v1/enroll", content=body, headers=headers)


def test_deeply_nested_json_is_400_not_500(server: Any) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    response = server.client.post("/v1/enroll", content=body)
    assert response.status_code == 400, response.text
    assert "JSON" in response.json()["error"]
    device = enrolled(server)
    path = "/v1/devices/dev-1/status"
    nested = b'{"phase": "healthy", "bundles": ' + b'{"a":' * 40_000 + b"1" + b"}" * 40_001
    response = server.client.post(
        path, content=nested, headers=device.headers("POST", path, nested)
    )
    assert response.status_code in (400, 422), response.text
    server.kx.statuses.flush()
    assert server.kx.store.status_history("dev-1") == []


def test_strangers_cannot_evict_a_devices_nonces_to_replay_its_requests(server: Any) -> None:
    """Enrollment is open to any key, and pending devices sign requests too: their nonces
    must not push an admitted device's nonces out of the cache (which would re-open the
    replay window for a captured status report)."""
    device = enrolled(server)
    server.kx.device_auth.nonces.max_entries = 20  # the real bound is larger; the logic is one
    server.kx.enroller.limiter.rate = 0  # many enrollments from one address: no limit here
    path = "/v1/devices/dev-1/status"
    body = json.dumps({"phase": "failed", "error": "captured"}).encode()
    captured = device.headers("POST", path, body)
    assert server.client.post(path, content=body, headers=captured).status_code == 204
    stranger = SimDevice("stranger")
    for _ in range(30):  # pending: each request is verified (nonce kept), then refused 403
        assert stranger.enroll(server.client).status_code in (200, 201)
        assert stranger.manifest(server.client).status_code == 403
    replay = server.client.post(path, content=body, headers=captured)
    assert replay.status_code == 401, replay.text
    server.kx.statuses.flush()  # reports are written in batches
    assert len(server.kx.store.status_history("dev-1")) == 1


def test_an_admitted_device_cannot_evict_other_devices_nonces(server: Any) -> None:
    victim = enrolled(server, "victim")
    flooder = enrolled(server, "flooder")
    server.kx.device_auth.nonces.max_entries = 20
    server.kx.device_auth.nonces.max_per_key = 10
    server.kx.device_auth.limiter.rate = 0.0  # the flood is about nonces, not the rate limit
    path = "/v1/devices/victim/status"
    body = json.dumps({"phase": "healthy"}).encode()
    captured = victim.headers("POST", path, body)
    assert server.client.post(path, content=body, headers=captured).status_code == 204
    answers = {flooder.manifest(server.client).status_code for _ in range(30)}
    assert answers == {200, 401}  # over its share the flooder is refused, not the cache cut
    assert server.client.post(path, content=body, headers=captured).status_code == 401
    assert victim.manifest(server.client).status_code == 200
    server.kx.statuses.flush()  # reports are written in batches
    assert len(server.kx.store.status_history("victim")) == 1


def enroll_with(server: Any, device_id: str, **fields: Any) -> Any:
    device = SimDevice(device_id)
    body = json.loads(device.enroll_body(server.enrollment_token()))
    body.update(fields)
    return signed_enroll(server, device, json.dumps(body).encode())


def test_enrollment_labels_and_agent_version_are_checked(server: Any) -> None:
    """Labels feed group selectors and show up in tables and logs: same rules as the
    fleet repository, a bounded count, no control characters in agent_version."""
    bad = [
        {"labels": {"ring": "canary\nlevel=error forged log line"}},
        {"labels": {"ring\n": "canary"}},
        {"labels": {"ring": "x" * 64}},
        {"labels": {f"k{i}": "v" for i in range(65)}},
        {"agent_version": "1.0\r\nforged"},
        {"agent_version": "1" * 65},
    ]
    for n, fields in enumerate(bad):
        response = enroll_with(server, f"bad-{n}", **fields)
        assert response.status_code == 400, (fields, response.text)
        assert server.kx.store.get_device(f"bad-{n}") is None
    ok = enroll_with(server, "good", labels={"example.com/ring": "canary"}, agent_version="1.2.3")
    assert ok.status_code == 201, ok.text


def test_identifiers_with_a_trailing_newline_are_refused() -> None:
    """``$`` matches before a final newline: every identifier pattern must end at ``\\Z``."""
    import re

    from kernex_core import formats
    from kernex_core.fleet import selector
    from kernex_core.protocol import DEVICE_ID_PATTERN

    assert re.match(DEVICE_ID_PATTERN, "dev-1\n") is None
    assert formats.SHA256_RE.match("a" * 64 + "\n") is None
    assert formats.NAME_RE.match("app\n") is None
    assert formats.VERSION_RE.match("1.0\n") is None
    assert selector.LABEL_KEY_RE.match("ring\n") is None
    assert selector.LABEL_VALUE_RE.match("canary\n") is None


def test_fleet_url_cannot_run_commands_through_git(
    tmp_path: Any, monkeypatch: Any, fleet_repo: Any
) -> None:
    """A repo URL is handed to git: it must never be read as an option, and transports
    that run commands (ext::) stay off even where the host's Git config allows them."""
    import pytest

    from kernex_git import GitError
    from kernex_server.git_source import GitFleetSource

    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # a permissive host configuration
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    marker = tmp_path / "pwned"
    for url in (
        f"ext::sh -c touch% {marker}% #://",
        f"--upload-pack=touch {marker};: ://x",
    ):
        source = GitFleetSource(url, "main", clone_dir=tmp_path / f"clone{len(url)}")
        with pytest.raises(GitError):
            source.sync()
        assert not marker.exists(), url
    ok = GitFleetSource(f"file://{fleet_repo.path}", "main", clone_dir=tmp_path / "ok")
    ok.sync()
    assert ok.head() == fleet_repo.head()


def test_two_enrollments_cannot_both_take_the_last_use_of_a_token(server: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from kernex_core.protocol import EnrollRequest
    from kernex_server.errors import EnrollmentError

    token = server.enrollment_token(max_uses=1)
    devices = [SimDevice(f"racer-{i}") for i in range(8)]

    def enroll(device: SimDevice) -> str:
        request = EnrollRequest(device.device_id, device.public_pem(), {}, "t", token)
        try:
            outcome = server.kx.enroller.enroll(
                request, device.key.public_key(), declared_fingerprint=None, now=time.time()
            )
        except EnrollmentError as exc:
            return f"refused {exc.status}"
        return outcome.device.state

    with ThreadPoolExecutor(len(devices)) as pool:
        states = list(pool.map(enroll, devices))
    assert states.count("accepted") == 1, states
    assert set(states) <= {"accepted", "refused 403", "refused 409"}, states
    (row,) = server.admin_get("/v1/admin/enrollment-tokens")["tokens"]
    assert row["uses"] == 1
