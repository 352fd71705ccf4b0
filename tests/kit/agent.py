"""The agent in tests: an enrolled device (real enrollment against the simulator) with its
agent, and data-dir snapshots."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from kernex_agent.agent import Agent
from kernex_agent.config import AgentConfig, load_config
from kernex_agent.enroll import enroll
from kernex_agent.hooks import SubprocessHookRunner
from kernex_agent.storage import DeviceFS
from kit.simulator import TOKEN, ServerSimulator

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Device:
    """An enrolled device (real enrollment against the simulator) and its agent."""

    def __init__(
        self,
        root: Path,
        sim: ServerSimulator,
        device_id: str = "dev-1",
        *,
        release_key_files: tuple[Path, ...] = (),
        fs: DeviceFS | None = None,
        **overrides: Any,
    ) -> None:
        self.sim = sim
        self.device_id = device_id
        self.data_dir = root / device_id
        self.system = root / f"{device_id}-system"  # where install hooks write
        self.system.mkdir(parents=True)
        self.http = httpx.AsyncClient(transport=sim.transport())
        run(
            enroll(
                httpx.AsyncClient(transport=sim.transport()),
                server_url=sim.base_url,
                data_dir=self.data_dir,
                device_id=device_id,
                token=TOKEN,
                labels={"site": "test"},
                wait_for_approval=False,
                release_key_files=release_key_files,
                clock=sim.clock,
                sleep=asyncio.sleep,
            )
        )
        defaults: dict[str, Any] = {
            "poll_wait": 0,
            "request_timeout": 2.0,
            "read_timeout": 2.0,
            "retry_failed_base": 60.0,
        }
        defaults.update(overrides)
        self.config: AgentConfig = load_config(self.data_dir).with_overrides(**defaults)
        self.fs = fs
        self.hooks = SubprocessHookRunner(
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MARKER_DIR": str(self.system)}
        )
        self.agent = self.new_agent()

    def new_agent(self, **kwargs: Any) -> Agent:
        """A fresh Agent over the same data dir, as after a restart."""
        return Agent(
            self.config,
            httpx.AsyncClient(transport=self.sim.transport()),
            clock=self.sim.clock,
            hooks=self.hooks,
            fs=self.fs,
            **kwargs,
        )

    def cycle(self) -> Any:
        return run(self.agent.run_once())

    def marker(self, bundle: str) -> str | None:
        path = self.system / f"{bundle}.installed"
        return path.read_text().strip() if path.exists() else None

    def current_version(self, bundle: str) -> str | None:
        link = self.data_dir / "bundles" / bundle / "current"
        if not link.is_symlink():
            return None
        meta = (link / "kernex-bundle.yaml").read_text()
        for line in meta.splitlines():
            if line.startswith("version:"):
                return line.split(":", 1)[1].strip().strip('"')
        return None

    def last_report(self) -> Any:
        return self.sim.reports_for(self.device_id)[-1]


# Files a rejection is allowed to change: the report queue and the status summary.
REPORTING = ("reports", "status.json")
# A failed install may also record the failed serial, the journal and staging leftovers.
BOOKKEEPING = (*REPORTING, "state.json", "journal.json", "staging")


def snapshot(root: Path, exclude: tuple[str, ...] = REPORTING) -> dict[str, str]:
    """Every path under ``root`` with its type and content digest (or link target)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel.split("/")[0] in exclude:
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = (
                    f"file:{oct(st.st_mode)}:" + hashlib.sha256(path.read_bytes()).hexdigest()
                )
    return out
