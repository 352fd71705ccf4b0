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
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kernex_agent.config import AgentConfig
from kernex_agent.enroll import enroll
from kernex_agent.simdevice import (
    BEHAVIOURS,
    DeviceRecord,
    NoSyncFS,
    SimAgent,
    SimHookRunner,
    SimulationError,
)
from kernex_core import keys
from kernex_core.protocol import MAX_LOG_TAIL_BYTES

Clock = Callable[[], float]
DEVICES_PER_POOL = 25  # devices sharing one httpx connection pool


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
    enroll_concurrency: int = 50  # enrollments in flight at once (per worker)
    seed: int = 0
    workers: int = 1  # processes, each with its own event loop and a share of the devices
    more_servers: Sequence[str] = ()  # further servers on one database: devices dealt in turn

    def device_id(self, index: int) -> str:
        return f"{self.id_prefix}-{index:04d}"

    def server_for(self, index: int) -> str:
        servers = (self.server_url, *self.more_servers)
        return servers[index % len(servers)]

    def labels_for(self, index: int) -> dict[str, str]:
        return {k: values[index % len(values)] for k, values in self.labels.items() if values}

    def behaviour_for(self, labels: Mapping[str, str]) -> str:
        for rule in self.rules:
            if labels.get(rule.key) == rule.value:
                return rule.behaviour
        return self.behaviour

    def shard(self, worker: int) -> range:
        """The device indexes worker ``worker`` of ``workers`` runs (dealt in turn)."""
        return range(worker, self.devices, max(1, self.workers))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["root"] = str(self.root)
        out["labels"] = {k: list(v) for k, v in self.labels.items()}
        out["rules"] = [dict(r.__dict__) for r in self.rules]
        out["more_servers"] = list(self.more_servers)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimSettings:
        rest = {k: v for k, v in data.items() if k not in ("root", "rules")}
        rules = [BehaviourRule(**r) for r in data.get("rules", [])]
        return cls(root=Path(data["root"]), rules=rules, **rest)


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


