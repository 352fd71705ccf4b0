"""``kernex demo``: the whole Kernex story on one machine, with nothing to set up.

A workspace holds a fleet repository made from the template, a server (a child process on
127.0.0.1, SQLite) and simulated devices running the real agent code in this process.
Every change to the fleet is made by the real ``kernex`` commands, as child processes,
so what the demo shows is what an operator types::

    result = await Demo(DemoOptions(devices=50), narrator).run()

The pieces (``Stage``: a workspace with its repository, server and fleet) are shared with
``bench/converge.py``. The narrator is told each step, the command that did it, and the
devices' phases as they change; ``demo_cmds`` renders that with Rich or as plain lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from kernex_agent.simulate import DeviceRecord, SimFleet, SimSettings
from kernex_cli.fleet_edit import unset_value
from kernex_cli.gitrepo import FleetRepo
from kernex_cli.localserver import KERNEX, LocalServer
from kernex_core.errors import KernexError

SERVER_SETTINGS = {"poll_interval": 1.0, "heartbeat_flush_interval": 1.0}
RING = ("canary", "stable", "stable", "stable")  # dealt in turn: a quarter are canaries
HW = ("rev-b", "rev-b", "rev-a")  # a third run the older hardware revision
FAILING_LABEL = ("hw", "rev-a")  # hello 1.1.0's health check fails there

INSTALL_HOOK = """#!/bin/sh
echo "hello $KERNEX_VERSION installed on $KERNEX_DEVICE_ID"
"""
HEALTH_OK = """#!/bin/sh
echo "hello $KERNEX_VERSION answers"
"""
HEALTH_NEEDS_REV_B = """#!/bin/sh
# hello 1.1.0 needs the sensor driver of hardware revision B; the simulator tells each
# device's labels in KERNEX_SIM_LABELS, as real hardware would answer a probe.
case ",$KERNEX_SIM_LABELS," in
  *,hw=rev-a,*) echo "hello $KERNEX_VERSION: no sensor driver on rev-a hardware" >&2; exit 1;;
esac
echo "hello $KERNEX_VERSION answers"
"""


class DemoError(KernexError):
    """The demo's story did not go as told."""


class Narrator(Protocol):
    def step(self, what: str, command: str | None = None) -> None: ...
    def note(self, text: str) -> None: ...
    def fleet(self, records: Sequence[DeviceRecord]) -> None: ...


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 50
    workspace: Path | None = None
    keep: bool = False
    step_timeout: float = 60.0  # seconds for the fleet to reach each step's end state


@dataclass
class Timing:
    what: str
    seconds: float


@dataclass
class DemoResult:
    workspace: Path
    server_url: str
    admin_token: str
    timings: list[Timing] = field(default_factory=list)


def write_bundle_dir(root: Path, version: str, health: str, *, payload: bytes = b"") -> Path:
    """A hello bundle source directory with real install and health hooks."""
    src = root / f"hello-{version}"
    (src / "hooks").mkdir(parents=True, exist_ok=True)
    (src / "kernex-bundle.yaml").write_text(
        f'name: hello\nversion: "{version}"\nhooks:\n'
        "  install: {run: hooks/install, timeout: 30}\n"
        "  health: {run: hooks/health, timeout: 30}\n"
    )
    for name, body in (("install", INSTALL_HOOK), ("health", health)):
        path = src / "hooks" / name
        path.write_text(body)
        path.chmod(0o755)
    (src / "greeting.txt").write_text(f"Hello from hello {version}\n")
    if payload:
        (src / "payload.bin").write_bytes(payload)
    return src


def prepare_fleet_repo(path: Path) -> FleetRepo:
    """``kernex init`` the template, then start from no bundles (they are pushed later)."""
    from kernex_cli.fleet_source import init_fleet_repo

    init_fleet_repo(path)
    repo = FleetRepo(path)
    edits = {
        "kernex.yaml": [["defaults", "bundles"], ["rollout"]],
        "groups/canary.yaml": [["bundles"], ["rollout"]],
    }
    for rel, keys in edits.items():
        target = path / rel
        for key in keys:
            target.write_text(unset_value(target.read_text(), key, source=rel))
    repo.commit(list(edits), "demo: start with no bundles; `kernex bundle push` adds them")
    return repo


