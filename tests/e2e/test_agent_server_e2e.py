"""The whole device path with real parts: a `kernex server run` process, a real Git
repository, real bundles in the server's store, and `kernex agent` processes over loopback.

v1 installs (its install hook writes a file); v2's health hook fails, so the agent rolls
back to v1 by itself and reports `rolled_back`; the server shows it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit.bundles import bundle_bytes
from kit.fleet import FleetRepo, kernex_yaml, sha
from kit.wait import wait_for

from kernex_cli.bundle_build import build_bundle
from kernex_cli.localserver import LocalServer

pytestmark = pytest.mark.e2e
KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]

INSTALL = (
    '#!/bin/sh\necho "installing $KERNEX_VERSION"\n'
    'echo "$KERNEX_VERSION" > "$KERNEX_DATA_DIR/app.installed"\n'
)
HEALTH_OK = "#!/bin/sh\nexit 0\n"
HEALTH_FAIL = '#!/bin/sh\necho "app $KERNEX_VERSION: port 8080 never opened" >&2\nexit 3\n'


def make_bundle(root: Path, version: str, health: str) -> bytes:
    files = {"payload.txt": f"app {version}\n"}
    return bundle_bytes(root, "app", version, install=INSTALL, health=health, files=files)


@pytest.fixture
def server_proc(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`kernex server init` + `kernex server run` on a free loopback port (SQLite)."""
    repo = FleetRepo(tmp_path / "fleet")
    settings = {"poll_interval": 0.5, "heartbeat_flush_interval": 0.2}
    with LocalServer(tmp_path / "server", repo=repo.path, settings=settings) as local:
        client = httpx.Client(
            base_url=local.base_url,
            headers={"Authorization": f"Bearer {local.admin_token}"},
            timeout=30,
        )
        try:
            yield {"base": local.base_url, "client": client, "repo": repo}
        finally:
            client.close()


