"""A revision whose bundles are not in the server's bundle store still deploys (the last
good revision is not held back by an upload that lags), but never silently: the reconcile
result, the audit log and the admin status (`kernex status`) name each missing bundle."""

from __future__ import annotations

from typing import Any

from kit.fleet import BUNDLE_V1, BUNDLE_V2, FleetRepo, kernex_yaml, sha

from kernex_cli.output import console
from kernex_cli.status_cmds import render_status


def put(server: Any, data: bytes) -> None:
    answer = server.client.put(f"/v1/admin/bundles/{sha(data)}", content=data, headers=server.auth)
    assert answer.status_code == 201, answer.text


def test_a_revision_pinning_a_bundle_the_store_lacks_is_flagged(
    start_server: Any, fleet_repo: FleetRepo
) -> None:
    server = start_server()
    put(server, BUNDLE_V1)
    status = server.admin_get("/v1/admin/status")
    assert status["revision"]["warnings"] == []  # 1.0.0 is stored; 1.1.0 is only listed

    fleet_repo.write("kernex.yaml", kernex_yaml("1.1.0"))
    commit = fleet_repo.commit("app 1.1.0, not uploaded")
    result = server.reconcile()
    assert result["state"] == "deployed"
    assert result["commit"] == commit
    [warning] = result["warnings"]
    assert warning["sha256"] == sha(BUNDLE_V2)
    assert warning["bundle"] == "app"
    assert warning["version"] == "1.1.0"
    assert "not in the server's bundle store" in warning["message"]
    assert "kernex bundle push" in warning["hint"]

    audit = server.admin_get("/v1/admin/audit?action=reconcile")["entries"]
    assert audit[0]["detail"]["warnings"][0]["sha256"] == sha(BUNDLE_V2)

    status = server.admin_get("/v1/admin/status")
    assert [w["sha256"] for w in status["revision"]["warnings"]] == [sha(BUNDLE_V2)]
    with console.capture() as shown:
        console.print(render_status(status, "http://kernex.test"))
    text = " ".join(shown.get().split())
    assert "app@1.1.0" in text
    assert "not in the server's bundle store" in text

    put(server, BUNDLE_V2)
    assert server.admin_get("/v1/admin/status")["revision"]["warnings"] == []


def test_bundles_served_from_elsewhere_are_not_flagged(
    start_server: Any, fleet_repo: FleetRepo
) -> None:
    server = start_server(bundle_base_url="https://cdn.example/bundles")
    assert server.admin_post("/v1/admin/reconcile?force=1")["warnings"] == []
    assert server.admin_get("/v1/admin/status")["revision"]["warnings"] == []
