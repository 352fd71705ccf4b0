"""Attacks against the agent, played by the server simulator.

Every test installs v1, snapshots the device's files, plays the attack and asserts the
device's files are unchanged afterwards (``REPORTING`` for rejected manifests: only the
report queue and status summary may change; ``BOOKKEEPING`` once a manifest was accepted
and its bundle refused: also the failed-serial record, the journal and staging).
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from kit.agent import BOOKKEEPING, Device, snapshot
from kit.bundles import bundle_bytes
from kit.simulator import ServerSimulator

from kernex_core import keys
from kernex_core.manifest import BundleEntry
from kernex_core.protocol import Phase


@pytest.fixture
def installed(tmp_path: Path) -> tuple[ServerSimulator, Device]:
    sim = ServerSimulator()
    dev = Device(tmp_path, sim, read_timeout=0.3)
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)], config={"a": 1})
    assert dev.cycle().phase is Phase.HEALTHY
    return sim, dev


def v2(sim: ServerSimulator, tmp_path: Path) -> BundleEntry:
    blob = sim.add_bundle(bundle_bytes(tmp_path, "app", "2.0.0"), "app", "2.0.0")
    return sim.entry(blob)


def assert_rejected(dev: Device, reason: str, before: dict[str, str]) -> None:
    result = dev.cycle()
    assert not result.ok
    assert result.phase is Phase.FAILED
    report = dev.last_report()
    assert report.phase is Phase.FAILED
    assert f"manifest rejected ({reason})" in (report.error or "")
    assert report.bundles == {"app": "1.0.0"}
    assert snapshot(dev.data_dir) == before
    assert dev.current_version("app") == "1.0.0"
    assert dev.marker("app") == "1.0.0"


def test_manifest_signed_by_another_key(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir)
    sim.publish("dev-1", [v2(sim, tmp_path)], key=keys.generate_ed25519())
    assert_rejected(dev, "signature", before)


def test_tampered_manifest_payload(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir)
    import base64
    import json

    def swap_version(raw: bytes) -> bytes:
        env = json.loads(raw)
        payload = json.loads(base64.b64decode(env["payload"]))
        payload["bundles"][0]["version"] = "6.6.6"
        env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        return json.dumps(env).encode()

    sim.publish("dev-1", [v2(sim, tmp_path)], tamper=swap_version)
    assert_rejected(dev, "signature", before)


def test_manifest_for_another_device(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir)
    sim.publish("dev-1", [v2(sim, tmp_path)], for_device="dev-2")
    assert_rejected(dev, "device", before)


def test_lower_serial_is_a_rollback_attack(installed, tmp_path: Path) -> None:
    sim, dev = installed
    sim.publish("dev-1", [sim.entry(sim.blobs[next(iter(sim.blobs))])], serial=5, config={"a": 1})
    assert dev.cycle().ok
    before = snapshot(dev.data_dir)
    sim.publish("dev-1", [v2(sim, tmp_path)], serial=4)
    assert_rejected(dev, "serial", before)


def test_highest_serial_survives_a_restart(installed, tmp_path: Path) -> None:
    sim, dev = installed
    sim.publish("dev-1", [sim.entry(sim.blobs[next(iter(sim.blobs))])], serial=9, config={"a": 1})
    assert dev.cycle().ok
    dev.agent = dev.new_agent()
    before = snapshot(dev.data_dir)
    sim.publish("dev-1", [v2(sim, tmp_path)], serial=8)
    assert_rejected(dev, "serial", before)


def test_expired_manifest_is_a_freeze_attack(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir)
    sim.publish("dev-1", [v2(sim, tmp_path)], expires_in=-1)
    assert_rejected(dev, "expired", before)


def test_missing_release_signature_when_release_keys_are_pinned(tmp_path: Path) -> None:
    release = keys.generate_ed25519()
    release_file = tmp_path / "release.pub"
    release_file.write_text(keys.public_key_to_pem(release.public_key()))
    sim = ServerSimulator(release_key=release)
    dev = Device(tmp_path, sim, release_key_files=(release_file,))
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)], config={"a": 1})
    assert dev.cycle().phase is Phase.HEALTHY
    before = snapshot(dev.data_dir)
    blob = sim.add_bundle(bundle_bytes(tmp_path, "app", "2.0.0"), "app", "2.0.0")
    sim.publish("dev-1", [sim.entry(blob, sign=False)])
    assert_rejected(dev, "release", before)
    # A signature by a key the device does not pin is no better.
    sim.release_key = keys.generate_ed25519()
    sim.publish("dev-1", [sim.entry(blob)])
    assert_rejected(dev, "release", before)


def test_release_key_rotation_needs_a_pinned_signature(tmp_path: Path) -> None:
    old, new, rogue = (keys.generate_ed25519() for _ in range(3))
    release_file = tmp_path / "release.pub"
    release_file.write_text(keys.public_key_to_pem(old.public_key()))
    sim = ServerSimulator(release_key=new)
    dev = Device(tmp_path, sim, release_key_files=(release_file,))
    blob = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    # The server's word alone (a set signed by a key the device does not pin) is refused.
    forged = sim.release_key_set([new.public_key()], 1, rogue)
    sim.publish("dev-1", [sim.entry(blob)], release_keys=forged)
    assert dev.cycle().phase is Phase.FAILED
    assert "manifest rejected (release)" in (dev.last_report().error or "")
    # Signed by the pinned key: accepted, and the bundle signed by the new key installs.
    rotated = sim.release_key_set([new.public_key()], 1, old)
    sim.publish("dev-1", [sim.entry(blob)], release_keys=rotated)
    assert dev.cycle().phase is Phase.HEALTHY
    anchors = dev.agent.anchors(dev.agent.load_state())
    assert anchors.release_keys is not None
    assert set(anchors.release_keys.keys) == {keys.fingerprint(new.public_key())}


def test_manifest_key_rotation_announced_by_the_pinned_key(installed, tmp_path: Path) -> None:
    sim, dev = installed
    new_key = keys.generate_ed25519()
    entry = sim.entry(sim.blobs[next(iter(sim.blobs))])
    sim.publish("dev-1", [entry], config={"a": 1}, manifest_keys=[new_key.public_key()])
    assert dev.cycle().ok
    sim.publish("dev-1", [entry], config={"a": 2}, key=new_key)
    assert dev.cycle().phase is Phase.HEALTHY
    before = snapshot(dev.data_dir)
    sim.publish("dev-1", [v2(sim, tmp_path)])  # the old key is no longer trusted
    assert_rejected(dev, "signature", before)


def bundle_failure(dev: Device, before: dict[str, str], fragment: str) -> None:
    state_before = dev.agent.load_state()
    result = dev.cycle()
    assert not result.ok
    assert result.phase is Phase.FAILED  # nothing ran: failed, not rolled back
    report = dev.last_report()
    assert fragment in (report.error or ""), report.error
    assert report.bundles == {"app": "1.0.0"}
    assert snapshot(dev.data_dir, BOOKKEEPING) == before
    state = dev.agent.load_state()
    assert state.installed == state_before.installed
    assert state.applied_serial == state_before.applied_serial
    assert not list((dev.data_dir / "staging").glob("*.bundle"))
    assert dev.current_version("app") == "1.0.0"
    assert dev.marker("app") == "1.0.0"


def test_bundle_with_wrong_sha256(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir, BOOKKEEPING)
    entry = v2(sim, tmp_path)
    evil = bundle_bytes(tmp_path / "evil", "app", "2.0.0", install="#!/bin/sh\nexit 0\n")
    sim.served_bytes[entry.sha256] = evil[: entry.size].ljust(entry.size, b"\0")
    sim.publish("dev-1", [entry])
    bundle_failure(dev, before, "has sha256")


def test_bundle_with_wrong_size(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir, BOOKKEEPING)
    entry = v2(sim, tmp_path)
    sim.served_bytes[entry.sha256] = sim.blobs[entry.sha256].data + b"extra"
    sim.publish("dev-1", [entry])
    bundle_failure(dev, before, "sent more than the declared")


def test_endless_body_is_cut_at_the_declared_size(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir, BOOKKEEPING)
    entry = v2(sim, tmp_path)
    sent = 0

    async def endless(_start: int) -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 65536
            yield b"\0" * 65536

    sim.bodies[entry.sha256] = endless
    sim.publish("dev-1", [entry])
    bundle_failure(dev, before, "sent more than the declared")
    assert sent <= entry.size + 2 * 65536


def test_slow_server_times_out(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir, BOOKKEEPING)
    entry = v2(sim, tmp_path)

    async def stalls(_start: int) -> AsyncIterator[bytes]:
        yield sim.blobs[entry.sha256].data[:10]
        await asyncio.sleep(60)  # about time itself: a server that stalls mid-body
        yield b""

    sim.bodies[entry.sha256] = stalls
    sim.publish("dev-1", [entry])
    bundle_failure(dev, before, "timed out")


def hostile(add: Callable[[tarfile.TarFile], None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        meta = b"name: app\nversion: '2.0.0'\nhooks: {install: hooks/i, health: hooks/h}\n"
        for name, data in (("kernex-bundle.yaml", meta), ("hooks/i", b""), ("hooks/h", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
        add(tar)
    return raw.getvalue()


def _file(name: str) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"pwn\n"))

    return add


def _link(name: str, target: str, kind: bytes) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)

    return add


def _link_chain(tar: tarfile.TarFile) -> None:
    # Each link looks inside the tree on its own; followed on disk, the pair leads out.
    _link("sub/up", "..", tarfile.SYMTYPE)(tar)
    _link("sub/up/out", "..", tarfile.SYMTYPE)(tar)
    _file("sub/up/out/kernex-pwned")(tar)


def _device(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("dev/sda")
    info.type = tarfile.BLKTYPE
    info.devmajor, info.devminor = 8, 0
    tar.addfile(info)


@pytest.mark.parametrize(
    ("add", "fragment"),
    [
        (_file("/etc/kernex-pwned"), "absolute"),
        (_file("../../../kernex-pwned"), "escapes the bundle"),
        (_file("hooks/../../kernex-pwned"), "escapes the bundle"),
        (_link("evil", "/etc/passwd", tarfile.SYMTYPE), "symlink out of the bundle"),
        (_link("evil", "../../../../etc", tarfile.SYMTYPE), "symlink out of the bundle"),
        (_link("evil", "../../../../etc/passwd", tarfile.LNKTYPE), "hard link out of the bundle"),
        (_link_chain, "passes through the symlink 'sub/up'"),
        (_device, "device node"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "nested-dotdot",
        "symlink-abs",
        "symlink-up",
        "hardlink",
        "symlink-chain",
        "device",
    ],
)
def test_hostile_tarballs_are_refused(installed, tmp_path: Path, add, fragment: str) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir, BOOKKEEPING)
    blob = sim.add_bundle(hostile(add), "app", "2.0.0")
    sim.publish("dev-1", [sim.entry(blob)])
    result = dev.cycle()
    assert not result.ok
    assert fragment in (dev.last_report().error or ""), dev.last_report().error
    assert snapshot(dev.data_dir, BOOKKEEPING) == before
    assert dev.current_version("app") == "1.0.0"
    assert not (tmp_path / "kernex-pwned").exists()
    assert not list((dev.data_dir / "bundles/app/slots").glob(".unpack-*"))


def test_endless_manifest_body_is_cut_at_the_limit(installed) -> None:
    """A server that streams a manifest without end must not fill the device's memory."""
    import httpx

    from kernex_agent.agent import Agent
    from kernex_core.manifest import MAX_MANIFEST_BYTES

    sim, dev = installed
    before = snapshot(dev.data_dir)
    sent = 0
    chunk = 65536

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 16 * MAX_MANIFEST_BYTES:  # finite, so a failing test ends
            sent += chunk
            yield b" " * chunk

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/manifest"):
            return httpx.Response(200, content=endless())
        return await sim.handle(request)

    agent = Agent(
        dev.config,
        httpx.AsyncClient(transport=httpx.MockTransport(handle)),
        clock=sim.clock,
        hooks=dev.hooks,
    )
    result = asyncio.run(agent.run_once())
    assert not result.ok
    assert "manifest rejected (size)" in (result.error or ""), result.error
    assert sent <= MAX_MANIFEST_BYTES + 2 * chunk
    assert snapshot(dev.data_dir) == before
    assert dev.current_version("app") == "1.0.0"


