"""The agent's loop against the in-memory server simulator: installs, rollbacks, errors."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from kit.agent import Device, run, snapshot
from kit.bundles import OK, bundle_bytes
from kit.simulator import ServerSimulator

from kernex_agent.config import load_config
from kernex_agent.errors import AgentStateError
from kernex_agent.storage import DeviceFS
from kernex_cli.bundle_build import build_bundle
from kernex_core.protocol import Phase

FAIL = "#!/bin/sh\necho 'health: service does not answer' >&2\nexit 3\n"


def test_install_v1_then_failed_v2_rolls_back_to_v1(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)], config={"port": 8080})

    result = dev.cycle()

    assert result.ok, result
    assert result.phase is Phase.HEALTHY
    assert dev.marker("app") == "1.0.0"
    assert dev.current_version("app") == "1.0.0"
    assert json.loads((dev.data_dir / "config.json").read_text()) == {"port": 8080}
    phases = [r.phase for r in sim.reports_for("dev-1")]
    assert phases[-3:] == [Phase.DOWNLOADING, Phase.INSTALLING, Phase.HEALTHY]
    assert dev.last_report().bundles == {"app": "1.0.0"}
    assert dev.last_report().serial == 1

    v2 = sim.add_bundle(bundle_bytes(tmp_path, "app", "2.0.0", health=FAIL), "app", "2.0.0")
    sim.publish("dev-1", [sim.entry(v2)], config={"port": 8080})
    result = dev.cycle()

    assert not result.ok
    assert result.phase is Phase.ROLLED_BACK
    assert dev.current_version("app") == "1.0.0"
    assert dev.marker("app") == "1.0.0"  # v1's install hook ran again on restore
    report = dev.last_report()
    assert report.phase is Phase.ROLLED_BACK
    assert report.serial == 2
    assert report.bundles == {"app": "1.0.0"}
    assert "health hook of app@2.0.0 exited with status 3" in (report.error or "")
    assert "service does not answer" in (report.log_tail or "")
    slots = sorted(p.name for p in (dev.data_dir / "bundles/app/slots").iterdir())
    assert len(slots) == 1
    assert slots[0].startswith("1.0.0-")


def test_failed_serial_backs_off_but_a_new_serial_is_tried_at_once(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    bad = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0", health=FAIL), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(bad)])
    assert dev.cycle().phase is Phase.FAILED or dev.last_report().phase is Phase.ROLLED_BACK
    fetches = len(sim.bundle_fetches())

    again = dev.cycle()  # same serial: not retried before the backoff expires
    assert again.ok
    assert again.phase is None
    assert len(sim.bundle_fetches()) == fetches

    good = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.1"), "app", "1.0.1")
    sim.publish("dev-1", [sim.entry(good)])
    assert dev.cycle().phase is Phase.HEALTHY
    assert dev.current_version("app") == "1.0.1"


def test_install_hook_timeout_fails_and_leaves_nothing_installed(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    slow = sim.add_bundle(
        bundle_bytes(
            tmp_path,
            "app",
            "1.0.0",
            install="#!/bin/sh\necho start\nsleep 30\n",
            timeouts={"install": 0.5},
        ),
        "app",
        "1.0.0",
    )
    sim.publish("dev-1", [sim.entry(slow)])
    result = dev.cycle()
    assert not result.ok
    report = dev.last_report()
    assert "install hook of app@1.0.0 timed out after 0.5 s" in (report.error or "")
    assert "start" in (report.log_tail or "")
    assert dev.current_version("app") is None
    assert report.bundles == {}


def test_bundle_download_failure_keeps_the_installed_version(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)])
    assert dev.cycle().ok
    v2 = sim.add_bundle(bundle_bytes(tmp_path, "app", "2.0.0"), "app", "2.0.0")
    del sim.blobs[v2.sha256]  # the store lost it: 404
    sim.publish("dev-1", [sim.entry(v2)])
    result = dev.cycle()
    assert not result.ok
    assert result.phase is Phase.FAILED
    assert "answered 404" in (dev.last_report().error or "")
    assert dev.current_version("app") == "1.0.0"


def test_manifest_long_poll_timeout_and_unreachable_server_change_nothing(
    tmp_path: Path,
) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim, request_timeout=0.3)
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)])
    assert dev.cycle().ok
    before = snapshot(dev.data_dir)

    not_modified = dev.cycle()  # the long poll ends with 304
    assert not_modified.ok
    assert not_modified.phase is None
    assert sim.fetched[-1].headers.get("if-none-match")

    sim.manifest_delay = 5  # the server holds the request past wait + request_timeout
    stalled = dev.cycle()
    assert not stalled.ok
    assert "no answer in 0.3 s" in (stalled.error or "")
    sim.manifest_delay = 0
    sim.unreachable = True
    down = dev.cycle()
    assert not down.ok
    assert "connection refused" in (down.error or "")
    assert snapshot(dev.data_dir) == before
    assert dev.marker("app") == "1.0.0"


def test_reports_are_queued_while_unreachable_and_sent_oldest_first(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim, max_queued_reports=3)
    dev.cycle()
    sim.unreachable = True
    for _ in range(5):  # each rejected or failed cycle reports; the queue keeps the newest 3
        run(dev.agent.report(Phase.FAILED, dev.agent.load_state(), error="offline"))
    queued = sorted((dev.data_dir / "reports").iterdir())
    assert len(queued) == 3
    sim.unreachable = False
    sent_before = len(sim.reports)
    assert run(dev.agent.flush_reports())
    assert len(sim.reports) == sent_before + 3
    assert list((dev.data_dir / "reports").iterdir()) == []
    times = [r.reported_at for _, r in sim.reports[-3:]]
    assert times == sorted(times)


class RecordingFS(DeviceFS):
    """The real file edge, noting every path it writes, renames or creates."""

    def __init__(self) -> None:
        self.touched: list[Path] = []

    def write_atomic(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        self.touched.append(path)
        super().write_atomic(path, data, mode=mode)

    def mkdir(self, path: Path, *, mode: int = 0o755) -> None:
        self.touched.append(path)
        super().mkdir(path, mode=mode)

    def rename(self, src: Path, dst: Path) -> None:
        self.touched.append(dst)
        super().rename(src, dst)


def test_reports_go_straight_out_while_the_server_answers(tmp_path: Path) -> None:
    sim = ServerSimulator()
    fs = RecordingFS()
    dev = Device(tmp_path, sim, fs=fs)
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)])

    assert dev.cycle().phase is Phase.HEALTHY

    phases = [r.phase for r in sim.reports_for("dev-1")]
    assert phases[-3:] == [Phase.DOWNLOADING, Phase.INSTALLING, Phase.HEALTHY]
    queue = dev.data_dir / "reports"
    assert not queue.exists()
    assert [p for p in fs.touched if queue in p.parents or p == queue] == []


def test_reports_made_while_down_arrive_oldest_first_before_newer_ones(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    dev.cycle()
    sim.unreachable = True
    for n in range(3):
        run(dev.agent.report(Phase.FAILED, dev.agent.load_state(), error=f"offline {n}"))
    assert len(list((dev.data_dir / "reports").glob("*.json"))) == 3
    sim.unreachable = False
    sent_before = len(sim.reports)

    run(dev.agent.report(Phase.HEALTHY, dev.agent.load_state()))  # joins the end of the queue

    errors = [r.error for _, r in sim.reports[sent_before:]]
    assert errors == ["offline 0", "offline 1", "offline 2", None]
    assert list((dev.data_dir / "reports").iterdir()) == []


def test_a_stray_file_in_the_report_queue_does_not_stop_reporting(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    dev.cycle()
    (dev.data_dir / "reports").mkdir(exist_ok=True)
    (dev.data_dir / "reports" / "notes.json").write_text("{}")
    sim.unreachable = True
    run(dev.agent.report(Phase.FAILED, dev.agent.load_state(), error="offline"))
    queued = sorted(p.name for p in (dev.data_dir / "reports").iterdir())
    assert queued == ["000000000001.json", "notes.json"]


def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    payload = random.Random(7).randbytes(300_000)  # incompressible: a big archive
    data = bundle_bytes(tmp_path, "app", "1.0.0", files={"payload.bin": payload})
    blob = sim.add_bundle(data, "app", "1.0.0")
    cut = len(data) // 2

    async def broken(start: int) -> AsyncIterator[bytes]:
        yield data[start:cut]
        raise httpx.ReadError("simulated: connection reset")

    sim.bodies[blob.sha256] = broken
    sim.publish("dev-1", [sim.entry(blob)])
    first = dev.cycle()
    assert not first.ok
    assert "broke at byte" in (first.error or "")
    part = dev.data_dir / "staging" / f"{blob.sha256}.part"
    assert part.stat().st_size == cut

    del sim.bodies[blob.sha256]
    dev.agent = dev.new_agent()  # a restart, and the backoff has passed
    state = dev.agent.load_state()
    assert state.failed is not None
    state.failed.retry_at = 0
    dev.agent.save_state(state)
    assert dev.cycle().phase is Phase.HEALTHY
    assert sim.bundle_fetches()[-1].headers.get("range") == f"bytes={cut}-"
    assert dev.current_version("app") == "1.0.0"
    assert (dev.data_dir / "bundles/app/current/payload.bin").read_bytes() == payload


def test_config_change_writes_config_and_runs_reload(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    reload = '#!/bin/sh\ncp "$KERNEX_CONFIG" "$MARKER_DIR/reloaded.json"\n'
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0", reload=reload), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)], config={"level": 1})
    assert dev.cycle().ok
    sim.publish("dev-1", [sim.entry(v1)], config={"level": 2})
    assert dev.cycle().phase is Phase.HEALTHY
    assert json.loads((dev.system / "reloaded.json").read_text()) == {"level": 2}
    assert dev.last_report().config_hash == dev.agent.load_state().config_hash


def test_bundle_removed_from_manifest_is_uninstalled(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    app = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    tool = sim.add_bundle(bundle_bytes(tmp_path, "tool", "0.1"), "tool", "0.1")
    sim.publish("dev-1", [sim.entry(app), sim.entry(tool)])
    assert dev.cycle().ok
    assert dev.current_version("tool") == "0.1"
    sim.publish("dev-1", [sim.entry(app)])
    assert dev.cycle().phase is Phase.HEALTHY
    assert dev.current_version("tool") is None
    assert dev.last_report().bundles == {"app": "1.0.0"}


def test_equal_serial_is_a_no_op_and_a_refresh_reports_the_new_serial(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    app = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0", install=OK), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(app)])
    assert dev.cycle().ok
    fetches = len(sim.bundle_fetches())
    sim.publish("dev-1", [sim.entry(app)])  # re-signed, same content, serial 2
    assert dev.cycle().ok
    assert len(sim.bundle_fetches()) == fetches
    assert dev.last_report().serial == 2
    assert dev.agent.load_state().applied_serial == 2


def test_run_forever_backs_off_with_jitter_and_stops(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    sim.unreachable = True
    delays: list[float] = []

    async def main() -> None:
        import asyncio

        stop = asyncio.Event()

        async def fake_sleep(seconds: float) -> None:
            delays.append(seconds)
            if len(delays) >= 12:
                stop.set()
            await asyncio.sleep(0)

        agent = dev.new_agent(sleep=fake_sleep)
        await asyncio.wait_for(agent.run_forever(stop), 10)

    run(main())
    assert len(delays) >= 12
    assert all(0 <= d <= 300 for d in delays)
    assert max(delays) > 2  # it grew
    assert len(set(delays)) == len(delays)  # jittered


def test_reports_answered_503_are_kept_and_sent_again(tmp_path: Path) -> None:
    """A 503 (the server could not commit the report) is not an acknowledgement: the
    report stays queued until a 2xx, and goes out before newer ones."""
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    dev.cycle()
    sim.status_code = 503  # e.g. the server's database is down
    run(dev.agent.report(Phase.FAILED, dev.agent.load_state(), error="not committed"))
    assert len(list((dev.data_dir / "reports").glob("*.json"))) == 1
    assert not run(dev.agent.flush_reports())  # still 503: kept
    assert len(list((dev.data_dir / "reports").glob("*.json"))) == 1
    sim.status_code = None
    sent_before = len(sim.reports)

    run(dev.agent.report(Phase.HEALTHY, dev.agent.load_state()))

    errors = [r.error for _, r in sim.reports[sent_before:]]
    assert errors == ["not committed", None]
    assert list((dev.data_dir / "reports").iterdir()) == []


def test_an_unexpected_error_during_install_rolls_back_and_is_reported(tmp_path: Path) -> None:
    """A hook argument with a NUL byte makes Python's process start raise ValueError, no
    Kernex error: the agent rolls back, reports why and keeps running."""
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)])
    assert dev.cycle().phase is Phase.HEALTHY

    src = tmp_path / "src-nul"
    (src / "hooks").mkdir(parents=True)
    for hook in ("install", "health"):
        (src / "hooks" / hook).write_text(OK)
        (src / "hooks" / hook).chmod(0o755)
    (src / "kernex-bundle.yaml").write_text(
        'name: app\nversion: "2.0.0"\nhooks:\n  install: hooks/install\n'
        '  health: {run: [hooks/health, "a\\0b"]}\n'
    )
    v2 = sim.add_bundle(build_bundle(src), "app", "2.0.0")
    sim.publish("dev-1", [sim.entry(v2)])
    result = dev.cycle()

    assert not result.ok
    assert result.phase is Phase.ROLLED_BACK
    assert dev.current_version("app") == "1.0.0"
    report = dev.last_report()
    assert report.phase is Phase.ROLLED_BACK
    assert report.serial == 2
    assert report.bundles == {"app": "1.0.0"}
    assert "unexpected error (ValueError)" in (report.error or ""), report.error
    assert "null byte" in (report.error or "")
    assert dev.cycle().ok  # the same serial waits for its retry; the agent runs on


def test_unpack_limits_come_from_agent_json(tmp_path: Path) -> None:
    """max_unpacked_bytes and max_members in agent.json bound what a bundle may unpack to;
    a value that is no positive integer is refused with the setting's name."""
    sim = ServerSimulator()
    dev = Device(tmp_path, sim)
    settings = json.loads((dev.data_dir / "agent.json").read_text())
    (dev.data_dir / "agent.json").write_text(
        json.dumps({**settings, "max_unpacked_bytes": 4096, "max_members": 50})
    )
    dev.config = load_config(dev.data_dir).with_overrides(poll_wait=0, request_timeout=2.0)
    assert (dev.config.max_unpacked_bytes, dev.config.max_members) == (4096, 50)
    dev.agent = dev.new_agent()
    big = bundle_bytes(tmp_path, "app", "1.0.0", files={"data.bin": b"x" * 10_000})
    sim.publish("dev-1", [sim.entry(sim.add_bundle(big, "app", "1.0.0"))])
    result = dev.cycle()
    assert result.phase is Phase.FAILED
    assert "unpacks to more than 4096 bytes" in (dev.last_report().error or "")
    many = {f"f{i}.txt": b"." for i in range(60)}
    crowded = bundle_bytes(tmp_path, "app", "1.0.1", files=many)
    sim.publish("dev-1", [sim.entry(sim.add_bundle(crowded, "app", "1.0.1"))])
    assert dev.cycle().phase is Phase.FAILED
    assert "more than 50 members" in (dev.last_report().error or "")

    (dev.data_dir / "agent.json").write_text(json.dumps({**settings, "max_members": "lots"}))
    with pytest.raises(AgentStateError, match="max_members must be a positive integer"):
        load_config(dev.data_dir)


class SmallDisk(DeviceFS):
    """A file system with 64 KiB free under the data dir (the free-space edge only)."""

    def free_bytes(self, path: Path) -> int:
        return 64 * 1024


def test_a_bundle_larger_than_the_free_space_fails_before_unpacking(tmp_path: Path) -> None:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim, fs=SmallDisk())
    small = bundle_bytes(tmp_path, "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(sim.add_bundle(small, "app", "1.0.0"))])
    assert dev.cycle().phase is Phase.HEALTHY
    big = bundle_bytes(tmp_path, "app", "1.1.0", files={"data.bin": b"x" * 200_000})
    sim.publish("dev-1", [sim.entry(sim.add_bundle(big, "app", "1.1.0"))])
    assert dev.cycle().phase is Phase.FAILED
    error = dev.last_report().error or ""
    assert "not enough free space to unpack app@1.1.0" in error
    assert "64.0 KiB free" in error
    assert dev.current_version("app") == "1.0.0"
    assert not any(
        p.name.startswith("1.1.0") for p in (dev.data_dir / "bundles/app/slots").iterdir()
    )
