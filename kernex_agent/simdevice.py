"""One simulated device of the fleet simulator (``kernex_agent.simulate``): a real
``Agent`` whose hooks run in process (``SimHookRunner``), whose files are written without
fsync (``NoSyncFS``), and which notes every report in a ``DeviceRecord``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kernex_agent.agent import Agent
from kernex_agent.hooks import HookResult, SubprocessHookRunner
from kernex_agent.install import CycleResult
from kernex_agent.state import AgentState
from kernex_agent.storage import DeviceFS
from kernex_core.errors import KernexError
from kernex_core.manifest import Manifest
from kernex_core.protocol import Phase

BEHAVIOURS = ("ok", "fail-health", "fail-install", "hang", "slow", "real")


class SimulationError(KernexError):
    """The simulated fleet could not be set up."""


class NoSyncFS(DeviceFS):
    """The agent's file edge without fsync: atomic renames stay, durability does not."""

    def write_atomic(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def sync_file(self, fh: BinaryIO) -> None:
        fh.flush()

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def switch_link(self, link: Path, target: str) -> None:
        tmp = link.with_name(f".{link.name}.tmp")
        self.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def remove_link(self, link: Path) -> None:
        self.unlink(link)


class SimHookRunner:
    """Hook results by behaviour, in process; ``real`` runs the hook files."""

    def __init__(self, behaviour: str, labels: Mapping[str, str], rng: random.Random, slow: float):
        if behaviour not in BEHAVIOURS:
            raise SimulationError(
                f"unknown behaviour {behaviour!r}", hint=f"Use one of {', '.join(BEHAVIOURS)}."
            )
        self.behaviour = behaviour
        self.rng = rng
        self.slow = slow
        sim_labels = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        self.real = SubprocessHookRunner({**os.environ, "KERNEX_SIM_LABELS": sim_labels})

    async def run(
        self, argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float
    ) -> HookResult:
        kind = env.get("KERNEX_HOOK", "")
        b = self.behaviour
        if b == "real":
            return await self.real.run(argv, cwd=cwd, env=env, timeout=timeout)
        if b == "hang":
            await asyncio.sleep(timeout)
            return HookResult(None, True, f"simulated {kind} hook hung\n")
        if b == "slow":
            await asyncio.sleep(self.rng.uniform(0, self.slow))
        if (b == "fail-health" and kind == "health") or (b == "fail-install" and kind == "install"):
            return HookResult(1, False, f"simulated {kind} failure\n")
        return HookResult(0, False, "")


@dataclass
class DeviceRecord:
    """What one simulated device reported, as it happened (clock seconds)."""

    device_id: str
    labels: dict[str, str]
    behaviour: str
    phase: str = "enrolling"
    serial: int | None = None
    revision: str | None = None
    bundles: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    log_tail: str | None = None
    changed_at: float | None = None  # when the last new manifest arrived
    events: list[tuple[float, str, int | None, str | None]] = field(default_factory=list)
    convergences: list[float] = field(default_factory=list)  # manifest change -> healthy (s)

    def note(self, event: Mapping[str, Any]) -> None:
        """Take one report (``SimAgent.report``'s event, or a worker's line about it)."""
        self.phase = event["phase"]
        self.serial = event["serial"]
        self.revision = event["revision"]
        self.bundles = dict(event["bundles"])
        self.error = event["error"]
        self.log_tail = event["log_tail"]
        self.events.append((event["at"], self.phase, self.serial, self.revision))
        if event.get("convergence") is not None:
            self.convergences.append(event["convergence"])

    def healthy_at(self, revision: str) -> float | None:
        """When this device first reported healthy on ``revision``."""
        for at, phase, _serial, rev in self.events:
            if phase == Phase.HEALTHY.value and rev == revision:
                return at
        return None


class SimAgent(Agent):
    """An ``Agent`` that also notes its reports and manifest changes in a ``DeviceRecord``."""

    record: DeviceRecord
    listener: Callable[[dict[str, Any]], None] | None = None  # told of every report

    async def apply(self, manifest: Manifest, state: AgentState, now: float) -> CycleResult:
        self.record.changed_at = self.clock()
        return await super().apply(manifest, state, now)

    async def report(
        self,
        phase: Phase,
        state: AgentState,
        *,
        error: str | None = None,
        log_tail: str | None = None,
        serial: int | None = None,
    ) -> None:
        rec = self.record
        now = self.clock()
        convergence = None
        if phase is Phase.HEALTHY and rec.changed_at is not None:
            convergence = now - rec.changed_at
            rec.changed_at = None
        event = {
            "device": rec.device_id,
            "at": now,
            "phase": phase.value,
            "serial": serial if serial is not None else state.applied_serial,
            "revision": state.applied_revision,
            "bundles": state.bundle_versions(),
            "error": error,
            "log_tail": log_tail,
            "convergence": convergence,
        }
        rec.note(event)
        if self.listener is not None:
            self.listener(event)
        await super().report(phase, state, error=error, log_tail=log_tail, serial=serial)
