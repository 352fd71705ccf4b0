"""A fleet simulator: many real agents in one process and one event loop.

Each simulated device is a real ``Agent`` with its own key and data directory under a
root, talking to a real server over one shared ``httpx.AsyncClient``. What differs from a
device is only at the edges the agent already takes as arguments:

- hooks run in process (``SimHookRunner``): a behaviour (``ok``, ``fail-health``,
  ``fail-install``, ``hang``, ``slow``) decides each hook's result without starting a
  process, so a thousand devices fit on two cores (a hook process costs a few
  milliseconds of fork and exec per hook; 1,000 devices x 2 hooks would take seconds of
  CPU per deploy). ``real`` runs the bundle's own hook files as processes instead, with
  the device's labels in ``KERNEX_SIM_LABELS`` so a hook can play per-device hardware;
- files are written without fsync (``NoSyncFS``): power loss is not simulated;

::

    fleet = SimFleet(SimSettings(server_url=..., enroll_token=..., devices=100, root=...))
    await fleet.enroll_all()
    await fleet.run(stop)              # until the asyncio.Event is set
    fleet.summary()                    # manifest change -> healthy, per device
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from kernex_agent.agent import Agent, CycleResult
from kernex_agent.config import AgentConfig
from kernex_agent.enroll import enroll
from kernex_agent.hooks import HookResult, SubprocessHookRunner
from kernex_agent.state import AgentState
from kernex_agent.storage import DeviceFS
from kernex_core import keys
from kernex_core.errors import KernexError
from kernex_core.manifest import Manifest
from kernex_core.protocol import Phase

BEHAVIOURS = ("ok", "fail-health", "fail-install", "hang", "slow", "real")
Clock = Callable[[], float]
DEVICES_PER_POOL = 25  # devices sharing one httpx connection pool


class SimulationError(KernexError):
    """The simulated fleet could not be set up."""


@dataclass(frozen=True)
class BehaviourRule:
    """Devices whose label ``key`` is ``value`` get ``behaviour``."""

    key: str
    value: str
    behaviour: str


@dataclass(frozen=True)
class SimSettings:
    server_url: str
    enroll_token: str
    devices: int
    root: Path
    labels: Mapping[str, Sequence[str]] = field(default_factory=dict)  # values dealt in turn
    behaviour: str = "ok"
    rules: Sequence[BehaviourRule] = ()  # first match wins over ``behaviour``
    id_prefix: str = "sim"
    poll_wait: int = 30  # seconds the server may hold each long poll
    slow_hook: float = 2.0  # seconds a ``slow`` hook takes at most
    enroll_concurrency: int = 50  # enrollments in flight at once
    seed: int = 0

    def device_id(self, index: int) -> str:
        return f"{self.id_prefix}-{index:04d}"

    def labels_for(self, index: int) -> dict[str, str]:
        return {k: values[index % len(values)] for k, values in self.labels.items() if values}

    def behaviour_for(self, labels: Mapping[str, str]) -> str:
        for rule in self.rules:
            if labels.get(rule.key) == rule.value:
                return rule.behaviour
        return self.behaviour


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

    def healthy_at(self, revision: str) -> float | None:
        """When this device first reported healthy on ``revision``."""
        for at, phase, _serial, rev in self.events:
            if phase == Phase.HEALTHY.value and rev == revision:
                return at
        return None


class SimAgent(Agent):
    """An ``Agent`` that also notes its reports and manifest changes in a ``DeviceRecord``."""

    record: DeviceRecord

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
        rec.phase = phase.value
        rec.serial = serial if serial is not None else state.applied_serial
        rec.revision = state.applied_revision
        rec.bundles = state.bundle_versions()
        rec.error = error
        rec.log_tail = log_tail
        rec.events.append((now, phase.value, rec.serial, rec.revision))
        if phase is Phase.HEALTHY and rec.changed_at is not None:
            rec.convergences.append(now - rec.changed_at)
            rec.changed_at = None
        await super().report(phase, state, error=error, log_tail=log_tail, serial=serial)


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


@dataclass(frozen=True)
class Summary:
    devices: int
    phases: dict[str, int]
    convergences: int  # manifest changes that ended healthy
    p50: float
    p90: float
    p100: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SimFleet:
    def __init__(
        self,
        settings: SimSettings,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Clock = time.time,
    ) -> None:
        if settings.behaviour not in BEHAVIOURS:
            raise SimulationError(
                f"unknown behaviour {settings.behaviour!r}",
                hint=f"Use one of {', '.join(BEHAVIOURS)}.",
            )
        self.settings = settings
        self.clock = clock
        # httpcore scans its whole pool on every request (O(connections)), so one pool for a
        # thousand devices spends most of the CPU there; small pools keep each scan short.
        # Every device holds one long poll open, plus one report or download at a time.
        self._own_http = http is None
        shards = 1 if http is not None else max(1, -(-settings.devices // DEVICES_PER_POOL))
        per_pool = min(settings.devices, DEVICES_PER_POOL) * 2 + 4
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self.pools = (
            [http]
            if http is not None
            else [httpx.AsyncClient(limits=limits, timeout=60) for _ in range(shards)]
        )
        self.http = self.pools[0]
        self.records: dict[str, DeviceRecord] = {}
        self.agents: list[SimAgent] = []
        self.fs = NoSyncFS()

    async def aclose(self) -> None:
        if self._own_http:
            for pool in self.pools:
                await pool.aclose()

    async def enroll_all(self) -> None:
        """Enroll every device (keys made here), at most ``enroll_concurrency`` at a time."""
        s = self.settings
        s.root.mkdir(parents=True, exist_ok=True)
        gate = asyncio.Semaphore(s.enroll_concurrency)

        async def one(index: int) -> SimAgent:
            device_id = s.device_id(index)
            labels = s.labels_for(index)
            behaviour = s.behaviour_for(labels)
            record = DeviceRecord(device_id, labels, behaviour)
            self.records[device_id] = record
            data_dir = s.root / device_id
            http = self.pools[index % len(self.pools)]
            async with gate:
                await enroll(
                    http,
                    server_url=s.server_url,
                    data_dir=data_dir,
                    device_id=device_id,
                    token=s.enroll_token,
                    labels=labels,
                    wait_for_approval=False,
                    clock=self.clock,
                    sleep=asyncio.sleep,
                    fs=self.fs,
                )
            config = AgentConfig(
                server_url=s.server_url,
                device_id=device_id,
                data_dir=data_dir,
                poll_wait=s.poll_wait,
            )
            rng = random.Random(f"{s.seed}-{device_id}")  # noqa: S311 - simulation, not secrets
            key = keys.load_private_key_pem((data_dir / "device.key").read_bytes())
            agent = SimAgent(
                config,
                http,
                key=key,
                clock=self.clock,
                hooks=SimHookRunner(behaviour, labels, rng, s.slow_hook),
                fs=self.fs,
                rng=rng,
            )
            agent.record = record
            record.phase = "enrolled"
            return agent

        self.agents = list(await asyncio.gather(*(one(i) for i in range(s.devices))))

    async def run(self, stop: asyncio.Event) -> None:
        """Run every agent until ``stop`` is set; long polls in flight are cancelled."""
        tasks = [asyncio.ensure_future(agent.run_forever(stop)) for agent in self.agents]
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def phases(self) -> Counter[str]:
        return Counter(r.phase for r in self.records.values())

    def summary(self) -> Summary:
        times = [t for r in self.records.values() for t in r.convergences]
        return Summary(
            devices=len(self.records),
            phases=dict(sorted(self.phases().items())),
            convergences=len(times),
            p50=percentile(times, 50),
            p90=percentile(times, 90),
            p100=percentile(times, 100),
        )

    def per_device(self) -> list[dict[str, Any]]:
        return [
            {
                "device": r.device_id,
                "behaviour": r.behaviour,
                "phase": r.phase,
                "bundles": r.bundles,
                "convergences": [round(t, 3) for t in r.convergences],
                "median": round(statistics.median(r.convergences), 3) if r.convergences else None,
            }
            for r in sorted(self.records.values(), key=lambda r: r.device_id)
        ]