def test_endless_error_body_is_not_read_whole(installed) -> None:
    """An error answer (here to a status report) is read only as far as the error text."""
    import httpx

    from kernex_agent.agent import Agent

    sim, dev = installed
    sent = 0
    chunk = 65536

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 64 * 1024 * 1024:
            sent += chunk
            yield b"x" * chunk

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(500, content=endless())
        return await sim.handle(request)

    agent = Agent(
        dev.config,
        httpx.AsyncClient(transport=httpx.MockTransport(handle)),
        clock=sim.clock,
        hooks=dev.hooks,
    )
    asyncio.run(agent.run_once())
    assert 0 < sent <= 2 * 1024 * 1024
    assert list((dev.data_dir / "reports").glob("*.json"))  # kept for later, not lost


@pytest.mark.parametrize(
    ("name", "version"),
    [("../../kernex-escape", "2.0.0"), ("app", "../../../../kernex-escape")],
    ids=["name", "version"],
)
def test_bundle_name_or_version_cannot_walk_out_of_the_data_dir(
    installed, tmp_path: Path, name: str, version: str
) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir)
    blob = sim.add_bundle(bundle_bytes(tmp_path, "app", "2.0.0"), name, version)
    sim.publish("dev-1", [sim.entry(blob)])
    assert_rejected(dev, "format", before)
    assert not list(tmp_path.rglob("kernex-escape*"))


