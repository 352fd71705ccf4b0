"""`kernex plan` and `kernex deploy` plan for the server's enrolled devices (their labels
from enrollment) when a server is configured, against a real server."""

from __future__ import annotations

import json
import socket

from kit.cli import Kernex
from kit.fleet import kernex_yaml
from kit.server import RunningServer

from kernex_cli.main import app


def enroll_two(server: RunningServer) -> None:
    server.enroll("edge-1", ring="canary")
    server.enroll("edge-2", ring="stable")


def test_plan_includes_the_enrolled_devices(kernex: Kernex, kx_server: RunningServer) -> None:
    enroll_two(kx_server)
    kx_server.repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
    kx_server.repo.commit("app 1.1.0")
    repo = str(kx_server.repo.path)

    shown = kernex("plan", "--repo", repo)
    assert shown.exit_code == 0, shown.output
    assert "edge-1" in shown.output
    assert "edge-2" in shown.output
    assert "app 1.0.0 → 1.1.0 (upgrade)" in shown.output
    assert "2 enrolled device(s) from " + kx_server.base in shown.output
    assert "No changes" not in shown.output

    as_json = kernex("plan", "--repo", repo, "--format", "json", "--detailed-exitcode")
    assert as_json.exit_code == 2, as_json.output
    data = json.loads(as_json.stdout)
    assert sorted(d["device_id"] for d in data["devices"]) == ["edge-1", "edge-2"]
    assert data["inventory"] == {"server": kx_server.base, "devices": 2}

    # --inventory adds devices (and wins for a device it names); --offline skips the server.
    extra = kx_server.repo.path.parent / "inventory.json"
    extra.write_text(json.dumps({"edge-9": {"ring": "canary"}}))
    both = kernex("plan", "--repo", repo, "--inventory", str(extra), "--format", "json")
    ids = sorted(d["device_id"] for d in json.loads(both.stdout)["devices"])
    assert ids == ["edge-1", "edge-2", "edge-9"]
    offline = kernex("plan", "--repo", repo, "--offline")
    assert offline.exit_code == 0, offline.output
    assert "No changes. 0 device(s) up to date." in offline.output


def test_plan_without_a_server_says_enrolled_devices_are_not_in_it(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    enroll_two(kx_server)
    kx_server.repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
    kx_server.repo.commit("app 1.1.0")
    shown = kernex("plan", "--repo", str(kx_server.repo.path), connect=False)
    assert shown.exit_code == 0, shown.output
    assert "No changes. 0 device(s) up to date." in shown.output
    assert "no server configured" in shown.output


def test_plan_fails_in_one_line_when_the_configured_server_is_unreachable(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        shown = kernex.runner.invoke(
            app, ["plan", "--repo", str(kx_server.repo.path), "--server", url,
                           "--token", "kx_nothing"],
        )  # fmt: skip
    assert shown.exit_code == 1, shown.output
    assert "Traceback" not in shown.output
    assert "--offline" in shown.output


def test_deploy_plans_for_the_enrolled_devices(kernex: Kernex, kx_server: RunningServer) -> None:
    enroll_two(kx_server)
    repo = str(kx_server.repo.path)
    dry = kernex("deploy", "app@1.1.0", "--group", "canary", "--repo", repo, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "edge-1" in dry.output
    assert "app 1.0.0 → 1.1.0 (upgrade)" in dry.output
    assert "edge-2" not in dry.output  # stable: unchanged, counted below
    assert "1 unchanged" in dry.output

    done = kernex("deploy", "app@1.1.0", "--group", "canary", "--repo", repo, "--json")
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)["plan"]
    assert [d["device_id"] for d in plan["devices"]] == ["edge-1"]
    assert plan["summary"]["devices_unchanged"] == 1
