"""`kernex reconcile` and `kernex diff` against a real server that reads the fleet repo."""

from __future__ import annotations

import json

from kit.cli import Kernex
from kit.server import RunningServer


def test_reconcile_deploys_the_newest_commit_and_waits_for_it(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    repo = kx_server.repo
    first = kernex("reconcile")
    assert first.exit_code == 0, first.output
    assert repo.head()[:12] in first.output

    repo.write("groups/canary.yaml", "selector: ring=canary\nconfig:\n  app:\n    x: 1\n")
    head = repo.commit("canary config")
    done = kernex("reconcile")
    assert done.exit_code == 0, done.output
    assert f"deployed {head[:12]}" in done.output
    deployed = kx_server.admin("GET", "/v1/admin/status")["revision"]["deployed"]
    assert deployed == head

    again = kernex("reconcile", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["state"] == "unchanged"
    assert "up to date" in kernex("reconcile").output


def test_reconcile_lists_why_the_server_refuses_a_commit(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    repo = kx_server.repo
    repo.write("groups/canary.yaml", "selector: [unclosed\n")
    bad = repo.commit("break the canary group")
    refused = kernex("reconcile")
    assert refused.exit_code == 1, refused.output
    assert f"the server refused {bad[:12]}: the commit is invalid" in refused.stderr
    assert "groups/canary.yaml" in refused.stderr
    again = kernex("reconcile")  # unchanged head, still refused: still exit 1 with its errors
    assert again.exit_code == 1, again.output
    assert "groups/canary.yaml" in again.stderr


def test_reconcile_needs_an_operator(kernex: Kernex, kx_server: RunningServer) -> None:
    result = kernex("reconcile", token=kx_server.token_for("viewer"))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error:")
    assert "hint:" in result.stderr


def test_diff_shows_head_against_the_live_fleet_and_the_drift(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    repo = kx_server.repo
    kx_server.enroll("edge-canary", ring="canary")
    assert kernex("reconcile").exit_code == 0
    live = repo.head()

    same = kernex("diff", "--repo", str(repo.path), "--json")
    assert same.exit_code == 0, same.output
    out = json.loads(same.stdout)
    assert out["deployed"] == live == out["head"]
    assert out["summary"]["devices_changed"] == 0
    assert [d["device"] for d in out["drift"]] == ["edge-canary"]  # never reported

    repo.write("groups/canary.yaml", "selector: ring=canary\nbundles:\n  app: 1.1.0\n")
    head = repo.commit("canary to 1.1.0")
    changed = kernex("diff", "--repo", str(repo.path), "--detailed-exitcode")
    assert changed.exit_code == 2, changed.output
    assert f"live (deployed) {live[:12]} against {head[:12]}" in changed.output
    assert "edge-canary" in changed.output
    assert "bundle app 1.0.0 → 1.1.0" in changed.output
    assert "not yet on their desired state" in changed.output
