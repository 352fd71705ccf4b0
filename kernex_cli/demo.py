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
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from kernex_agent.simdevice import DeviceRecord
from kernex_agent.simulate import SimFleet, SimSettings
from kernex_cli.fleet_edit import unset_value
from kernex_cli.localserver import KERNEX, LocalServer
from kernex_core.errors import KernexError
from kernex_git import Repository

# All simulated devices enroll from 127.0.0.1: no per-address enrollment limit here.
SERVER_SETTINGS = {"poll_interval": 1.0, "heartbeat_flush_interval": 1.0, "enroll_rate": 0.0}
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
HEALTH_FAILS = """#!/bin/sh
# hello 1.2.0 was built against a sensor service no device runs: it fails everywhere.
echo "hello $KERNEX_VERSION: cannot reach the sensor service on port 7007" >&2
exit 1
"""
# The last act's group `all` stages its releases: one wave of a tenth, then everyone.
STAGED_GROUP = "all"
STAGED_ROLLOUT = """\
rollout:                # a release reaches a tenth of the fleet first
  waves: [10%, 100%]
  failure_threshold: 0% # one failed device halts the rollout
  pause: 2s             # a healthy first wave is promoted after this
  auto_rollback: true   # on a halt, serve the previous state to devices that moved
"""
STAGED_COMMIT = "all: stage releases in two waves, halt on the first failure"


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


DASHBOARD_USER = "demo"


@dataclass
class DemoResult:
    workspace: Path
    server_url: str
    admin_token: str
    timings: list[Timing] = field(default_factory=list)
    dashboard_user: str = DASHBOARD_USER
    dashboard_password: str = ""  # a dashboard login (kernex_server.ui), made per run


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


def prepare_fleet_repo(path: Path) -> Repository:
    """``kernex init`` the template, then start from no bundles (they are pushed later)."""
    from kernex_cli.fleet_source import init_fleet_repo

    init_fleet_repo(path)
    repo = Repository.open(path)
    edits = {
        "kernex.yaml": [["defaults", "bundles"], ["rollout"]],
        "groups/canary.yaml": [["bundles"], ["rollout"]],
        "devices/lab-bench-1.yaml": [["bundles"]],
    }
    for rel, keys in edits.items():
        target = path / rel
        for key in keys:
            target.write_text(unset_value(target.read_text(), key, source=rel))
    # the demo builds and pushes its own hello versions, so the template's pins go
    catalog = path / "bundles/hello.yaml"
    catalog.write_text(catalog.read_text().split("versions:")[0] + "versions: {}\n")
    repo.commit(
        [*edits, "bundles/hello.yaml"],
        "demo: start with no bundles; `kernex bundle push` adds them",
    )
    return repo


