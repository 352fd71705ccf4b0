"""A real agent against a real app, in one process: ``create_app`` served over
``httpx.ASGITransport``, the agent's own enrollment, manifest check, download, install
and status report. No sockets, no sleeps; the same code paths as a device on a network.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from kit.apicheck import AnswerChecker
from kit.bundles import bundle_bytes
from kit.fleet import FleetRepo

from kernex_agent.agent import Agent
from kernex_agent.config import load_config
from kernex_agent.enroll import enroll
from kernex_agent.hooks import SubprocessHookRunner
from kernex_core import __version__, keys
from kernex_server import openapi
from kernex_server.app import create_app

BASE = "http://kernex.test"
INSTALL = '#!/bin/sh\necho "$KERNEX_VERSION" > "$MARKER_DIR/$KERNEX_BUNDLE.installed"\n'
HEALTHY = "#!/bin/sh\nexit 0\n"


def make_bundle(root: Path, version: str) -> bytes:
    files = {"greeting.txt": f"hello {version}\n"}
    return bundle_bytes(root, "hello", version, install=INSTALL, health=HEALTHY, files=files)


def commit_fleet(repo: FleetRepo, bundle: bytes) -> str:
    digest = hashlib.sha256(bundle).hexdigest()
    repo.write(
        "bundles/hello.yaml",
        f"name: hello\nversions:\n  1.0.0:\n    sha256: {digest}\n    size: {len(bundle)}\n",
    )
    repo.write(
        "kernex.yaml",
        "apiVersion: kernex/v1\nname: inprocess\ndefaults:\n  bundles:\n    hello: 1.0.0\n",
    )
    return repo.commit("hello 1.0.0 everywhere")


def test_an_agent_enrolls_installs_and_reports_to_create_app_in_process(
    tmp_path: Path, make_settings: Any, fleet_repo: FleetRepo, manifest_key: keys.PrivateKey
) -> None:
    bundle = make_bundle(tmp_path, "1.0.0")
    commit = commit_fleet(fleet_repo, bundle)
    app = create_app(make_settings(), manifest_key=manifest_key, background=False)
    kx = app.state.kx
    checker = AnswerChecker(openapi.build(app.routes, __version__))
    system = tmp_path / "system"
    system.mkdir()

    seen: list[tuple[str, str, int]] = []

    async def check(response: httpx.Response) -> None:
        await response.aread()
        checker(response)
        seen.append((response.request.method, response.request.url.path, response.status_code))

    def client() -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app)
        return httpx.AsyncClient(
            transport=transport, base_url=BASE, event_hooks={"response": [check]}
        )

    async def scenario() -> None:
        async with app.router.lifespan_context(app), client() as http:
            now = time.time()
            admin = {
                "Authorization": "Bearer "
                + kx.store.create_api_token("inprocess", "admin", now=now)
            }
            uploaded = await http.post("/v1/admin/bundles", content=bundle, headers=admin)
            assert uploaded.status_code == 201, uploaded.text
            reconciled = await http.post("/v1/admin/reconcile", headers=admin)
            assert reconciled.json()["commit"] == commit
            token, _ = kx.store.create_enrollment_token(
                "inprocess", now=now, expires_at=None, max_uses=1, created_by="test"
            )
            data_dir = tmp_path / "device"
            enrolled = await enroll(
                http,
                server_url=BASE,
                data_dir=data_dir,
                device_id="dev-inproc",
                token=token,
                labels={"site": "lab"},
                wait_for_approval=False,
                clock=time.time,
                sleep=anyio.sleep,
            )
            assert enrolled.state == "accepted"
            config = load_config(data_dir).with_overrides(poll_wait=0)
            hooks = SubprocessHookRunner(
                {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MARKER_DIR": str(system)}
            )
            agent = Agent(config, http, hooks=hooks)
            result = await agent.run_once()
            assert result.ok, result.error
            await kx.flush_statuses()
            device = (await http.get("/v1/admin/devices/dev-inproc", headers=admin)).json()
            assert device["status"]["phase"] == "healthy"
            assert device["status"]["bundles"] == {"hello": "1.0.0"}
            assert device["status"]["revision"] == commit
            assert device["reported_serial"] == device["desired_serial"]
            assert device["deployment_pending"] is False

    anyio.run(scenario)
    assert (system / "hello.installed").read_text().strip() == "1.0.0"
    current = tmp_path / "device" / "bundles" / "hello" / "current"
    assert (current / "greeting.txt").read_text() == "hello 1.0.0\n"
    digest = hashlib.sha256(bundle).hexdigest()
    assert {
        ("POST", "/v1/enroll", 201),
        ("GET", "/v1/devices/dev-inproc/manifest", 200),
        ("GET", f"/v1/bundles/{digest}", 200),
        ("POST", "/v1/devices/dev-inproc/status", 204),
    } <= set(seen)
    assert checker.checked >= 5  # and each JSON answer matched /openapi.json
