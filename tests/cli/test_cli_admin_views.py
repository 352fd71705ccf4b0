"""`kernex status`, `tokens`, `audit` and `bundle gc` against the real server."""

from __future__ import annotations

import hashlib
import json

from kit.cli import Kernex
from kit.server import RunningServer


def test_status_counts_devices_and_names_the_lagging(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    healthy = kx_server.enroll("edge-ok")
    kx_server.enroll("edge-lagging")
    kx_server.report(healthy, phase="healthy", serial=1)
    result = kernex("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["revision"]["deployed"] == kx_server.repo.head()
    assert data["devices"]["total"] == 2
    assert data["devices"]["by_phase"].get("healthy") == 1
    assert data["out_of_sync_devices"] == ["edge-lagging"]
    table = kernex("status")
    assert table.exit_code == 0, table.output
    assert "edge-lagging" in table.output


def test_status_exits_1_on_an_invalid_newest_commit(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    kx_server.repo.write("groups/bad.yaml", "selector: ''\nbundles:\n  app: 9.9.9\n")
    kx_server.repo.commit("bad version")
    kx_server.admin("POST", "/v1/admin/reconcile")
    result = kernex("status")
    assert result.exit_code == 1, result.output
    assert "groups/bad.yaml" in result.output


def test_tokens_create_list_revoke(kernex: Kernex, kx_server: RunningServer) -> None:
    created = kernex("tokens", "create", "--name", "ci", "--role", "viewer", "--json")
    assert created.exit_code == 0, created.output
    token = json.loads(created.stdout)
    assert token["role"] == "viewer"
    # the new token works, with its role
    assert kernex("devices", "list", token=token["token"]).exit_code == 0
    assert kernex("tokens", "list", token=token["token"]).exit_code == 1  # viewer < admin
    listed = kernex("tokens", "list")
    assert "ci" in listed.output
    assert token["token"] not in listed.output
    assert kernex("tokens", "revoke", str(token["id"])).exit_code == 0
    refused = kernex("devices", "list", token=token["token"])
    assert refused.exit_code == 1
    duplicate = kernex("tokens", "create", "--name", "ci", "--role", "viewer")
    assert duplicate.exit_code == 1


def test_audit_lists_what_the_cli_did(kernex: Kernex, kx_server: RunningServer) -> None:
    kx_server.enroll_pending("edge-a")
    assert kernex("devices", "accept", "edge-a").exit_code == 0
    result = kernex("audit", "--since", "1h", "--target", "edge-a", "--json")
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)["entries"]
    assert entries
    assert all(e["target"] == "edge-a" for e in entries)
    assert any("accept" in e["action"] for e in entries)


def test_bundle_gc_dry_run_then_for_real(kernex: Kernex, kx_server: RunningServer) -> None:
    data = b"an upload no commit names\n"
    digest = hashlib.sha256(data).hexdigest()
    kx_server.admin("PUT", f"/v1/admin/bundles/{digest}", content=data)
    planned = kernex("bundle", "gc", "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert "would remove 0 bundle(s)" in planned.output  # inside the grace period
    as_json = kernex("bundle", "gc", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["dry_run"] is False
    viewer = kernex("bundle", "gc", "--dry-run", token=kx_server.token_for("viewer"))
    assert viewer.exit_code == 1
    assert "needs admin" in viewer.output