class Stage:
    """A workspace with a fleet repository, a running server and a simulated fleet."""

    def __init__(self, root: Path, *, devices: int, fleet_settings: dict[str, Any]) -> None:
        self.root = root
        self.devices = devices
        self.fleet_settings = fleet_settings
        self.repo: Repository | None = None
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

    async def add_dashboard_user(self) -> str:
        """An operator who can log in to the dashboard; its password, new each run."""
        assert self.server is not None  # noqa: S101
        password = secrets.token_urlsafe(12)
        body = {"name": DASHBOARD_USER, "role": "operator", "password": password}
        resp = await self.http.post(
            f"{self.server.base_url}/v1/admin/users", json=body, headers=self.admin_headers()
        )
        if resp.status_code != 201:
            raise DemoError(f"cannot add the dashboard user: {resp.status_code} {resp.text}")
        return password

    async def admin_get(self, path: str) -> dict[str, Any]:
        assert self.server is not None  # noqa: S101
        resp = await self.http.get(f"{self.server.base_url}{path}", headers=self.admin_headers())
        if resp.status_code != 200:
            raise DemoError(f"GET {path} failed: {resp.status_code} {resp.text}")
        answer: dict[str, Any] = resp.json()
        return answer

    async def desired_serials(self) -> dict[str, int | None]:
        """Each device's desired (served) manifest serial, as the server has it now."""
        rows = (await self.admin_get("/v1/admin/devices"))["devices"]
        return {d["id"]: d["desired_serial"] for d in rows}

    async def kernex(self, *args: str) -> str:
        """Run a real ``kernex`` command as a child process; its output, or DemoError.

        It talks to the demo's server, never to one the user configured."""
        env = dict(os.environ)
        if self.server is not None:
            env.update(KERNEX_SERVER=self.server.base_url, KERNEX_TOKEN=self.server.admin_token)
        proc = await asyncio.create_subprocess_exec(
            *KERNEX,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
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
        result.dashboard_password = await st.add_dashboard_user()
        say.step(
            f"Made a dashboard login: {server.base_url}/ui/ as {DASHBOARD_USER!r} (operator)",
            f"kernex users add {DASHBOARD_USER} --role operator",
        )
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
            await self._push_bundle(src)
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
        await self._staged_rollout(result)
        return result

    async def _push_bundle(self, src: Path) -> None:
        st = self.stage
        assert st.server is not None  # noqa: S101 - started by the story
        archive = src.parent / f"{src.name}.tar.gz"
        await st.kernex("bundle", "build", str(src), "-o", str(archive))
        await st.kernex(
            "bundle", "push", str(archive), "--repo", str(st.repo_path),
            "--server", st.server.base_url, "--token", st.server.admin_token,
        )  # fmt: skip
        self.say.step(
            f"Built {archive.name} and uploaded it; bundles/hello.yaml pins its sha256",
            f"kernex bundle build {src.name} && kernex bundle push {archive.name}",
        )

    def _stage_group(self) -> None:
        """The operator's edit: a rollout block in groups/all.yaml, committed with git."""
        rel = f"groups/{STAGED_GROUP}.yaml"
        target = self.stage.repo_path / rel
        target.write_text(target.read_text().rstrip("\n") + "\n" + STAGED_ROLLOUT)
        Repository.open(self.stage.repo_path).commit([rel], STAGED_COMMIT)

    async def _staged_rollout(self, result: DemoResult) -> None:
        """The last act: a release that fails everywhere reaches the first wave only."""
        st, say, n = self.stage, self.say, self.options.devices
        await self._push_bundle(write_bundle_dir(self.root / "build", "1.2.0", HEALTH_FAILS))
        await asyncio.to_thread(self._stage_group)
        await st.reconcile()
        say.step(
            f"Gave group {STAGED_GROUP} a rollout: a first wave of 10%, then 100% after "
            "2 s; any failure halts it and rolls its devices back",
            f'$EDITOR groups/{STAGED_GROUP}.yaml && git commit -am "{STAGED_COMMIT}"',
        )
        before = await st.desired_serials()
        await st.kernex(
            "deploy", "hello@1.2.0", "--group", STAGED_GROUP, "--repo", str(st.repo_path)
        )
        committed = time.time()
        revision = await asyncio.to_thread(Repository.open(st.repo_path).head)
        await st.reconcile()
        halted = await self._until_halted(revision)
        halted_after = time.time() - committed
        result.timings.append(Timing("halt hello 1.2.0", halted_after))
        detail = await st.admin_get(f"/v1/admin/rollouts/{halted['id']}")
        canaries = {d["id"]: int(d["new_serial"]) for d in detail["device_list"] if d["admitted"]}

        def back(r: DeviceRecord) -> bool:
            took = canaries.get(r.device_id)
            return _on("1.0.0", "healthy")(r) and (took is None or (r.serial or 0) > took)

        s = await self._converge(back, committed, "roll back hello 1.2.0")
        result.timings.append(Timing("auto-rollback 1.2.0", s))
        failed = [r for r in self._records() if _failed_on(r, canaries.get(r.device_id))]
        say.step(
            f"hello 1.2.0 reached the first wave only: {len(canaries)} of {n} devices took "
            f"it, {len(failed)} failed its health check, and the server halted rollout "
            f"{halted['id']} ({halted_after:.1f} s); auto rollback served those devices 1.0.0 "
            f"again under a higher serial; the other {n - len(canaries)} never received "
            f"1.2.0 ({s:.1f} s)",
            f"kernex deploy hello@1.2.0 --group {STAGED_GROUP}",
        )
        say.note(f"rollout {halted['id']} halted: {halted['reason']}")
        devices = await self._check_staged(int(halted["id"]), before, canaries)
        for report in _failure_reports(devices, canaries)[:1]:
            say.note(f"{report['device']} reported: {report['error']}")
            tail = (report.get("log_tail") or "").strip().splitlines()
            if tail:
                say.note(f"hook log: {tail[0]}")
        assert st.server is not None  # noqa: S101
        shown = await st.kernex(
            "rollouts", "list",
            "--server", st.server.base_url, "--token", st.server.admin_token,
        )  # fmt: skip
        say.step(
            "Every device is healthy on the version it had; the rollout shows why",
            f"kernex rollouts list   # and `kernex rollouts show {halted['id']}` for each "
            "device's wave, serial and phase",
        )
        for line in shown.rstrip().splitlines():
            say.note(line)

    async def _until_halted(self, revision: str) -> dict[str, Any]:
        """Follow the commit's rollout, noting its wave and state, until the server halts it."""
        from kernex_cli.rollouts_cmds import wave_progress

        deadline = time.monotonic() + self.options.step_timeout
        said = ""
        while True:
            self._show()
            rows = (await self.stage.admin_get("/v1/admin/rollouts"))["rollouts"]
            found = next((r for r in rows if r["revision"] == revision), None)
            if found is not None:
                line = f"rollout {found['id']}: {found['state']}, {wave_progress(found)}"
                if line != said:
                    self.say.note(line)
                    said = line
                if found["state"] == "halted":
                    return dict(found)
                if found["state"] not in ("running", "paused"):
                    raise DemoError(f"rollout {found['id']} ended {found['state']}, not halted")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the server did not halt the rollout of {revision[:12]} within "
                    f"{self.options.step_timeout:g} s"
                    + ("" if found else ": no rollout started for that commit"),
                    hint="Look at the server log in the workspace (server.log).",
                )
            await asyncio.sleep(0.1)

    async def _check_staged(
        self, rollout_id: int, before: dict[str, int | None], canaries: dict[str, int]
    ) -> list[dict[str, Any]]:
        """What the act claims, as the server records it: the rollout is halted, the
        devices outside the first wave were never served or reported 1.2.0 and kept their
        serial, and every device is healthy on 1.0.0 again."""
        st = self.stage
        rows = (await st.admin_get("/v1/admin/rollouts"))["rollouts"]
        state = next((r["state"] for r in rows if r["id"] == rollout_id), None)
        if state != "halted":
            raise DemoError(f"rollout {rollout_id} is {state}, not halted")
        if not canaries or len(canaries) == len(before):
            raise DemoError(f"rollout {rollout_id} admitted {len(canaries)} devices at once")
        deadline = time.monotonic() + 10  # the last reports may still be on their way
        while True:
            devices = await asyncio.gather(
                *(st.admin_get(f"/v1/admin/devices/{device_id}") for device_id in sorted(before))
            )
            wrong = [
                f"{d['id']}: {problem}"
                for d in devices
                if (problem := _staged_problem(d, before[d["id"]], canaries.get(d["id"])))
            ]
            if not wrong:
                return list(devices)
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{len(wrong)} devices are not where the halted rollout should leave them: "
                    + "; ".join(wrong[:5])
                )
            await asyncio.sleep(0.2)

    def _records(self) -> list[DeviceRecord]:
        assert self.stage.fleet is not None  # noqa: S101
        return list(self.stage.fleet.records.values())

    async def _keep_running(self, result: DemoResult) -> None:
        self.say.note("The server and the devices keep running; Ctrl-C stops them.")
        while True:
            self._show()
            await asyncio.sleep(1)