def test_agent_installs_v1_then_rolls_back_a_failing_v2(
    server_proc: dict[str, Any], tmp_path: Path
) -> None:
    client: httpx.Client = server_proc["client"]
    repo: FleetRepo = server_proc["repo"]
    v1 = make_bundle(tmp_path, "1.0.0", HEALTH_OK)
    v2 = make_bundle(tmp_path, "1.1.0", HEALTH_FAIL)
    for blob in (v1, v2):
        put = client.put(f"/v1/admin/bundles/{sha(blob)}", content=blob)
        assert put.status_code in (200, 201), put.text
    repo.write(
        "bundles/app.yaml",
        "name: app\nversions:\n"
        f"  1.0.0:\n    sha256: {sha(v1)}\n    size: {len(v1)}\n"
        f"  1.1.0:\n    sha256: {sha(v2)}\n    size: {len(v2)}\n",
    )
    repo.write("kernex.yaml", kernex_yaml(version="1.0.0"))
    repo.commit("app 1.0.0 with real bundles")

    enroll_token = client.post("/v1/admin/enrollment-tokens", json={"max_uses": 1}).json()
    agent_dir = tmp_path / "device"
    enrolled = subprocess.run(
        [
            *KERNEX,
            "agent",
            "enroll",
            "--server",
            server_proc["base"],
            "--token",
            enroll_token["token"],
            "--device-id",
            "edge-1",
            "--label",
            "ring=canary",
            "--data-dir",
            str(agent_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    assert (agent_dir / "device.key").stat().st_mode & 0o777 == 0o600

    agent_log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [*KERNEX, "agent", "run", "--data-dir", str(agent_dir)],
        stdout=agent_log,
        stderr=subprocess.STDOUT,
    )

    def device() -> dict[str, Any]:
        shown = client.get("/v1/admin/devices/edge-1")
        assert shown.status_code == 200, shown.text
        return dict(shown.json())

    def reported(phase: str, serial: int | None = None) -> Callable[[], bool]:
        def probe() -> bool:
            status = device().get("status") or {}
            return status.get("phase") == phase and (
                serial is None or status.get("serial") == serial
            )

        return probe

    try:
        wait_for("v1 healthy", reported("healthy"))
        assert (agent_dir / "app.installed").read_text().strip() == "1.0.0"
        v1_serial = device()["desired_serial"]
        v1_slot = os.readlink(agent_dir / "bundles" / "app" / "current")
        assert device()["status"]["bundles"] == {"app": "1.0.0"}

        repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
        commit = repo.commit("app 1.1.0, whose health check fails")
        wait_for("the server to deploy v2", lambda: device()["desired_revision"] == commit)
        v2_serial = device()["desired_serial"]
        assert v2_serial > v1_serial

        wait_for("the agent to roll back", reported("rolled_back", v2_serial))
        status = device()["status"]
        assert "port 8080 never opened" in (status["log_tail"] or "") + (status["error"] or "")
        assert status["bundles"] == {"app": "1.0.0"}
        # v1 runs again: the current link points at its slot and v1's install ran last
        assert os.readlink(agent_dir / "bundles" / "app" / "current") == v1_slot
        assert (agent_dir / "app.installed").read_text().strip() == "1.0.0"
        assert agent.poll() is None  # the daemon keeps running after a failed update
    finally:
        agent.terminate()
        agent.wait(timeout=15)
        agent_log.close()


def test_a_bad_canary_halts_itself(server_proc: dict[str, Any], tmp_path: Path) -> None:
    """Four real agents in a staged group: v2 fails its health check on the one canary,
    the server halts the rollout and serves v1 again; the others never see v2."""
    client: httpx.Client = server_proc["client"]
    repo: FleetRepo = server_proc["repo"]
    v1 = make_bundle(tmp_path, "1.0.0", HEALTH_OK)
    v2 = make_bundle(tmp_path, "1.1.0", HEALTH_FAIL)
    for blob in (v1, v2):
        assert client.put(f"/v1/admin/bundles/{sha(blob)}", content=blob).status_code < 300
    repo.write(
        "bundles/app.yaml",
        "name: app\nversions:\n"
        f"  1.0.0:\n    sha256: {sha(v1)}\n    size: {len(v1)}\n"
        f"  1.1.0:\n    sha256: {sha(v2)}\n    size: {len(v2)}\n",
    )
    repo.write(
        "groups/stable.yaml",
        "selector: ring=stable\nrollout:\n  waves: [25%, 100%]\n  failure_threshold: 10%\n"
        "  auto_rollback: true\n",
    )
    repo.write("kernex.yaml", kernex_yaml(version="1.0.0"))
    repo.commit("app 1.0.0; stable devices take changes in two waves")
    ids = [f"edge-{i}" for i in range(4)]
    token = client.post("/v1/admin/enrollment-tokens", json={"max_uses": 4}).json()["token"]
    agents = []
    logs = []
    try:
        for device_id in ids:
            data = tmp_path / device_id
            enrolled = subprocess.run(
                [*KERNEX, "agent", "enroll", "--server", server_proc["base"], "--token", token,
                 "--device-id", device_id, "--label", "ring=stable", "--data-dir", str(data)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
            logs.append((tmp_path / f"{device_id}.log").open("wb"))
            agents.append(
                subprocess.Popen(
                    [*KERNEX, "agent", "run", "--data-dir", str(data)],
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                )
            )

        def devices() -> dict[str, dict[str, Any]]:
            return {d: client.get(f"/v1/admin/devices/{d}").json() for d in ids}

        def all_on(version: str) -> bool:
            return all(
                (d.get("status") or {}).get("phase") == "healthy"
                and d["status"]["bundles"] == {"app": version}
                and d["reported_serial"] == d["desired_serial"]
                for d in devices().values()
            )

        wait_for("v1 healthy everywhere", lambda: all_on("1.0.0"))
        before = {d: s["desired_serial"] for d, s in devices().items()}
        repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
        commit = repo.commit("app 1.1.0, whose health check fails")

        def halted() -> dict[str, Any] | None:
            rows = client.get("/v1/admin/rollouts?state=halted").json()["rollouts"]
            return next((r for r in rows if r["revision"] == commit), None)

        rollout = wait_for("the rollout to halt", halted)
        assert "1 of 1 admitted devices failed" in rollout["reason"]
        wait_for("v1 healthy everywhere again", lambda: all_on("1.0.0"))
        shown = devices()
        canaries = [d for d in ids if shown[d]["desired_serial"] != before[d]]
        assert len(canaries) == 1
        for device_id, d in shown.items():
            versions = [x["bundles"]["app"] for x in d["deployments"]]
            if device_id in canaries:  # v2, then v1 again under a higher serial
                assert versions[:2] == ["1.0.0", "1.1.0"]
                assert d["desired_serial"] == before[device_id] + 2
            else:  # the stable devices never got the bad version
                assert "1.1.0" not in versions
                assert d["desired_serial"] == before[device_id]
    finally:
        for agent in agents:
            agent.terminate()
        for agent in agents:  # an agent in a long poll exits when the poll ends
            try:
                agent.wait(timeout=45)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=15)
        for log in logs:
            log.close()


INSTALL_SLOW = (
    '#!/bin/sh\ntouch "$KERNEX_DATA_DIR/install.started"\nsleep 2\n'
    'echo "$KERNEX_VERSION" > "$KERNEX_DATA_DIR/app.installed"\n'
)


def long_polls_open(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kernex_manifest_long_polls_open "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_stops_a_long_poll_at_once_but_an_install_finishes_first(
    server_proc: dict[str, Any], tmp_path: Path
) -> None:
    """A real agent waits in the server's 30 s long poll: SIGTERM ends it within 2 s, with
    nothing half done. During an install, SIGTERM lets the install finish, then exits."""
    client: httpx.Client = server_proc["client"]
    repo: FleetRepo = server_proc["repo"]
    v1 = make_bundle(tmp_path, "1.0.0", HEALTH_OK)
    src = tmp_path / "src-app-1.0.0"  # where make_bundle (kit.bundles) wrote v1
    (src / "hooks" / "install").write_text(INSTALL_SLOW)
    (src / "kernex-bundle.yaml").write_text(
        'name: app\nversion: "1.1.0"\nhooks:\n  install: hooks/install\n  health: hooks/health\n'
    )
    v2 = build_bundle(src)
    for blob in (v1, v2):
        assert client.put(f"/v1/admin/bundles/{sha(blob)}", content=blob).status_code < 300
    repo.write(
        "bundles/app.yaml",
        "name: app\nversions:\n"
        f"  1.0.0:\n    sha256: {sha(v1)}\n    size: {len(v1)}\n"
        f"  1.1.0:\n    sha256: {sha(v2)}\n    size: {len(v2)}\n",
    )
    repo.write("kernex.yaml", kernex_yaml(version="1.0.0"))
    repo.commit("app 1.0.0")
    token = client.post("/v1/admin/enrollment-tokens", json={"max_uses": 1}).json()["token"]
    data = tmp_path / "device"
    enrolled = subprocess.run(
        [*KERNEX, "agent", "enroll", "--server", server_proc["base"], "--token", token,
         "--device-id", "edge-1", "--label", "ring=canary", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr

    log = (tmp_path / "agent.log").open("wb")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*KERNEX, "agent", "run", "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT
        )

    def device() -> dict[str, Any]:
        return dict(client.get("/v1/admin/devices/edge-1").json())

    def healthy_on(version: str) -> bool:
        d = device()
        status = d.get("status") or {}
        return (
            status.get("phase") == "healthy"
            and status.get("bundles") == {"app": version}
            and d["reported_serial"] == d["desired_serial"]
        )

    def agent_status() -> dict[str, Any]:
        shown = subprocess.run(
            [*KERNEX, "agent", "status", "--json", "--data-dir", str(data)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stdout + shown.stderr
        return dict(json.loads(shown.stdout))

    agent = start()
    try:
        wait_for("v1 healthy", lambda: healthy_on("1.0.0"))
        wait_for("the agent's long poll", lambda: long_polls_open(client) >= 1)
        sent = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 0
        assert time.monotonic() - sent < 2.0, "SIGTERM waited for the long poll to end"
        stopped = agent_status()
        assert stopped["journal"] is None or stopped["journal"]["step"] == "committed"
        assert stopped["installed"]["app"]["version"] == "1.0.0"
        assert stopped["queued_reports"] == 0

        # An install in progress is finished before the agent stops.
        agent = start()
        repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
        repo.commit("app 1.1.0, whose install takes 2 s")
        wait_for("the install to start", (data / "install.started").exists)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        assert (data / "app.installed").read_text().strip() == "1.1.0"
        after = agent_status()
        assert after["journal"] is None or after["journal"]["step"] == "committed"
        assert after["installed"]["app"]["version"] == "1.1.0"
        assert healthy_on("1.1.0")  # it reported the finished install before it stopped
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=15)
        log.close()
