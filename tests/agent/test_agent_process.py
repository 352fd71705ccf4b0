"""Real agent processes against the simulator on 127.0.0.1: rollback end to end, and a
SIGKILL after every journal step followed by a restart that must converge."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kit.bundles import OK, bundle_bytes
from kit.simulator import TOKEN, LoopbackServer, ServerSimulator

from kernex_agent.config import CRASH_AT_ENV, load_config
from kernex_agent.enroll import enroll
from kernex_agent.state import CRASH_POINTS
from kernex_core.fsutil import atomic_write_text
from kernex_core.protocol import Phase

pytestmark = pytest.mark.e2e


@pytest.fixture
def simulator() -> Iterator[ServerSimulator]:
    sim = ServerSimulator()
    with LoopbackServer(sim):
        yield sim


class ProcessDevice:
    def __init__(self, root: Path, sim: ServerSimulator, device_id: str) -> None:
        self.sim = sim
        self.device_id = device_id
        self.data_dir = root / device_id
        self.system = root / f"{device_id}-system"
        self.system.mkdir(parents=True)

        async def do_enroll() -> None:
            async with httpx.AsyncClient() as http:
                await enroll(
                    http,
                    server_url=sim.base_url,
                    data_dir=self.data_dir,
                    device_id=device_id,
                    token=TOKEN,
                    labels={},
                    wait_for_approval=False,
                    clock=sim.clock,
                    sleep=asyncio.sleep,
                )

        asyncio.run(do_enroll())
        config = load_config(self.data_dir).with_overrides(poll_wait=0, request_timeout=5.0)
        atomic_write_text(self.data_dir / "agent.json", json.dumps(config.to_dict()))

    def run(self, crash_at: str | None = None) -> int:
        env = {**os.environ, "MARKER_DIR": str(self.system), "KERNEX_LOG_LEVEL": "WARNING"}
        env.pop(CRASH_AT_ENV, None)
        if crash_at:
            env[CRASH_AT_ENV] = crash_at
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "kernex_agent",
                "run",
                "--once",
                "--data-dir",
                str(self.data_dir),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.returncode

    def link(self, bundle: str) -> str | None:
        link = self.data_dir / "bundles" / bundle / "current"
        return os.readlink(link) if link.is_symlink() else None

    def marker(self, bundle: str) -> str | None:
        path = self.system / f"{bundle}.installed"
        return path.read_text().strip() if path.exists() else None

    def state(self) -> dict:
        return json.loads((self.data_dir / "state.json").read_text())

    def journal(self) -> dict:
        return json.loads((self.data_dir / "journal.json").read_text())


def test_real_agent_installs_v1_then_rolls_back_a_failing_v2(
    tmp_path: Path, simulator: ServerSimulator
) -> None:
    sim = simulator
    dev = ProcessDevice(tmp_path, sim, "dev-e2e")
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish(dev.device_id, [sim.entry(v1)])
    assert dev.run() == 0
    assert dev.marker("app") == "1.0.0"
    failing = "#!/bin/sh\necho 'v2 is broken'\nexit 1\n"
    v2 = sim.add_bundle(bundle_bytes(tmp_path, "app", "2.0.0", health=failing), "app", "2.0.0")
    sim.publish(dev.device_id, [sim.entry(v2)])
    assert dev.run() == 1
    report = sim.reports_for(dev.device_id)[-1]
    assert report.phase is Phase.ROLLED_BACK
    assert report.bundles == {"app": "1.0.0"}
    assert "v2 is broken" in (report.log_tail or "")
    assert dev.marker("app") == "1.0.0"
    assert dev.link("app") == dev.state()["installed"]["app"]["slot"].join(("slots/", ""))
    status = subprocess.run(
        [sys.executable, "-m", "kernex_agent", "status", "--data-dir", str(dev.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(status.stdout)
    assert shown["installed"]["app"]["version"] == "1.0.0"
    assert shown["journal"]["step"] == "rolled_back"
    assert shown["trust_mode"] == "manifest-only"


@pytest.mark.parametrize("step", CRASH_POINTS)
def test_sigkill_at_each_journal_step_then_restart_converges(
    tmp_path: Path, simulator: ServerSimulator, step: str
) -> None:
    sim = simulator
    dev = ProcessDevice(tmp_path, sim, f"dev-{CRASH_POINTS.index(step)}")
    app1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    tool = sim.add_bundle(bundle_bytes(tmp_path, "tool", "1", install=OK), "tool", "1")
    sim.publish(dev.device_id, [sim.entry(app1), sim.entry(tool)], config={"v": 1})
    assert dev.run() == 0
    old = {"app": "1.0.0", "tool": "1"}
    assert sim.reports_for(dev.device_id)[-1].bundles == old

    app2 = sim.add_bundle(bundle_bytes(tmp_path, "app", "2.0.0"), "app", "2.0.0")
    sim.publish(dev.device_id, [sim.entry(app2)], config={"v": 2})  # tool is removed
    assert dev.run(crash_at=step) == -signal.SIGKILL
    assert dev.journal()["step"] == step or any(b["step"] == step for b in dev.journal()["bundles"])
    reports_before_restart = len(sim.reports_for(dev.device_id))

    # Restart while the server is down: recovery alone must leave a consistent device.
    sim.status_code = 503
    assert dev.run() == 1
    state = dev.state()
    versions = {k: v["version"] for k, v in state["installed"].items()}
    assert versions in (old, {"app": "2.0.0"})
    for name, bundle in state["installed"].items():
        assert dev.link(name) == "slots/" + bundle["slot"]
    assert dev.marker("app") == versions["app"]  # the system runs what `current` names
    assert dev.journal()["step"] in ("committed", "rolled_back")
    expected_config = {"v": 1} if versions == old else {"v": 2}
    assert json.loads((dev.data_dir / "config.json").read_text()) == expected_config
    sim.status_code = None

    assert dev.run() == 0  # send the queued reports, then converge
    new = {"app": "2.0.0"}
    after = sim.reports_for(dev.device_id)[reports_before_restart:]
    for report in after:  # every report tells the truth about what was installed then
        assert report.bundles in (old, new), report
        if report.phase is Phase.ROLLED_BACK:
            assert report.bundles == old
    assert after[-1].phase is Phase.HEALTHY
    assert after[-1].bundles == new
    assert after[-1].serial == 2
    state = dev.state()
    assert {k: v["version"] for k, v in state["installed"].items()} == new
    assert dev.link("app") == "slots/" + state["installed"]["app"]["slot"]
    assert dev.link("tool") is None
    assert dev.marker("app") == "2.0.0"
    assert json.loads((dev.data_dir / "config.json").read_text()) == {"v": 2}
    assert dev.journal()["step"] == "committed"
    slots = dev.data_dir / "bundles" / "app" / "slots"
    assert not [p for p in slots.iterdir() if p.name.startswith(".")]
    assert len(list(slots.iterdir())) <= 2
    assert dev.run() == 0  # and stays put
    assert sim.reports_for(dev.device_id)[-1].bundles == new
