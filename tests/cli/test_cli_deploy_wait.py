"""`kernex deploy|rollback --wait` against a real server that reads the same fleet repo."""

from __future__ import annotations

import json
import socket

from kit.cli import Kernex
from kit.device import Responder
from kit.server import RunningServer


def deploy(kernex: Kernex, *extra: str) -> object:
    repo = str(kernex.server.repo.path)
    return kernex("deploy", "app@1.1.0", "--group", "canary", "--repo", repo, "--wait", *extra)


def test_deploy_wait_exits_0_when_the_changed_devices_are_healthy(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    canary = kx_server.enroll("edge-canary", ring="canary")
    kx_server.enroll("edge-other")  # not in the group: never reports, must not be waited for
    with Responder(kx_server.base, kx_server.token, canary) as device:
        result = deploy(kernex, "--timeout", "60s")
    assert result.exit_code == 0, result.output
    assert "all 1 device(s) healthy" in result.output
    head = kx_server.repo.head()
    assert kx_server.admin("GET", "/v1/admin/revisions")["revisions"][0]["commit"] == head
    assert (
        device.reported[-1]
        == kx_server.admin("GET", "/v1/admin/devices/edge-canary")["desired_serial"]
    )


def test_deploy_wait_exits_1_with_a_table_of_failures(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    canary = kx_server.enroll("edge-canary", ring="canary")
    responder = Responder(
        kx_server.base, kx_server.token, canary, phase="failed", error="health check exit 3"
    )
    with responder:
        result = deploy(kernex, "--timeout", "60s")
    assert result.exit_code == 1, result.output
    assert "failed devices" in result.output
    assert "edge-canary" in result.output
    assert "health check exit 3" in result.output
    assert "1 of 1 device(s) failed" in result.output


def test_deploy_wait_times_out_naming_what_is_pending(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    kx_server.enroll("edge-silent", ring="canary")
    result = deploy(kernex, "--timeout", "2s")
    assert result.exit_code == 1, result.output
    assert "timed out" in result.output
    assert "still pending" in result.output
    assert "edge-silent" in result.output


def test_deploy_wait_json_is_one_document(kernex: Kernex, kx_server: RunningServer) -> None:
    canary = kx_server.enroll("edge-canary", ring="canary")
    with Responder(kx_server.base, kx_server.token, canary):
        result = deploy(kernex, "--timeout", "60s", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["commit"] == kx_server.repo.head()
    assert out["wait"]["ok"] is True
    assert out["wait"]["converged"] == ["edge-canary"]


def test_an_edit_the_servers_devices_cannot_resolve_is_not_committed(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    # Two groups of equal priority set the same key for a device only the server knows:
    # the repository alone validates; with the server's devices the plan does not, so the
    # edit stops before its commit.
    repo = kx_server.repo
    repo.write("groups/east.yaml", "selector: site=east\npriority: 10\n")
    repo.commit("group east")
    head = repo.head()
    kx_server.enroll("edge-east", ring="canary", site="east")
    result = kernex(
        "config",
        "set",
        "app.canary=false",
        "--group",
        "east",
        "--repo",
        str(repo.path),
        "--wait",
        "--timeout",
        "30s",
    )
    assert result.exit_code == 1, result.output
    assert "both set config.app.canary for device 'edge-east'" in result.output
    assert "groups/" in result.output  # the error names the file
    assert repo.head() == head


def test_rollback_wait(kernex: Kernex, kx_server: RunningServer) -> None:
    canary = kx_server.enroll("edge-canary", ring="canary")
    repo = str(kx_server.repo.path)
    with Responder(kx_server.base, kx_server.token, canary):
        assert deploy(kernex, "--timeout", "60s").exit_code == 0
        result = kernex("rollback", "--group", "canary", "--repo", repo, "--wait")
    assert result.exit_code == 0, result.output
    assert "all 1 device(s) healthy" in result.output
    assert "app: 1.1.0" not in (kx_server.repo.path / "groups/canary.yaml").read_text()


def test_wait_with_an_unreachable_server_commits_nothing(kernex: Kernex) -> None:
    head = kernex.server.repo.head()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        result = kernex(
            "deploy",
            "app@1.1.0",
            "-g",
            "canary",
            "-C",
            str(kernex.server.repo.path),
            "--wait",
            "--server",
            dead,
            "--token",
            kernex.server.token,
            connect=False,
        )
    assert result.exit_code == 1, result.output
    assert "cannot reach" in result.output
    assert kernex.server.repo.head() == head


def test_wait_usage_errors(kernex: Kernex) -> None:
    repo = str(kernex.server.repo.path)
    dry = kernex("deploy", "app@1.1.0", "-g", "canary", "-C", repo, "--wait", "--dry-run")
    assert dry.exit_code == 2
    bad = kernex("deploy", "app@1.1.0", "-g", "canary", "-C", repo, "--wait", "--timeout", "x")
    assert bad.exit_code == 2
