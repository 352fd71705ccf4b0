"""kernex_core.bundle: metadata, safe extraction limits, reproducible builds."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from kernex_core.bundle import (
    ExtractLimits,
    build_bundle,
    check_archive,
    extract_bundle,
    parse_metadata,
)
from kernex_core.errors import BundleError

META = b"""name: app
version: "1.4.0"
hooks:
  install: hooks/install
  health: {run: [hooks/health, --quick], timeout: 30}
"""


def make_src(root: Path) -> Path:
    src = root / "src"
    (src / "hooks").mkdir(parents=True)
    (src / "kernex-bundle.yaml").write_bytes(META)
    for hook in ("install", "health"):
        (src / "hooks" / hook).write_text("#!/bin/sh\nexit 0\n")
        (src / "hooks" / hook).chmod(0o755)
    (src / "data").mkdir()
    (src / "data" / "b.txt").write_text("b")
    (src / "data" / "a.txt").write_text("a")
    os.symlink("a.txt", src / "data" / "link")
    return src


def test_metadata_is_parsed_with_defaults() -> None:
    meta = parse_metadata(META)
    assert meta.name == "app"
    assert meta.version == "1.4.0"
    assert meta.install.argv == ("hooks/install",)
    assert meta.install.timeout == 300
    assert meta.health.argv == ("hooks/health", "--quick")
    assert meta.health.timeout == 30
    assert meta.reload is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"name: app\nversion: '1'\n", "'hooks' must map"),
        (b"name: App!\nversion: '1'\nhooks: {}\n", "not a valid bundle name"),
        (b"name: app\nversion: '1'\nhooks: {install: a}\n", "'health' hook is required"),
        (b"name: app\nversion: '1'\nhooks: {install: /bin/sh, health: h}\n", "relative"),
        (b"name: app\nversion: '1'\nhooks: {install: ../x, health: h}\n", "stay inside"),
        (b"name: app\nversion: '1'\nhooks: {install: a, health: h, stop: s}\n", "unknown hook"),
        (
            b"name: app\nversion: '1'\nhooks: {install: a, health: {run: h, timeout: -1}}\n",
            "timeout",
        ),
        (b"name: app\nversion: '1'\ntypo: 1\nhooks: {install: a, health: h}\n", "unknown key"),
        (b"[unclosed", "not valid YAML"),
    ],
)
def test_bad_metadata_is_a_bundle_error_with_a_message(raw: bytes, fragment: str) -> None:
    with pytest.raises(BundleError, match=fragment.replace("(", r"\(")):
        parse_metadata(raw)


def test_build_is_reproducible_and_round_trips(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    first = build_bundle(src)
    os.utime(src / "data" / "a.txt", (1, 1))  # mtimes do not matter
    assert build_bundle(src) == first
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(first)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert {m.mtime for m in tar.getmembers()} == {0}
        assert {m.uid for m in tar.getmembers()} == {0}
    dest = tmp_path / "out"
    meta = extract_bundle(archive, dest)
    assert meta.name == "app"
    assert (dest / "data" / "a.txt").read_text() == "a"
    assert os.readlink(dest / "data" / "link") == "a.txt"
    assert os.access(dest / "hooks" / "install", os.X_OK)


def test_build_without_metadata_has_a_hint(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as info:
        build_bundle(tmp_path)
    assert info.value.hint


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _member(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def test_limits_stop_tar_bombs(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    members = [(_member("kernex-bundle.yaml"), META)]
    members += [(_member(f"f{i}"), b"x" * 1000) for i in range(20)]
    archive.write_bytes(_tar(members))
    with pytest.raises(BundleError, match="more than 10 members"):
        check_archive(archive, ExtractLimits(max_members=10))
    with pytest.raises(BundleError, match="unpacks to more than"):
        check_archive(archive, ExtractLimits(max_unpacked_bytes=5000))


def test_setuid_and_fifo_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "s.tar.gz"
    archive.write_bytes(_tar([(_member("kernex-bundle.yaml"), META), (_member("x", 0o4755), b"")]))
    with pytest.raises(BundleError, match="setuid"):
        check_archive(archive)
    fifo = _member("pipe")
    fifo.type = tarfile.FIFOTYPE
    archive.write_bytes(_tar([(_member("kernex-bundle.yaml"), META), (fifo, b"")]))
    with pytest.raises(BundleError, match="fifo"):
        check_archive(archive)


def test_garbage_and_missing_metadata(tmp_path: Path) -> None:
    archive = tmp_path / "g.tar.gz"
    archive.write_bytes(b"not a tarball")
    with pytest.raises(BundleError, match=r"not a readable tar\.gz"):
        check_archive(archive)
    archive.write_bytes(_tar([(_member("other"), b"")]))
    with pytest.raises(BundleError, match=r"no kernex-bundle\.yaml"):
        check_archive(archive)
    dest = tmp_path / "never"
    with pytest.raises(BundleError):
        extract_bundle(archive, dest)
    assert not dest.exists()
