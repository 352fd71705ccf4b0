"""The real server process (`kernex server run`, uvicorn) on loopback."""

from __future__ import annotations

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

from kernex_cli.localserver import LocalServer
from kernex_core import keys
from kernex_core.trust import ManifestVerifier

pytestmark = pytest.mark.e2e
KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = FleetRepo(tmp_path / "fleet")
    settings = {"poll_interval": 0.5, "heartbeat_flush_interval": 0.2}
    with LocalServer(tmp_path / "data", repo=repo.path, settings=settings) as server:
        key = keys.load_private_key_pem((server.data_dir / "keys" / "manifest.key").read_bytes())
        yield {"base": server.base_url, "token": server.admin_token, "repo": repo, "key": key}


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