def _failed_on(r: DeviceRecord, serial: int | None) -> bool:
    """Whether the device reported ``serial`` as failed or rolled back."""
    return serial is not None and any(
        phase in ("failed", "rolled_back") and at_serial == serial
        for _at, phase, at_serial, _rev in r.events
    )


def _failure_reports(
    devices: Sequence[dict[str, Any]], canaries: dict[str, int]
) -> list[dict[str, Any]]:
    """The first wave's reports of the new serial as failed or rolled back (server side)."""
    return [
        {"device": d["id"], **h}
        for d in devices
        for h in d["status_history"]
        if h["serial"] == canaries.get(d["id"]) and h["phase"] in ("failed", "rolled_back")
    ]


def _names(bundles: dict[str, Any] | None, version: str) -> bool:
    return (bundles or {}).get("hello") == version


def _staged_problem(device: dict[str, Any], before: int | None, took: int | None) -> str | None:
    """Why one device is not where the halted rollout should leave it, or None."""
    served = any(_names(d["bundles"], "1.2.0") for d in device["deployments"])
    reported = any(_names(h["bundles"], "1.2.0") for h in device["status_history"])
    status = device["status"] or {}
    if status.get("phase") != "healthy" or not _names(status.get("bundles"), "1.0.0"):
        return f"reports {status.get('phase')} on {status.get('bundles')}"
    if device["reported_serial"] != device["desired_serial"]:
        return f"reports serial {device['reported_serial']}, not {device['desired_serial']}"
    if took is None:
        if served or reported:
            return "outside the first wave, yet it was served or reported hello 1.2.0"
        if device["desired_serial"] != before:
            return f"outside the first wave, yet its serial moved from {before}"
        return None
    if not served:
        return "in the first wave, yet never served hello 1.2.0"
    if (device["desired_serial"] or 0) <= took:
        return f"in the first wave, yet not rolled back past serial {took}"
    return None


def phase_counts(records: Sequence[DeviceRecord]) -> Counter[str]:
    return Counter(r.phase for r in records)


def version_counts(records: Sequence[DeviceRecord]) -> Counter[str]:
    return Counter(r.bundles.get("hello", "-") for r in records)
