"""Webhook, metrics, health and readiness, JSON logs, rate limits, security headers."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import pytest
from kit.admin import admin
from kit.device import SimDevice
from kit.fleet import BUNDLE_V1, kernex_yaml, sha
from kit.wait import wait_for
from prometheus_client.parser import text_string_to_metric_families

from kernex_server.logs import JsonFormatter

SECRET = "test-webhook-secret-made-in-the-test"


def push_payload(branch: str = "main") -> bytes:
    return json.dumps(
        {
            "ref": f"refs/heads/{branch}",
            "before": "0" * 40,
            "after": "1" * 40,
            "repository": {"full_name": "acme/fleet"},
        },
        separators=(",", ":"),
    ).encode()


def github_headers(body: bytes, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    # As GitHub does: HMAC-SHA256 of the exact body bytes, hex, prefixed "sha256=".
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "Content-Type": "application/json",
    }


def current_revision(server: Any) -> str | None:
    rev: str | None = server.admin_get("/v1/admin/status")["revision"]["current"]
    return rev


def test_github_push_reconciles_and_bad_signature_is_401(
    start_server: Any, fleet_repo: Any
) -> None:
    server = start_server(webhook_secret=SECRET)
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="hi"))
    new = fleet_repo.commit("greeting")
    assert current_revision(server) != new

    body = push_payload()
    forged = github_headers(body, secret="not-the-secret")
    bad = server.client.post("/v1/hooks/git", content=body, headers=forged)
    assert bad.status_code == 401
    tampered = server.client.post(
        "/v1/hooks/git", content=body.replace(b"main", b"mainx"), headers=github_headers(body)
    )
    assert tampered.status_code == 401
    assert current_revision(server) != new

    ping = b'{"zen":"Keep it logically awesome.","hook_id":1}'
    pinged = server.client.post("/v1/hooks/git", content=ping, headers=github_headers(ping, "ping"))
    assert pinged.status_code == 200
    assert pinged.json()["reconcile"] is False
    other = push_payload("feature")
    ignored = server.client.post("/v1/hooks/git", content=other, headers=github_headers(other))
    assert ignored.status_code == 200
    assert ignored.json()["reconcile"] is False
    assert current_revision(server) != new

    ok = server.client.post("/v1/hooks/git", content=body, headers=github_headers(body))
    assert ok.status_code == 202, ok.text
    assert ok.json() == {"reconcile": True, "event": "push", "ref": "refs/heads/main"}
    assert current_revision(server) == new  # no loop runs here: the pass ran after the answer

    hooks = server.admin_get("/v1/admin/audit?action=webhook")["entries"]
    assert [(e["actor"], e["result"]) for e in hooks] == [
        ("webhook:github", "ok"),
        ("webhook:github", "ok"),
        ("webhook:github", "ok"),
        ("webhook:github", "denied"),
        ("webhook:github", "denied"),
    ]
    assert hooks[-1]["detail"]["error"] == "bad signature"
    assert hooks[0]["detail"]["delivery"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def test_gitlab_token_wakes_the_reconcile_loop(start_server: Any, fleet_repo: Any) -> None:
    server = start_server(webhook_secret=SECRET, background=True)  # poll_interval is 1 h
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="from gitlab"))
    new = fleet_repo.commit("greeting")
    body = push_payload()
    headers = {"X-Gitlab-Event": "Push Hook", "Content-Type": "application/json"}
    wrong = server.client.post(
        "/v1/hooks/git", content=body, headers={**headers, "X-Gitlab-Token": "nope"}
    )
    assert wrong.status_code == 401
    ok = server.client.post(
        "/v1/hooks/git", content=body, headers={**headers, "X-Gitlab-Token": SECRET}
    )
    assert ok.status_code == 202
    wait_for("the webhook's fetch to deploy the new commit",
             lambda: current_revision(server) == new, 20)  # fmt: skip
    assert current_revision(server) == new
    unsigned = server.client.post("/v1/hooks/git", content=body)
    assert unsigned.status_code == 401


def test_webhook_without_a_secret_is_refused(server: Any) -> None:
    body = push_payload()
    answer = server.client.post("/v1/hooks/git", content=body, headers=github_headers(body))
    assert answer.status_code == 503
    assert "webhook_secret" in answer.json()["hint"]


def scrape(server: Any, **kw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = server.client.get("/metrics", **kw)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_requests(server: Any) -> None:
    before = scrape(server)
    device = SimDevice("dev-1")
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    assert server.client.get("/v1/devices/dev-1/manifest").status_code == 401  # unsigned
    stale = SimDevice("dev-1", key=device.key, created=int(time.time()) - 3600)
    assert stale.manifest(server.client).status_code == 401
    assert device.get(server.client, "/v1/devices/dev-2/manifest").status_code == 403
    assert device.manifest(server.client, wait=0).status_code == 200
    server.client.put(f"/v1/admin/bundles/{sha(BUNDLE_V1)}", content=BUNDLE_V1, headers=server.auth)
    assert device.get(server.client, f"/v1/bundles/{sha(BUNDLE_V1)}").status_code == 200
    part = device.get(server.client, f"/v1/bundles/{sha(BUNDLE_V1)}", headers={"Range": "bytes=5-"})
    assert part.status_code == 206
    device.status(
        server.client,
        {
            "phase": "healthy",
            "serial": 1,
            "revision": None,
            "bundles": {},
            "config_hash": None,
            "error": None,
            "log_tail": None,
            "agent_version": "t",
            "reported_at": None,
        },
    )
    server.reconcile()
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("kernex_device_requests_rejected_total", reason="missing") == 1
    assert moved("kernex_device_requests_rejected_total", reason="stale") == 1
    assert moved("kernex_device_requests_rejected_total", reason="forbidden") == 1
    route = "/v1/devices/{device_id}/manifest"
    assert moved("kernex_http_requests_total", route=route, method="GET", status="401") == 2
    assert moved("kernex_http_requests_total", route=route, method="GET", status="200") == 1
    assert moved("kernex_http_request_duration_seconds_count", route=route, method="GET") == 4
    assert moved("kernex_bundle_bytes_served_total") == len(BUNDLE_V1) * 2 - 5
    assert moved("kernex_reconciles_total", result="unchanged") == 1
    assert moved("kernex_reconcile_duration_seconds_count", result="unchanged") == 1
    assert value(after, "kernex_devices", state="accepted", phase="healthy") == 1
    assert value(after, "kernex_devices_online", online="true") == 1
    assert value(after, "kernex_manifest_long_polls_open") == 0


def test_long_polls_open_gauge_and_metrics_token(start_server: Any) -> None:
    server = start_server(metrics_token="scrape-me")
    assert server.client.get("/metrics").status_code == 401
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    etag = device.manifest(server.client).headers["etag"]

    async def poll_and_scrape() -> tuple[int, float]:
        import anyio
        import httpx

        transport = httpx.ASGITransport(app=server.client.app)
        path = "/v1/devices/dev-1/manifest"
        headers = {**device.headers("GET", path), "If-None-Match": etag}
        results: list[int] = []
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://kx") as client,
            anyio.create_task_group() as tg,
        ):

            async def poll() -> None:
                r = await client.get(path, params={"wait": "2"}, headers=headers)
                results.append(r.status_code)

            tg.start_soon(poll)
            gauge = "kernex_manifest_long_polls_open"
            with anyio.fail_after(10):  # until the long poll is waiting
                while server.kx.metrics.registry.get_sample_value(gauge) != 1:
                    await anyio.sleep(0.01)
            text = (await client.get("/metrics", headers=admin("scrape-me"))).text
        open_now = next(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "kernex_manifest_long_polls_open"
        )
        return results[0], open_now

    status, open_now = server.client.portal.call(poll_and_scrape)
    assert status == 304
    assert open_now == 1
    assert value(scrape(server, headers=admin("scrape-me")), "kernex_manifest_long_polls_open") == 0


def test_healthz_and_readyz_name_the_failing_check(start_server: Any) -> None:
    server = start_server()
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "git": "ok", "fleet": "ok", "disk": "ok"}
    server.kx.last_fetch_at = time.time() - 4 * server.kx.settings.poll_interval
    stale = server.client.get("/readyz")
    assert stale.status_code == 503
    assert stale.json()["failing"] == ["git"]
    assert "not fetched for" in stale.json()["checks"]["git"]

    full = start_server(min_free_bytes=2**62)
    answer = full.client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["failing"] == ["disk"]
    assert "min_free_bytes" in answer.json()["checks"]["disk"]


def test_logs_are_json_with_request_ids_and_no_secrets(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    enroll_token = server.enrollment_token()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    echoed = server.client.get(
        "/v1/admin/whoami", headers={**server.auth, "X-Request-ID": "ci-run-42.step:3"}
    )
    assert echoed.headers["x-request-id"] == "ci-run-42.step:3"
    made = server.client.get("/v1/admin/whoami", headers={"X-Request-ID": "bad id <x>"})
    generated = made.headers["x-request-id"]
    assert generated != "bad id <x>"
    assert len(generated) == 32
    device = SimDevice("dev-9")
    assert device.enroll(server.client, token=enroll_token).status_code == 201
    server.client.post("/v1/admin/reconcile", headers=server.auth)
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name.startswith("kernex")]
    text = "\n".join(lines)
    assert server.token not in text
    assert enroll_token not in text
    parsed = [json.loads(line) for line in lines]
    access = [p for p in parsed if p["logger"] == "kernex.server.http"]
    assert {"ci-run-42.step:3", generated} <= {p["request_id"] for p in access}
    first = next(p for p in access if p["request_id"] == "ci-run-42.step:3")
    assert first["route"] == "/v1/admin/whoami"
    assert first["status"] == 200
    assert "duration_ms" in first


def test_rate_limits_per_token_and_per_device(start_server: Any) -> None:
    server = start_server(token_rate=0.01, token_burst=3, device_rate=0.01, device_burst=2)
    other = server.kx.store.create_api_token("other", "viewer", now=time.time())
    codes = [
        server.client.get("/v1/admin/whoami", headers=server.auth).status_code for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    limited = server.client.get("/v1/admin/whoami", headers=server.auth)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert server.client.get("/v1/admin/whoami", headers=admin(other)).status_code == 200

    device = SimDevice("dev-1")
    neighbour = SimDevice("dev-2")
    token = server.kx.store.create_enrollment_token(
        "e", now=time.time(), expires_at=None, max_uses=None, created_by="t"
    )[0]
    device.enroll(server.client, token=token)
    neighbour.enroll(server.client, token=token)
    got = [device.manifest(server.client).status_code for _ in range(3)]
    assert got == [200, 200, 429]
    assert neighbour.manifest(server.client).status_code == 200


def test_security_headers(server: Any) -> None:
    answer = server.client.get("/v1/admin/whoami", headers=server.auth)
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    manifest = device.manifest(server.client)
    assert manifest.headers["cache-control"] == "no-cache"  # the manifest keeps its own
    assert manifest.headers["x-content-type-options"] == "nosniff"