class Stage:
    """A workspace with a fleet repository, a running server and a simulated fleet."""

    def __init__(self, root: Path, *, devices: int, fleet_settings: dict[str, Any]) -> None:
        self.root = root
        self.devices = devices
        self.fleet_settings = fleet_settings
        self.repo: FleetRepo | None = None
        self.server: LocalServer | None = None
        self.fleet: SimFleet | None = None
        self.http = httpx.AsyncClient(timeout=60)
        self.stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.enroll_token = ""

    @property
    def repo_path(self) -> Path:
        return self.root / "fleet"

    def admin_headers(self) -> dict[str, str]:
        assert self.server is not None  # noqa: S101 - set by start_server
        return {"Authorization": f"Bearer {self.server.admin_token}"}

    def start_server(self) -> LocalServer:
        self.repo = prepare_fleet_repo(self.repo_path)
        self.server = LocalServer(
            self.root / "server", repo=self.repo_path, settings=SERVER_SETTINGS
        )
        self.server.start()
        return self.server

    async def start_fleet(self) -> SimFleet:
        assert self.server is not None  # noqa: S101
        resp = await self.http.post(
            f"{self.server.base_url}/v1/admin/enrollment-tokens",
            json={"name": "demo devices", "max_uses": self.devices},
            headers=self.admin_headers(),
        )
        if resp.status_code != 201:
            raise DemoError(f"cannot create an enrollment token: {resp.text}")
        self.enroll_token = resp.json()["token"]
        settings = SimSettings(
            server_url=self.server.base_url,
            enroll_token=self.enroll_token,
            devices=self.devices,
            root=self.root / "devices",
            **self.fleet_settings,
        )
        self.fleet = SimFleet(settings)
        await self.fleet.enroll_all()
        self._runner = asyncio.ensure_future(self.fleet.run(self.stop))
        return self.fleet

    async def reconcile(self) -> dict[str, Any]:
        """What a push webhook does: make the server read the branch now."""
        assert self.server is not None  # noqa: S101
        resp = await self.http.post(
            f"{self.server.base_url}/v1/admin/reconcile", headers=self.admin_headers()
        )
        if resp.status_code != 200:
            raise DemoError(f"reconcile failed: {resp.status_code} {resp.text}")
        answer: dict[str, Any] = resp.json()
        if answer.get("state") in ("invalid", "unsigned"):
            raise DemoError(f"the server did not deploy the commit: {answer}")
        return answer

    async def kernex(self, *args: str) -> str:
        """Run a real ``kernex`` command as a child process; its output, or DemoError."""
        proc = await asyncio.create_subprocess_exec(
            *KERNEX,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise DemoError(f"`kernex {' '.join(args)}` failed:\n{text.strip()}")
        return text

    async def wait_for(
        self,
        goal: Callable[[DeviceRecord], bool],
        *,
        since: float,
        timeout: float,
        what: str,
        on_tick: Callable[[], None] | None = None,
    ) -> float:
        """Wait until every device meets ``goal``; seconds from ``since`` to the last one."""
        assert self.fleet is not None  # noqa: S101
        deadline = time.monotonic() + timeout
        while True:
            if on_tick is not None:
                on_tick()
            records = list(self.fleet.records.values())
            if all(goal(r) for r in records):
                last = max((r.events[-1][0] for r in records if r.events), default=since)
                return max(0.0, last - since)
            if self._runner is not None and self._runner.done():
                self._runner.result()  # raise what stopped the fleet
                raise DemoError("the simulated fleet stopped")
            if time.monotonic() > deadline:
                behind = [r for r in records if not goal(r)]
                sample = ", ".join(
                    f"{r.device_id} ({r.phase}, {r.bundles}, {r.error or ''})" for r in behind[:5]
                )
                raise DemoError(
                    f"{len(behind)} of {len(records)} devices did not {what} within "
                    f"{timeout:g} s: {sample}",
                    hint="Look at the server log in the workspace (server.log).",
                )
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.stop.set()
        if self._runner is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._runner, timeout=10)
        if self.fleet is not None:
            await self.fleet.aclose()
        await self.http.aclose()
        if self.server is not None:
            self.server.stop()


def _on(version: str | None, *phases: str) -> Callable[[DeviceRecord], bool]:
    def goal(r: DeviceRecord) -> bool:
        return r.phase in phases and r.bundles.get("hello") == version

    return goal


