"""The real server process (`kernex server run`, uvicorn) on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit.device import SimDevice
from kit.fleet import FleetRepo, kernex_yaml
from kit.wait import wait_for
from prometheus_client.parser import text_string_to_metric_families

from kernex_core import keys
from kernex_core.trust import ManifestVerifier

pytestmark = pytest.mark.e2e
KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = FleetRepo(tmp_path / "fleet")
    data = tmp_path / "data"
    env = {**os.environ, "KERNEX_DATA_DIR": str(data)}
    env.pop("KERNEX_DATABASE_URL", None)
    init = subprocess.run(
        [*KERNEX, "server", "init", "--repo", str(repo.path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(init.stdout)["admin_token"]
    with (data / "server.toml").open("a") as fh:
        fh.write("poll_interval = 0.5\nheartbeat_flush_interval = 0.2\n")
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [*KERNEX, "server", "run", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = (tmp_path / "server.log").read_text()
                pytest.fail(f"server did not start: {out}")
            time.sleep(0.1)
        key = keys.load_private_key_pem((data / "keys" / "manifest.key").read_bytes())
        yield {"base": base, "token": token, "repo": repo, "key": key}
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def long_polls_open(base: str) -> float | None:
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name == "kernex_manifest_long_polls_open":
                return float(sample.value)
    return None


def test_enroll_manifest_commit_long_poll_status(running: dict[str, Any]) -> None:
    base, repo, key = running["base"], running["repo"], running["key"]
    auth = {"Authorization": f"Bearer {running['token']}"}
    public = key.public_key()
    with httpx.Client(base_url=base, timeout=60) as client:
        created = client.post("/v1/admin/enrollment-tokens", json={"max_uses": 1}, headers=auth)
        assert created.status_code == 201, created.text
        device = SimDevice("edge-1", labels={"ring": "canary"})
        enrolled = device.enroll(client, token=created.json()["token"])
        assert enrolled.status_code == 201, enrolled.text
        assert enrolled.json()["manifest_key_id"] == keys.fingerprint(public)
        verifier = ManifestVerifier("edge-1", {keys.fingerprint(public): public})
        first = device.manifest(client)
        assert first.status_code == 200
        assert verifier.verify(first.content, time.time()).serial == 1

        with ThreadPoolExecutor(1) as pool:
            poll = pool.submit(device.manifest, client, wait=30, etag=first.headers["etag"])
            wait_for("the long poll to be waiting", lambda: long_polls_open(base) == 1, 30)
            repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
            commit = repo.commit("app 1.1.0")  # the server's poll loop picks it up
            changed = poll.result(timeout=40)
        assert changed.status_code == 200
        manifest = verifier.verify(changed.content, time.time())
        assert manifest.serial == 2
        assert manifest.revision == commit

        report = {"phase": "healthy", "serial": 2, "bundles": {"app": "1.1.0"}}
        assert device.status(client, report).status_code == 204
        shown = client.get("/v1/admin/devices/edge-1", headers=auth).json()
        assert shown["status"]["phase"] == "healthy"
        assert shown["reported_serial"] == 2
        assert shown["online"] is True
