"""Backup while real agents report, restore into a new data directory, and the same agents
converge on the restored server without enrolling again; serials never go backwards."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit.bundles import OK, bundle_bytes
from kit.fleet import FleetRepo, kernex_yaml, sha
from kit.wait import wait_for

from kernex_cli.localserver import LocalServer

pytestmark = pytest.mark.e2e
KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]
IDS = ["edge-1", "edge-2"]


def make_bundle(root: Path, version: str) -> bytes:
    files = {"payload.txt": f"app {version}\n"}
    return bundle_bytes(root, "app", version, install=OK, health=OK, files=files)


def kernex(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*KERNEX, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_backup_under_load_then_restore_keeps_devices(tmp_path: Path) -> None:
    repo = FleetRepo(tmp_path / "fleet")
    settings = {"poll_interval": 0.5, "heartbeat_flush_interval": 0.2}
    old = LocalServer(tmp_path / "server", repo=repo.path, settings=settings)
    agents: list[subprocess.Popen[bytes]] = []
    logs = []
    new: LocalServer | None = None
    clients: list[httpx.Client] = []
    try:
        old.start()
        client = httpx.Client(base_url=old.base_url, timeout=30,
                              headers={"Authorization": f"Bearer {old.admin_token}"})  # fmt: skip
        clients.append(client)
        v1, v2 = make_bundle(tmp_path, "1.0.0"), make_bundle(tmp_path, "1.1.0")
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
        token = client.post("/v1/admin/enrollment-tokens", json={"max_uses": 2}).json()["token"]
        for device_id in IDS:
            data = tmp_path / device_id
            kernex("agent", "enroll", "--server", old.base_url, "--token", token,
                   "--device-id", device_id, "--data-dir", str(data))  # fmt: skip
            config = json.loads((data / "agent.json").read_text())
            config["backoff_cap"] = 2.0  # reconnect soon after the server comes back
            (data / "agent.json").write_text(json.dumps(config))
            logs.append((tmp_path / f"{device_id}.log").open("wb"))
            run = [*KERNEX, "agent", "run", "--data-dir", str(data)]
            agents.append(subprocess.Popen(run, stdout=logs[-1], stderr=subprocess.STDOUT))

        def devices(c: httpx.Client) -> dict[str, dict[str, Any]]:
            return {d: c.get(f"/v1/admin/devices/{d}").json() for d in IDS}

        def on(c: httpx.Client, version: str, above: int = 0) -> Callable[[], bool]:
            def probe() -> bool:
                try:
                    shown = devices(c)
                except httpx.TransportError:
                    return False
                return all(
                    (d.get("status") or {}).get("phase") == "healthy"
                    and d["status"]["bundles"] == {"app": version}
                    and d["reported_serial"] == d["desired_serial"] > above
                    for d in shown.values()
                )

            return probe

        wait_for("v1 healthy on both devices", on(client, "1.0.0"), timeout=90)
        archive = tmp_path / "backups" / "kernex.tar.gz"
        # the agents keep polling and reporting while the backup runs
        kernex("server", "backup", str(archive), "--bundles", "--data-dir", str(old.data_dir))

        repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
        repo.commit("app 1.1.0, after the backup")
        wait_for("v2 healthy on both devices", on(client, "1.1.0"), timeout=90)
        seen = max(d["desired_serial"] for d in devices(client).values())
        old.stop()

        restored = tmp_path / "restored"
        out = kernex("server", "restore", str(archive), "--data-dir", str(restored), "--json")
        assert json.loads(out.stdout)["bundles"] == 2
        new = LocalServer(restored, repo=repo.path, port=old.port)
        new.admin_token = old.admin_token  # the restored database has the same tokens
        new.start()
        client = httpx.Client(base_url=new.base_url, timeout=30,
                              headers={"Authorization": f"Bearer {old.admin_token}"})  # fmt: skip
        clients.append(client)
        wait_for(
            "both devices healthy on the restored server", on(client, "1.1.0", seen), timeout=90
        )
        for d in devices(client).values():
            assert d["state"] == "accepted"
        for log in logs:
            log.flush()
        for device_id in IDS:
            text = (tmp_path / f"{device_id}.log").read_text(errors="replace")
            assert "rejected (serial)" not in text, text[-2000:]
        assert not list(restored.glob(".restore.*"))
    finally:
        for c in clients:
            c.close()
        for agent in agents:
            agent.terminate()
        for agent in agents:
            try:
                agent.wait(timeout=45)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=15)
        for log in logs:
            log.close()
        old.stop()
        if new is not None:
            new.stop()