def test_staged_bundle_is_verified_again_before_it_is_unpacked(installed, tmp_path: Path) -> None:
    """A file at the staged name (left by a power cut, bit rot or a local writer) is not
    trusted: only bytes whose sha256 matches the manifest are unpacked and run."""
    sim, dev = installed
    entry = v2(sim, tmp_path)
    evil = bundle_bytes(
        tmp_path / "evil",
        "app",
        "2.0.0",
        install='#!/bin/sh\necho pwned > "$MARKER_DIR/app.installed"\n',
    )
    staging = dev.data_dir / "staging"
    staging.mkdir(exist_ok=True)
    (staging / f"{entry.sha256}.bundle").write_bytes(evil)
    sim.publish("dev-1", [entry])
    result = dev.cycle()
    assert result.phase is Phase.HEALTHY, result.error
    assert dev.marker("app") == "2.0.0"
    assert dev.current_version("app") == "2.0.0"
    assert len(sim.bundle_fetches()) == 2  # v1, then v2 fetched again instead of trusted


def test_bundle_swapped_between_verify_and_unpack_is_not_run(tmp_path: Path) -> None:
    """The bytes unpacked are the bytes whose sha256 was checked, even if the staged file
    is replaced after the download verified it."""
    from kernex_agent.storage import DeviceFS
    from kernex_core.bundle import BundleMeta, ExtractLimits

    evil = bundle_bytes(
        tmp_path / "evil",
        "app",
        "1.0.0",
        install='#!/bin/sh\necho pwned > "$MARKER_DIR/app.installed"\n',
    )

    class SwappingFS(DeviceFS):  # plays a writer racing the agent
        def extract(
            self, archive: Path, dest: Path, limits: ExtractLimits, **kw: str
        ) -> BundleMeta:
            swapped = archive.with_name("swap.tmp")
            swapped.write_bytes(evil)
            swapped.replace(archive)
            return super().extract(archive, dest, limits, **kw)

    sim = ServerSimulator()
    dev = Device(tmp_path, sim, fs=SwappingFS())
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)])
    result = dev.cycle()
    assert not result.ok
    assert "sha256" in (result.error or ""), result.error
    assert dev.marker("app") is None
    assert dev.current_version("app") is None
    assert not (dev.data_dir / "staging" / f"{v1.sha256}.bundle").exists()