class Demo:
    def __init__(
        self,
        options: DemoOptions,
        narrator: Narrator,
        *,
        on_story_done: Callable[[DemoResult], None] | None = None,
    ) -> None:
        self.options = options
        self.on_story_done = on_story_done
        self.say = narrator
        self._temp = options.workspace is None
        self.root = Path(options.workspace or tempfile.mkdtemp(prefix="kernex-demo-")).resolve()
        self.stage = Stage(
            self.root,
            devices=options.devices,
            fleet_settings={
                "labels": {"ring": RING, "hw": HW, "site": ("demo",)},
                "behaviour": "real",
                "id_prefix": "device",
            },
        )

    def _show(self) -> None:
        if self.stage.fleet is not None:
            self.say.fleet(list(self.stage.fleet.records.values()))

    async def _converge(
        self, goal: Callable[[DeviceRecord], bool], since: float, what: str
    ) -> float:
        return await self.stage.wait_for(
            goal, since=since, timeout=self.options.step_timeout, what=what, on_tick=self._show
        )

    async def _commit_and_converge(
        self, args: Sequence[str], what: str, goal: Callable[[DeviceRecord], bool], result: Any
    ) -> float:
        await self.stage.kernex(*args, "--repo", str(self.stage.repo_path))
        committed = time.time()
        await self.stage.reconcile()
        seconds = await self._converge(goal, committed, what)
        result.timings.append(Timing(what, seconds))
        return seconds

    async def run(self) -> DemoResult:
        try:
            result = await self._story()
            if self.options.keep:
                if self.on_story_done is not None:
                    self.on_story_done(result)
                await self._keep_running(result)
            return result
        finally:
            await self.stage.close()
            if self._temp and not self.options.keep:
                shutil.rmtree(self.root, ignore_errors=True)

    async def _story(self) -> DemoResult:
        st, say, n = self.stage, self.say, self.options.devices
        say.step(
            f"Made a fleet repository from the template in {st.repo_path}", "kernex init fleet"
        )
        server = await asyncio.to_thread(st.start_server)
        say.step(
            f"Started a Kernex server on {server.base_url} (SQLite in {server.data_dir})",
            "kernex server init --repo fleet && kernex server run",
        )
        result = DemoResult(self.root, server.base_url, server.admin_token)
        started = time.time()
        await st.start_fleet()
        say.step(
            f"Enrolled {n} simulated devices (real agent code, one key each), labelled "
            "ring=canary|stable and hw=rev-a|rev-b",
            "kernex agent simulate --enroll-token ... --label ring=canary,stable",
        )
        await self._converge(_on(None, "healthy"), started, "report healthy")

        work = self.root / "build"
        v1 = write_bundle_dir(work, "1.0.0", HEALTH_OK)
        v2 = write_bundle_dir(work, "1.1.0", HEALTH_NEEDS_REV_B)
        for src in (v1, v2):
            archive = work / f"{src.name}.tar.gz"
            await st.kernex("bundle", "build", str(src), "-o", str(archive))
            await st.kernex(
                "bundle", "push", str(archive), "--repo", str(st.repo_path),
                "--server", server.base_url, "--token", server.admin_token,
            )  # fmt: skip
            say.step(
                f"Built {archive.name} and uploaded it; bundles/hello.yaml pins its sha256",
                f"kernex bundle build {src.name} && kernex bundle push {archive.name}",
            )
        await st.reconcile()

        s = await self._commit_and_converge(
            ["deploy", "hello@1.0.0", "--group", "all"],
            "deploy hello 1.0.0",
            _on("1.0.0", "healthy"),
            result,
        )
        say.step(f"All {n} devices run hello 1.0.0, {s:.1f} s after the commit",
                 "kernex deploy hello@1.0.0 --group all")  # fmt: skip

        key, value = FAILING_LABEL
        failing = sum(1 for r in self._records() if r.labels.get(key) == value)

        def split(r: DeviceRecord) -> bool:
            if r.labels.get(key) == value:
                return _on("1.0.0", "rolled_back")(r)
            return _on("1.1.0", "healthy")(r)

        s = await self._commit_and_converge(
            ["deploy", "hello@1.1.0", "--group", "all"], "deploy hello 1.1.0", split, result
        )
        say.step(
            f"hello 1.1.0 failed its health check on the {failing} {key}={value} devices: "
            f"they rolled back to 1.0.0 by themselves and reported rolled_back; the other "
            f"{n - failing} run 1.1.0 ({s:.1f} s)",
            "kernex deploy hello@1.1.0 --group all",
        )
        if failing:
            sample = next(r for r in self._records() if r.labels.get(key) == value)
            say.note(f"{sample.device_id} reported: {sample.error}")
            tail = (sample.log_tail or "").strip().splitlines()
            if tail:
                say.note(f"hook log: {tail[0]}")

        s = await self._commit_and_converge(
            ["rollback", "--group", "all"], "rollback", _on("1.0.0", "healthy"), result
        )
        say.step(
            f"Rolled the group back as a new Git commit: all {n} devices run hello 1.0.0 "
            f"({s:.1f} s)",
            "kernex rollback --group all",
        )
        return result

    def _records(self) -> list[DeviceRecord]:
        assert self.stage.fleet is not None  # noqa: S101
        return list(self.stage.fleet.records.values())

    async def _keep_running(self, result: DemoResult) -> None:
        self.say.note("The server and the devices keep running; Ctrl-C stops them.")
        while True:
            self._show()
            await asyncio.sleep(1)


def phase_counts(records: Sequence[DeviceRecord]) -> Counter[str]:
    return Counter(r.phase for r in records)


def version_counts(records: Sequence[DeviceRecord]) -> Counter[str]:
    return Counter(r.bundles.get("hello", "-") for r in records)
