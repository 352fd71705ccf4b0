"""A full disk (ENOSPC injected at the file-system edge) loses nothing."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import BinaryIO

import pytest
from kit.agent import Device
from kit.bundles import bundle_bytes
from kit.simulator import ServerSimulator

from kernex_agent.storage import DeviceFS
from kernex_core.protocol import Phase


class FullDisk(DeviceFS):
    """Raises ENOSPC on the operations ``target`` picks while ``full`` is set."""

    def __init__(self) -> None:
        self.full = False
        self.target: str = ""
        self.hits = 0

    def _check(self, op: str, path: Path | None = None) -> None:
        if self.full and self.target in (op, f"{op}:{path.name if path else ''}"):
            self.hits += 1
            raise OSError(errno.ENOSPC, "No space left on device")

    def write_atomic(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        self._check("write", path)
        super().write_atomic(path, data, mode=mode)

    def write_chunk(self, fh: BinaryIO, data: bytes) -> None:
        self._check("chunk")
        super().write_chunk(fh, data)

    def rename(self, src: Path, dst: Path) -> None:
        self._check("rename", dst)
        super().rename(src, dst)


@pytest.mark.parametrize(
    "target",
    ["chunk", "write:journal.json", "write:state.json", "write:config.json", "rename"],
)
def test_disk_full_at_any_write_loses_nothing(tmp_path: Path, target: str) -> None:
    sim = ServerSimulator()
    fs = FullDisk()
    dev = Device(tmp_path, sim, fs=fs)
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)], config={"v": 1})
    assert dev.cycle().phase is Phase.HEALTHY
    state_before = dev.agent.load_state()

    v2 = sim.add_bundle(bundle_bytes(tmp_path, "app", "2.0.0"), "app", "2.0.0")
    sim.publish("dev-1", [sim.entry(v2)], config={"v": 2})
    fs.full, fs.target = True, target
    result = dev.cycle()
    assert fs.hits >= 1
    assert not result.ok

    # Nothing lost: v1 runs, its state and config are intact, and the agent can restart.
    assert dev.current_version("app") == "1.0.0"
    assert dev.marker("app") == "1.0.0"
    assert json.loads((dev.data_dir / "config.json").read_text()) == {"v": 1}
    dev.agent = dev.new_agent()
    state = dev.agent.load_state()
    assert state.installed == state_before.installed
    assert state.applied_serial == 1

    # Space is freed: the device converges to v2.
    fs.full = False
    if state.failed is not None:
        state.failed.retry_at = 0
        dev.agent.save_state(state)
    assert dev.cycle().phase is Phase.HEALTHY
    assert dev.current_version("app") == "2.0.0"
    assert dev.marker("app") == "2.0.0"
    assert dev.last_report().bundles == {"app": "2.0.0"}
