"""The dashboard in headless Chromium (Playwright, the system's /usr/bin/chromium) against a
real uvicorn server: log in, overview, filter devices, open one, see a new phase arrive
without a reload, pause and resume a rollout as an operator, be refused as a viewer.
Screenshots go to the test's tmp directory. Skipped when Chromium or Playwright is absent.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from kit.device import SimDevice, verify_manifest
from kit.fleet import FleetRepo, kernex_yaml

from kernex_core import keys
from kernex_server.accounts import Accounts
from kernex_server.app import create_app
from kernex_server.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api")

PASSWORD = "correct horse battery"
STAGED = (
    "selector: ring=stable\npriority: 5\nrollout:\n  waves: [20%, 100%]\n"
    "  failure_threshold: 10%\n  pause: 600s\n"
)
WAIT_MS = 15_000  # the page polls every 3 s


@dataclass
class Fleet:
    base: str
    token: str
    kx: Any
    key: keys.PrivateKey
    devices: dict[str, SimDevice]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)

    def admin(self, method: str, path: str) -> Any:
        with self.http() as client:
            answer = client.request(method, path, headers={"Authorization": f"Bearer {self.token}"})
        assert answer.status_code < 300, answer.text
        return answer.json()

    def report(self, device_id: str, phase: str) -> None:
        device = self.devices[device_id]
        with self.http() as client:
            raw = device.manifest(client).content
            serial = verify_manifest(raw, device_id, self.key).serial
            answer = device.status(client, {"phase": phase, "serial": serial})
        assert answer.status_code == 204, answer.text


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    repo = FleetRepo(tmp_path / "fleet")
    repo.write("groups/stable.yaml", STAGED)
    repo.commit("stable devices get changes in two waves")
    key = keys.generate_ed25519()
    settings = Settings.from_mapping(
        {
            "data_dir": tmp_path / "data",
            "repo": str(repo.path),
            "poll_interval": 3600.0,
            "heartbeat_flush_interval": 0.2,
            "database_url": f"sqlite:///{tmp_path / 'server.db'}",
        }
    )
    app = create_app(settings, manifest_key=key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.02)
    kx = app.state.kx
    token = kx.store.create_api_token(f"admin-{secrets.token_hex(3)}", "admin", now=time.time())
    out = Fleet(f"http://127.0.0.1:{sock.getsockname()[1]}", token, kx, key, {})
    enroll = out.admin("POST", "/v1/admin/enrollment-tokens")["token"]
    with out.http() as client:
        for i in range(5):
            device = SimDevice(f"stable-{i:02d}", labels={"ring": "stable"})
            assert device.enroll(client, token=enroll).status_code == 201
            out.devices[device.device_id] = device
    for device_id in out.devices:
        out.report(device_id, "healthy")
    repo.write("kernex.yaml", kernex_yaml(version="1.1.0", greeting="hello"))
    repo.commit("app 1.1.0")
    assert out.admin("POST", "/v1/admin/reconcile")["state"] == "deployed"
    accounts = Accounts(kx.store.sessions)
    accounts.add("olga", "operator", PASSWORD, now=time.time())
    accounts.add("vic", "viewer", PASSWORD, now=time.time())
    try:
        yield out
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def log_in(page: Any, base: str, name: str) -> None:
    page.goto(f"{base}/ui/")
    assert "/ui/login" in page.url  # no page without a session
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(f"{base}/ui/")


def test_the_dashboard_in_a_browser(fleet: Fleet, tmp_path: Path) -> None:
    expect = sync_api.expect
    shots = tmp_path / "screenshots"
    shots.mkdir()
    [rollout] = fleet.admin("GET", "/v1/admin/rollouts")["rollouts"]
    assert rollout["state"] == "running"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        problems: list[str] = []

        def console(message: Any) -> None:
            if message.type == "error" and "favicon" not in message.location.get("url", ""):
                problems.append(f"{message.text} {message.location}")

        page.on("console", console)

        log_in(page, fleet.base, "olga")
        expect(page.locator("#who")).to_have_text("olga (operator)")
        expect(page.locator("#online")).to_have_text("5")
        expect(page.locator("#active-rollouts")).to_have_text("1")
        page.screenshot(path=str(shots / "overview.png"), full_page=True)

        page.click("text=Devices")
        page.fill("#label", "ring=stable")
        page.fill("#q", "stable-03")
        page.click("#apply")
        expect(page.locator("tr[data-device]")).to_have_count(1)
        page.screenshot(path=str(shots / "devices.png"), full_page=True)
        page.click("a:text-is('stable-03')")
        expect(page.locator("#device-id")).to_have_text("stable-03")
        expect(page.locator("#phase")).to_have_text("healthy")
        fleet.report("stable-03", "downloading")  # the page shows it without a reload
        expect(page.locator("#phase")).to_have_text("downloading", timeout=WAIT_MS)
        page.screenshot(path=str(shots / "device.png"), full_page=True)

        page.click("text=Rollouts")
        page.click(f"#pause-{rollout['id']}")
        page.click("#confirm")  # the act asks first
        page.wait_for_url(f"{fleet.base}/ui/rollouts")
        expect(page.locator(f"tr[data-rollout='{rollout['id']}'] .state")).to_have_text("paused")
        assert fleet.admin("GET", f"/v1/admin/rollouts/{rollout['id']}")["state"] == "paused"
        page.screenshot(path=str(shots / "rollout-paused.png"), full_page=True)
        page.click(f"#resume-{rollout['id']}")
        page.click("#confirm")
        expect(page.locator(f"tr[data-rollout='{rollout['id']}'] .state")).to_have_text("running")
        page.click("text=Log out")
        page.wait_for_url("**/ui/login")

        log_in(page, fleet.base, "vic")
        page.click("text=Rollouts")
        expect(page.locator(f"#pause-{rollout['id']}")).to_have_count(0)  # no button
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        answer = page.request.post(
            f"{fleet.base}/ui/rollouts/{rollout['id']}/pause",
            form={"csrf": csrf or "", "confirm": "yes"},
        )
        assert answer.status == 403  # and refused when asked all the same
        assert "needs operator" in answer.text()
        page.screenshot(path=str(shots / "viewer-rollouts.png"), full_page=True)
        browser.close()
    assert fleet.admin("GET", f"/v1/admin/rollouts/{rollout['id']}")["state"] == "running"
    assert not problems, problems  # no CSP violation, no script error
    actors = {e["actor"] for e in fleet.admin("GET", "/v1/admin/audit?action=rollout.pause")[
        "entries"]}  # fmt: skip
    assert "user:olga" in actors
    assert sorted(p.name for p in shots.iterdir()) == [
        "device.png", "devices.png", "overview.png", "rollout-paused.png", "viewer-rollouts.png",
    ]  # fmt: skip
