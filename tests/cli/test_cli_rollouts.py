"""`kernex rollouts ...` and `kernex deploy --wait` with staged rollouts, against a real
server (uvicorn on 127.0.0.1, its rollout loop running) that reads the same fleet repo."""

from __future__ import annotations

import json
import re
from typing import Any

from kit.cli import Kernex
from kit.device import Responder
from kit.server import RunningServer
from kit.wait import wait_for


def staged_canary(server: RunningServer, policy: str) -> None:
    server.repo.write(
        "groups/canary.yaml",
        f"selector: ring=canary\npriority: 10\nrollout:\n{policy}",
    )
    server.repo.commit("canary group rolls out in waves")
    server.admin("POST", "/v1/admin/reconcile")


def deploy(kernex: Kernex, *extra: str) -> Any:
    repo = str(kernex.server.repo.path)
    return kernex("deploy", "app@1.1.0", "--group", "canary", "--repo", repo, *extra)


def desired_serials(server: RunningServer, ids: list[str]) -> dict[str, int]:
    return {d: server.admin("GET", f"/v1/admin/devices/{d}")["desired_serial"] for d in ids}


def test_deploy_wait_exits_1_when_the_canary_wave_halts(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    staged_canary(
        kx_server,
        "  waves: [30%, 100%]\n  failure_threshold: 10%\n  auto_rollback: true\n",
    )
    ids = [f"edge-{i}" for i in range(3)]
    devices = [kx_server.enroll(d, ring="canary") for d in ids]
    before = desired_serials(kx_server, ids)
    responders = [
        Responder(kx_server.base, kx_server.token, d, phase="failed", error="health exit 1")
        for d in devices
    ]
    for r in responders:
        r.__enter__()
    try:
        result = deploy(kernex, "--wait", "--timeout", "60s")
    finally:
        for r in responders:
            r.__exit__(None, None, None)
    assert result.exit_code == 1, result.output
    assert "halted" in result.output
    [rollout] = kx_server.admin("GET", "/v1/admin/rollouts")["rollouts"]
    assert rollout["state"] == "halted"
    after = desired_serials(kx_server, ids)
    moved = [d for d in ids if after[d] != before[d]]
    assert len(moved) == 1  # the canary: new state, then its rollback
    assert after[moved[0]] == before[moved[0]] + 2
    shown = kx_server.admin("GET", f"/v1/admin/devices/{moved[0]}")
    assert [d["bundles"]["app"] for d in shown["deployments"]][:2] == ["1.0.0", "1.1.0"]

    status = kernex("status")
    assert "1 halted" in status.output, status.output
    # Git still names 1.1.0 for all three: none runs it, so all three are out of sync.
    assert re.search(r"out of sync +3: edge-0, edge-1, edge-2", status.output), status.output

    # An unrelated config commit does not retry the halted release.
    repo = str(kx_server.repo.path)
    edited = kernex(
        "config", "set", "app.motd=hi", "--group", "canary", "--repo", repo,
        "--wait", "--timeout", "30s",
    )  # fmt: skip
    assert edited.exit_code == 1, edited.output  # committed, but held: nothing moves
    assert f"rollout {rollout['id']} (canary) halted" in edited.output
    assert "it holds its devices" in edited.output
    assert desired_serials(kx_server, ids) == after
    listed = json.loads(kernex("rollouts", "list", "--json").stdout)["rollouts"]
    assert [r["state"] for r in listed] == ["halted"]
    again = kernex("status", "--json")
    assert json.loads(again.stdout)["out_of_sync_devices"] == ids
    shown_device = kernex("devices", "show", moved[0])
    assert "held back by a rollout" in shown_device.output, shown_device.output


def test_rollouts_commands_pause_resume_promote_and_wait_for_completion(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    staged_canary(kx_server, "  waves: [30%, 100%]\n  promotion: manual\n")
    devices = [kx_server.enroll(f"edge-{i}", ring="canary") for i in range(3)]
    responders = [Responder(kx_server.base, kx_server.token, d) for d in devices]
    for r in responders:
        r.__enter__()
    try:
        assert deploy(kernex).exit_code == 0
        kx_server.admin("POST", "/v1/admin/reconcile")
        listed = kernex("rollouts", "list", "--json")
        assert listed.exit_code == 0, listed.output
        [rollout] = json.loads(listed.stdout)["rollouts"]
        rid = str(rollout["id"])
        table = kernex("rollouts", "list")
        assert "canary" in table.output
        assert "running" in table.output

        def rollout() -> Any:
            return kx_server.admin("GET", f"/v1/admin/rollouts/{rid}")

        wait_for("the canary wave to become ready", lambda: rollout()["awaiting_promotion"], 30)
        shown = kernex("rollouts", "show", rid)
        assert shown.exit_code == 0, shown.output
        assert "awaiting `kernex rollouts promote`" in shown.output

        paused = kernex("rollouts", "pause", rid)
        assert paused.exit_code == 0, paused.output
        assert "paused" in paused.output
        again = kernex("rollouts", "pause", rid)
        assert again.exit_code == 1
        assert "only a running rollout" in again.output
        assert kernex("rollouts", "resume", rid).exit_code == 0
        promoted = kernex("rollouts", "promote", rid, "--json")
        assert promoted.exit_code == 0, promoted.output
        assert json.loads(promoted.stdout)["wave"] == 1

        wait_for("the rollout to complete", lambda: rollout()["state"] == "completed", 30)
        viewer = kx_server.token_for("viewer")
        denied = kernex("rollouts", "abort", rid, token=viewer)
        assert denied.exit_code == 1
    finally:
        for r in responders:
            r.__exit__(None, None, None)
    entries = kx_server.admin("GET", f"/v1/admin/audit?target={rid}")["entries"]
    acts = [(e["action"], e["result"]) for e in reversed(entries) if e["actor"] != "rollouts"]
    assert acts == [
        ("rollout.pause", "ok"),
        ("rollout.pause", "error"),
        ("rollout.resume", "ok"),
        ("rollout.promote", "ok"),
    ]
    assert {"rollout.start", "rollout.complete"} <= {
        e["action"] for e in entries if e["actor"] == "rollouts"
    }


def test_deploy_wait_follows_a_staged_rollout_to_completion(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    staged_canary(kx_server, "  waves: [30%, 100%]\n  pause: 1s\n")
    devices = [kx_server.enroll(f"edge-{i}", ring="canary") for i in range(3)]
    responders = [Responder(kx_server.base, kx_server.token, d) for d in devices]
    for r in responders:
        r.__enter__()
    try:
        result = deploy(kernex, "--wait", "--timeout", "60s", "--json")
    finally:
        for r in responders:
            r.__exit__(None, None, None)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["wait"]
    assert sorted(out["converged"]) == ["edge-0", "edge-1", "edge-2"]
    assert [r["state"] for r in out["rollouts"]] == ["completed"]
