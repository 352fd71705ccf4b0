"""The admin plane: every route's auth kind, tokens and roles, audit log, fleet status."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from kit.admin import admin
from kit.device import SimDevice
from starlette.routing import Route

from kernex_server.api import handlers
from kernex_server.auth import Role, auth_kind
from kernex_server.tokens import hash_token

PARAM_VALUES = {
    "device_id": "dev-none",
    "token_id": "999999",
    "rollout_id": "999999",
    "sha256": "0" * 64,
}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PARAM_VALUES.get(m.group(1), "x"), path)


def app_routes(server: Any) -> list[Route]:
    routes = server.client.app.routes
    assert all(isinstance(r, Route) for r in routes)
    return list(routes)


def test_every_route_declares_how_its_caller_is_authenticated(server: Any) -> None:
    kinds = {}
    for route in app_routes(server):
        for method, endpoint in handlers(route).items():
            kind = auth_kind(endpoint)
            assert kind is not None, f"{method} {route.path} declares no role or auth kind"
            kinds[route.path] = kind
            if route.path.startswith("/v1/admin/"):
                assert kind.startswith("role:"), route.path
    assert kinds["/v1/hooks/git"] == "webhook"
    assert kinds["/metrics"] == "public"
    assert kinds["/openapi.json"] == "public"
    assert kinds["/v1/devices/{device_id}/manifest"] == "device"
    assert kinds["/v1/admin/tokens"] == "role:admin"
    assert kinds["/v1/admin/devices/{device_id}/accept"] == "role:admin"


def test_every_admin_route_refuses_no_token_and_lower_roles(start_server: Any) -> None:
    # one anonymous request per route: more than the failed-authentication burst allows
    server = start_server(auth_failure_rate=0.0)
    now = time.time()
    tokens = {
        Role.VIEWER: server.kx.store.create_api_token("walk-viewer", "viewer", now=now),
        Role.OPERATOR: server.kx.store.create_api_token("walk-operator", "operator", now=now),
    }
    server.kx.admin_auth.failures.rate = 0  # one 401 per route: no per-address limit here
    checked = 0
    for route in app_routes(server):
        path = concrete(route.path)
        for method, endpoint in sorted(handlers(route).items()):
            role = getattr(endpoint, "required_role", None)
            if role is None:
                continue
            anonymous = server.client.request(method, path)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            for lower, token in tokens.items():
                answer = server.client.request(method, path, headers=admin(token))
                if lower < role:
                    assert answer.status_code == 403, (method, path, lower, answer.text)
                else:
                    assert answer.status_code != 403, (method, path, lower)
            checked += 1
    assert checked >= 24  # with the six rollout routes
    denied = server.admin_get("/v1/admin/audit?action=auth&limit=1000")["entries"]
    assert {e["result"] for e in denied} == {"denied"}
    assert {e["actor"] for e in denied} >= {"anonymous", "walk-viewer", "walk-operator"}
    assert any(e["detail"]["status"] == 403 for e in denied)


def test_tokens_are_created_once_hashed_listed_and_revoked(server: Any) -> None:
    made = server.client.post(
        "/v1/admin/tokens",
        json={"name": "ci", "role": "operator", "expires_in": 3600},
        headers=server.auth,
    )
    assert made.status_code == 201, made.text
    body = made.json()
    secret = body["token"]
    assert secret.startswith("kx_")
    assert len(secret) >= 3 + 43
    assert body["role"] == "operator"
    assert body["revoked"] is False
    assert body["created_by"] == server.admin_get("/v1/admin/whoami")["name"]
    assert body["expires_at"].endswith("Z")
    listed = server.admin_get("/v1/admin/tokens")["tokens"]
    ci = next(t for t in listed if t["name"] == "ci")
    assert "token" not in ci
    assert secret not in str(listed)
    assert ci["last_used_at"] is None
    assert server.client.get("/v1/admin/whoami", headers=admin(secret)).json() == {
        "name": "ci",
        "role": "operator",
    }
    used = next(t for t in server.admin_get("/v1/admin/tokens")["tokens"] if t["name"] == "ci")
    assert used["last_used_at"] is not None
    with server.kx.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT token_hash FROM api_tokens")]
    assert hash_token(secret) in stored
    assert secret not in stored

    again = server.client.post(
        "/v1/admin/tokens", json={"name": "ci", "role": "viewer"}, headers=server.auth
    )
    assert again.status_code == 409
    bad_role = server.client.post(
        "/v1/admin/tokens", json={"name": "x", "role": "root"}, headers=server.auth
    )
    assert bad_role.status_code == 400
    assert "viewer, operator, admin" in bad_role.json()["error"]

    revoked = server.client.delete(f"/v1/admin/tokens/{body['id']}", headers=server.auth)
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    assert server.client.get("/v1/admin/whoami", headers=admin(secret)).status_code == 401
    assert server.client.delete("/v1/admin/tokens/424242", headers=server.auth).status_code == 404
    me = next(
        t for t in server.admin_get("/v1/admin/tokens")["tokens"] if t["name"].startswith("test-")
    )
    itself = server.client.delete(f"/v1/admin/tokens/{me['id']}", headers=server.auth)
    assert itself.status_code == 409
    assert server.admin_get("/v1/admin/whoami")["role"] == "admin"

    entries = server.admin_get("/v1/admin/audit?target=ci")["entries"]
    assert [(e["action"], e["result"]) for e in entries] == [
        ("token.revoke", "ok"),
        ("token.create", "error"),
        ("token.create", "ok"),
    ]
    assert entries[2]["detail"]["role"] == "operator"
    assert entries[1]["detail"]["status"] == 409
    assert all(e["address"] == "testclient" for e in entries)
    assert secret not in str(server.admin_get("/v1/admin/audit?limit=1000"))


def test_admission_acts_enrollment_and_reconcile_are_audited(server: Any, fleet_repo: Any) -> None:
    token = server.enrollment_token(name="line-3")
    first = SimDevice("dev-1")
    assert first.enroll(server.client, token=token).json()["state"] == "accepted"
    SimDevice("dev-2").enroll(server.client)
    server.admin_post("/v1/admin/devices/dev-2/accept")
    server.admin_post("/v1/admin/devices/dev-1/revoke")
    again = server.client.post("/v1/admin/devices/dev-1/accept", headers=server.auth)
    assert again.status_code == 409
    fleet_repo.write("kernex.yaml", "apiVersion: kernex/v1\nname: broken\nbogus: 1\n")
    bad = fleet_repo.commit("break it")
    server.reconcile()

    entries = server.admin_get("/v1/admin/audit")["entries"]
    acts = [(e["actor"].split(":")[0], e["action"], e["target"], e["result"]) for e in entries]
    assert ("device", "device.enroll", "dev-1", "ok") in acts
    assert ("device", "device.enroll", "dev-2", "ok") in acts
    accepted = next(e for e in entries if e["action"] == "device.accept" and e["result"] == "ok")
    assert accepted["target"] == "dev-2"
    assert accepted["actor"].startswith("test-")
    revoke = next(e for e in entries if e["action"] == "device.revoke")
    assert revoke["detail"] == {"from": "accepted", "to": "revoked", "status": 200}
    refused = next(e for e in entries if e["action"] == "device.accept" and e["target"] == "dev-1")
    assert refused["result"] == "error"
    assert refused["detail"]["status"] == 409
    enroll = next(e for e in entries if e["target"] == "dev-1" and e["action"] == "device.enroll")
    assert enroll["detail"]["admitted_by"] == "token:line-3"
    assert token not in str(entries)
    invalid = next(e for e in entries if e["action"] == "reconcile" and e["target"] == bad)
    assert invalid["actor"] == "reconciler"
    assert invalid["result"] == "error"
    assert invalid["detail"]["state"] == "invalid"
    assert invalid["detail"]["error_count"] >= 1
    deployed = [e for e in entries if e["action"] == "reconcile" and e["result"] == "ok"]
    assert deployed
    assert deployed[-1]["detail"]["state"] == "deployed"

    only_dev2 = server.admin_get("/v1/admin/audit?target=dev-2")["entries"]
    assert {e["target"] for e in only_dev2} == {"dev-2"}
    by_reconciler = server.admin_get("/v1/admin/audit?actor=reconciler")["entries"]
    assert by_reconciler
    assert {e["actor"] for e in by_reconciler} == {"reconciler"}
    assert len(server.admin_get("/v1/admin/audit?limit=2")["entries"]) == 2
    assert server.admin_get("/v1/admin/audit?since=1h")["entries"]
    assert server.admin_get("/v1/admin/audit?until=2000-01-01T00:00:00Z")["entries"] == []
    future = server.admin_get("/v1/admin/audit?since=2100-01-01T00:00:00Z")["entries"]
    assert future == []
    for bad_query in ("since=yesterday", "limit=0", "limit=1001"):
        answer = server.client.get(f"/v1/admin/audit?{bad_query}", headers=server.auth)
        assert answer.status_code == 400, bad_query


def test_audit_is_append_only_through_the_api(server: Any) -> None:
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        answer = server.client.request(method, "/v1/admin/audit", headers=server.auth)
        assert answer.status_code == 405, method
    assert not [r for r in app_routes(server) if r.path.startswith("/v1/admin/audit/")]


def _report(phase: str, serial: int | None) -> dict[str, Any]:
    return {
        "phase": phase,
        "serial": serial,
        "revision": None,
        "bundles": {},
        "config_hash": None,
        "error": None,
        "log_tail": None,
        "agent_version": "test-1",
        "reported_at": "2026-11-22T02:05:37Z",
    }


def test_status_and_device_filters(server: Any, fleet_repo: Any) -> None:
    token = server.enrollment_token()
    healthy = SimDevice("dev-1", labels={"ring": "canary"})
    failed = SimDevice("dev-2", labels={"ring": "main"})
    for device in (healthy, failed):
        assert device.enroll(server.client, token=token).status_code == 201
    SimDevice("dev-3").enroll(server.client)  # pending
    assert healthy.status(server.client, _report("healthy", 1)).status_code == 204
    assert failed.status(server.client, _report("failed", 0)).status_code == 204
    server.kx.store.record_blob("a" * 64, 3, now=time.time(), by="t")

    status = server.admin_get("/v1/admin/status")
    head = fleet_repo.head()
    assert status["revision"]["current"] == head
    assert status["revision"]["deployed"] == head
    assert status["revision"]["last_result"] == "ok"
    assert status["revision"]["errors"] == []
    assert status["revision"]["forced"] is False
    assert status["revision"]["last_reconcile_at"].endswith("Z")
    assert status["devices"] == {
        "total": 3,
        "online": 2,
        "offline": 0,
        "pending": 1,
        "by_phase": {"failed": 1, "healthy": 1},
        "out_of_sync": 1,
    }
    assert status["rollouts"] == {"active": 0, "halted": 0}
    assert status["bundles"] == 1

    def ids(query: str) -> list[str]:
        return [d["id"] for d in server.admin_get(f"/v1/admin/devices?{query}")["devices"]]

    assert ids("state=pending") == ["dev-3"]
    assert ids("phase=failed") == ["dev-2"]
    assert ids("label=ring=canary") == ["dev-1"]
    assert ids("label=ring=canary&label=ring=main") == []
    assert ids("out_of_sync=true") == ["dev-2"]
    assert ids("online=true&state=accepted") == ["dev-1", "dev-2"]
    bad = server.client.get("/v1/admin/devices?online=maybe", headers=server.auth)
    assert bad.status_code == 400
    assert server.client.get("/v1/admin/devices?label=ring", headers=server.auth).status_code == 400

    fleet_repo.write("kernex.yaml", "apiVersion: kernex/v1\nname: broken\nbogus: 1\n")
    bad_commit = fleet_repo.commit("break it")
    server.reconcile()
    broken = server.admin_get("/v1/admin/status")["revision"]
    assert broken["current"] == bad_commit
    assert broken["deployed"] == head
    assert broken["last_result"] == "invalid"
    assert broken["errors"]
    assert "bogus" in str(broken["errors"])
    assert broken["last_error"]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_lower_roles_cannot_admit_devices(server: Any, role: str) -> None:
    secret = server.kx.store.create_api_token(f"r-{role}", role, now=time.time())
    SimDevice("dev-1").enroll(server.client)
    answer = server.client.post("/v1/admin/devices/dev-1/accept", headers=admin(secret))
    assert answer.status_code == 403
    assert "needs admin" in answer.json()["error"]
    assert server.kx.store.get_device("dev-1").state == "pending"


def test_openapi_describes_every_route_with_its_methods(server: Any) -> None:
    answer = server.client.get("/openapi.json")
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    expected: dict[str, set[str]] = {}
    for route in app_routes(server):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        assert path in doc["paths"], path
        methods = {m.lower(): e for m, e in handlers(route).items()}
        expected.setdefault(path, set()).update(methods)
        for method, endpoint in methods.items():
            op = doc["paths"][path][method]
            assert op["x-kernex-auth"] == auth_kind(endpoint)
            assert op["responses"], (method, path)
            refs = re.findall(r"#/components/schemas/(\w+)", json.dumps(op))
            assert all(name in schemas for name in refs), (method, path, refs)
    assert {p: set(ops) for p, ops in doc["paths"].items()} == expected
    tokens = doc["paths"]["/v1/admin/tokens"]["post"]
    assert tokens["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TokenCreate"
    }
    assert tokens["security"] == [{"bearer": []}]
    assert doc["paths"]["/v1/hooks/git"]["post"]["security"] == [
        {"githubSignature": []},
        {"gitlabToken": []},
    ]


def test_a_wrong_method_is_refused_naming_every_method_of_the_path(server: Any) -> None:
    answer = server.client.patch("/v1/admin/tokens", headers=server.auth)
    assert answer.status_code == 405
    allowed = {m.strip() for m in answer.headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD", "POST"}
    bundles = server.client.delete("/v1/admin/bundles", headers=server.auth)
    assert {m.strip() for m in bundles.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}


def test_openapi_names_what_the_answers_hold(server: Any) -> None:
    doc = server.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    issue = schemas["ValidationIssue"]["properties"]
    assert "key_path" in issue
    assert "key" not in issue
    assert "halted" in schemas["RolloutCounts"]["required"]
    accept = doc["paths"]["/v1/admin/devices/{device_id}/accept"]["post"]["responses"]
    assert {"200", "401", "403", "404", "409", "429"} <= set(accept)
    create = doc["paths"]["/v1/admin/tokens"]["post"]["responses"]
    assert {"201", "400", "409", "413"} <= set(create)
    assert "400" in doc["paths"]["/v1/admin/audit"]["get"]["responses"]