class WorkerProcess:
    """One ``kernex_agent.simworker`` child: its settings in on stdin, reports out on stdout.

    Commands on stdin, one a line: the settings (JSON) first, then ``run`` and ``stop``
    (end of input stops it too). Lines on stdout: ``{"enrolled": n}``, one report event
    per line (``SimAgent.report``), or ``{"error": ..., "hint": ...}`` before it gives up.
    """

    def __init__(self, settings: SimSettings, index: int, records: dict[str, DeviceRecord]):
        self.settings = settings
        self.index = index
        self.records = records
        self.log_path = settings.root / f"worker-{index}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._enrolled = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    async def start(self) -> None:
        """Start the worker and wait until its devices are enrolled."""
        with open(self.log_path, "wb") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kernex_agent.simworker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                limit=4 * MAX_LOG_TAIL_BYTES + 64 * 1024,
            )
        line = json.dumps({"settings": self.settings.to_dict(), "worker": self.index})
        self.command(line)
        self._reader = asyncio.ensure_future(self._read())
        await self._enrolled

    def command(self, line: str) -> None:
        proc = self.proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(line.encode() + b"\n")

    async def _read(self) -> None:
        proc = self.proc
        if proc is None or proc.stdout is None:
            return
        error: SimulationError | None = None
        while line := await proc.stdout.readline():
            message = json.loads(line)
            if "device" in message:
                self.records[message["device"]].note(message)
            elif "enrolled" in message:
                for index in self.settings.shard(self.index):
                    self.records[self.settings.device_id(index)].phase = "enrolled"
                if not self._enrolled.done():
                    self._enrolled.set_result(None)
            elif "error" in message:
                error = SimulationError(message["error"], hint=message.get("hint"))
        if not self._enrolled.done():
            self._enrolled.set_exception(
                error
                or SimulationError(
                    f"simulator worker {self.index} stopped while enrolling",
                    hint=f"See {self.log_path}.",
                )
            )

    async def wait_exit(self) -> int:
        assert self.proc is not None  # noqa: S101
        if self._reader is not None:
            await self._reader
        return await self.proc.wait()

    async def close(self, timeout: float = 15.0) -> None:
        """Stop the worker: end its input, wait, and kill it if it does not go."""
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(self.wait_exit(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._enrolled.done() and not self._enrolled.cancelled():
            self._enrolled.exception()  # retrieved: a failed start was raised by start()


class SimFleet:
    """The simulated devices, in this event loop or spread over ``settings.workers`` processes.

    With several workers, each runs ``kernex_agent.simworker``: its share of the devices
    (``SimSettings.shard``) in its own event loop, one JSON line per report back over a
    pipe, so ``records`` here hold every device, with the times the workers measured.
    ``worker`` makes this fleet one such share (the worker process's own fleet).
    """

    def __init__(
        self,
        settings: SimSettings,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Clock = time.time,
        worker: int | None = None,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if settings.behaviour not in BEHAVIOURS:
            raise SimulationError(
                f"unknown behaviour {settings.behaviour!r}",
                hint=f"Use one of {', '.join(BEHAVIOURS)}.",
            )
        if settings.workers < 1:
            raise SimulationError(
                f"workers must be at least 1, not {settings.workers}",
                hint="Use --workers 1 to run every device in this process.",
            )
        self.settings = settings
        self.clock = clock
        self.listener = listener
        self.indices = settings.shard(worker) if worker is not None else range(settings.devices)
        self.spread = worker is None and settings.workers > 1 and http is None
        self.records: dict[str, DeviceRecord] = {}
        self.agents: list[SimAgent] = []
        self.fs = NoSyncFS()
        self._workers: list[WorkerProcess] = []
        # httpcore scans its whole pool on every request (O(connections)), so one pool for a
        # thousand devices spends most of the CPU there; small pools keep each scan short.
        # Every device holds one long poll open, plus one report or download at a time.
        self._own_http = http is None and not self.spread
        count = 0 if self.spread else len(self.indices)
        shards = 1 if http is not None else max(1, -(-count // DEVICES_PER_POOL))
        per_pool = min(count, DEVICES_PER_POOL) * 2 + 4
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self.pools = (
            [http]
            if http is not None
            else [httpx.AsyncClient(limits=limits, timeout=60) for _ in range(shards)]
            if not self.spread
            else []
        )

    def pids(self) -> list[int]:
        """The processes that run the devices (this one, or the workers)."""
        return [w.pid for w in self._workers] if self.spread else [os.getpid()]

    async def aclose(self) -> None:
        for worker in self._workers:
            await worker.close()
        if self._own_http:
            for pool in self.pools:
                await pool.aclose()

    def _new_record(self, index: int) -> DeviceRecord:
        s = self.settings
        labels = s.labels_for(index)
        record = DeviceRecord(s.device_id(index), labels, s.behaviour_for(labels))
        self.records[record.device_id] = record
        return record

    async def enroll_all(self) -> None:
        """Enroll every device (keys made here), at most ``enroll_concurrency`` at a time."""
        s = self.settings
        s.root.mkdir(parents=True, exist_ok=True)
        if self.spread:
            for index in self.indices:
                self._new_record(index)
            self._workers = [WorkerProcess(s, k, self.records) for k in range(s.workers)]
            await asyncio.gather(*(w.start() for w in self._workers))
            return
        gate = asyncio.Semaphore(s.enroll_concurrency)

        async def one(n: int, index: int) -> SimAgent:
            record = self._new_record(index)
            data_dir = s.root / record.device_id
            http = self.pools[n % len(self.pools)]
            async with gate:
                await enroll(
                    http,
                    server_url=s.server_for(index),
                    data_dir=data_dir,
                    device_id=record.device_id,
                    token=s.enroll_token,
                    labels=record.labels,
                    wait_for_approval=False,
                    clock=self.clock,
                    sleep=asyncio.sleep,
                    fs=self.fs,
                )
            config = AgentConfig(
                server_url=s.server_for(index),
                device_id=record.device_id,
                data_dir=data_dir,
                poll_wait=s.poll_wait,
            )
            rng = random.Random(f"{s.seed}-{record.device_id}")  # noqa: S311 - simulation
            key = keys.load_private_key_pem((data_dir / "device.key").read_bytes())
            agent = SimAgent(
                config,
                http,
                key=key,
                clock=self.clock,
                hooks=SimHookRunner(record.behaviour, record.labels, rng, s.slow_hook),
                fs=self.fs,
                rng=rng,
            )
            agent.record = record
            agent.listener = self.listener
            record.phase = "enrolled"
            return agent

        self.agents = list(await asyncio.gather(*(one(n, i) for n, i in enumerate(self.indices))))

    async def run(self, stop: asyncio.Event) -> None:
        """Run every agent until ``stop`` is set; long polls in flight are cancelled."""
        if self.spread:
            await self._run_workers(stop)
            return
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

    async def _run_workers(self, stop: asyncio.Event) -> None:
        for worker in self._workers:
            worker.command("run")
        exits = [asyncio.ensure_future(w.wait_exit()) for w in self._workers]
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait([*exits, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            for worker in self._workers:
                worker.command("stop")
            await asyncio.gather(*(w.close() for w in self._workers))
            for task in exits:
                task.cancel()
        if stopper not in done:
            raise SimulationError(
                "a simulator worker stopped before the fleet was stopped",
                hint=f"See the worker logs under {self.settings.root}.",
            )

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