def test_not_modified_forever_is_a_freeze_attack(tmp_path: Path) -> None:
    """Answers to manifest requests are not signed: whoever answers 304 to every poll must
    not keep the device on a manifest past its expiry without the device noticing."""
    import httpx

    from kernex_agent.agent import Agent

    now = [1_800_000_000.0]
    sim = ServerSimulator(clock=lambda: now[0])
    dev = Device(tmp_path, sim)
    v1 = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0"), "app", "1.0.0")
    sim.publish("dev-1", [sim.entry(v1)], expires_in=3600)
    assert dev.cycle().phase is Phase.HEALTHY
    before = snapshot(dev.data_dir, BOOKKEEPING)
    sent_etags: list[str | None] = []

    async def frozen(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/manifest"):
            sent_etags.append(request.headers.get("if-none-match"))
            return httpx.Response(304)
        return await sim.handle(request)

    agent = Agent(
        dev.config,
        httpx.AsyncClient(transport=httpx.MockTransport(frozen)),
        clock=sim.clock,
        hooks=dev.hooks,
    )
    assert asyncio.run(agent.run_once()).ok  # before expiry, 304 is fine
    now[0] += 3600
    result = asyncio.run(agent.run_once())
    assert not result.ok
    assert "expired" in (result.error or ""), result.error
    assert sent_etags[-1] is None  # after expiry the device asks for a fresh manifest
    report = dev.last_report()
    assert report.phase is Phase.FAILED
    assert "expired" in (report.error or "")
    assert snapshot(dev.data_dir, BOOKKEEPING) == before  # the last good state stays
    assert dev.current_version("app") == "1.0.0"


def _dotdot_chain(tar: tarfile.TarFile) -> None:
    # `s -> .` and `up -> s/..` each resolve inside the tree on paper; on disk `up` is the
    # parent of the unpack directory.
    _link("s", ".", tarfile.SYMTYPE)(tar)
    _link("up", "s/..", tarfile.SYMTYPE)(tar)
    _file("up/kernex-pwned")(tar)


def _cve_2025_4517(dest_len: int) -> Callable[[tarfile.TarFile], None]:
    """A chain of symlinks whose expansion passes PATH_MAX, so ``os.path.realpath`` stops
    resolving and Python's ``data`` filter (before 3.11.13/3.12.11/3.13.4) sees a path
    inside the tree; the kernel follows the links out of it."""
    steps = "abcdefghijklmnop"
    path_max = os.pathconf("/", "PC_PATH_MAX")
    component = "d" * ((path_max - dest_len - 1) // (len(steps) + 1))

    def add(tar: tarfile.TarFile) -> None:
        path = ""
        for step in steps:
            info = tarfile.TarInfo(os.path.join(path, component))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
            _link(os.path.join(path, step), component, tarfile.SYMTYPE)(tar)
            path = os.path.join(path, component)
        linkpath = os.path.join(*steps, "l" * 254)
        _link(linkpath, os.path.join(*[".."] * len(steps)), tarfile.SYMTYPE)(tar)
        _link("escape", os.path.join(linkpath, ".."), tarfile.SYMTYPE)(tar)
        # A hard link to a file outside through the unchecked chain, then bytes over it.
        _link("victimlink", "escape/victim", tarfile.LNKTYPE)(tar)
        _file("victimlink")(tar)
        _file("escape/kernex-pwned")(tar)

    return add


def test_symlink_dotdot_chain_is_refused(installed, tmp_path: Path) -> None:
    sim, dev = installed
    before = snapshot(dev.data_dir, BOOKKEEPING)
    blob = sim.add_bundle(hostile(_dotdot_chain), "app", "2.0.0")
    sim.publish("dev-1", [sim.entry(blob)])
    assert not dev.cycle().ok
    assert "through the symlink 's'" in (dev.last_report().error or "")
    assert snapshot(dev.data_dir, BOOKKEEPING) == before
    assert not (dev.data_dir / "bundles/app/slots/kernex-pwned").exists()
    assert dev.current_version("app") == "1.0.0"


def test_cve_2025_4517_symlink_chain_past_path_max_is_refused(installed, tmp_path: Path) -> None:
    sim, dev = installed
    slots = dev.data_dir / "bundles/app/slots"
    victim = slots / "victim"
    victim.write_text("untouched\n")
    before = snapshot(dev.data_dir, BOOKKEEPING)
    # The unpack directory is slots/.unpack-2.0.0-<sha256[:12]>-s<serial>.
    dest_len = len(str(slots / ".unpack-2.0.0-")) + 12 + len("-s") + 2
    blob = sim.add_bundle(hostile(_cve_2025_4517(dest_len)), "app", "2.0.0")
    sim.publish("dev-1", [sim.entry(blob)])
    assert not dev.cycle().ok
    assert victim.read_text() == "untouched\n"
    assert not (slots / "kernex-pwned").exists()
    assert "through the symlink 'a'" in (dev.last_report().error or ""), dev.last_report().error
    assert snapshot(dev.data_dir, BOOKKEEPING) == before
    assert dev.current_version("app") == "1.0.0"
    assert not list(slots.glob(".unpack-*"))
