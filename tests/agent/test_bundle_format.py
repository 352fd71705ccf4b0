"""Bundles: metadata and member checks (core), unpacking (agent), reproducible builds (CLI)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from kernex_agent.unpack import unpack_bundle
from kernex_cli.bundle_build import build_bundle, check_archive
from kernex_core.bundle import ExtractLimits, parse_metadata
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
    meta = unpack_bundle(archive, dest)
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
        unpack_bundle(archive, dest)
    assert not dest.exists()


def _link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _with_hooks(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    hooks = [(_member(f"hooks/{h}", 0o755), b"#!/bin/sh\nexit 0\n") for h in ("install", "health")]
    return _tar([(_member("kernex-bundle.yaml"), META), *hooks, *members])


def test_ordinary_link_shapes_unpack(tmp_path: Path) -> None:
    """Library-style symlink chains, links to directories and hard links are fine."""
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(
        _with_hooks(
            [
                (_link_member("lib/libx.so", "libx.so.1"), b""),  # before its target
                (_link_member("lib/libx.so.1", "libx.so.1.2"), b""),
                (_member("lib/libx.so.1.2"), b"elf"),
                (_link_member("bin/lib", "../lib"), b""),
                (_link_member("bin/x", "../lib/libx.so"), b""),
                (_link_member("lib/hard", "lib/libx.so.1.2", tarfile.LNKTYPE), b""),
                (_member("./share/doc"), b"doc"),
            ]
        )
    )
    dest = tmp_path / "out"
    unpack_bundle(archive, dest)
    assert (dest / "bin/x").read_bytes() == b"elf"
    assert (dest / "bin/lib/libx.so").read_bytes() == b"elf"
    assert os.readlink(dest / "lib/libx.so") == "libx.so.1"
    assert os.stat(dest / "lib/hard").st_ino == os.stat(dest / "lib/libx.so.1.2").st_ino
    assert (dest / "share/doc").read_bytes() == b"doc"


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        # The file comes first, the symlink it passes through later: still refused.
        ([(_member("d/f"), b"x"), (_link_member("d", "."), b"")], "passes through the symlink"),
        ([(_link_member("s", "."), b""), (_link_member("x", "s/../.."), b"")], "symlink out"),
        ([(_link_member("x", "s/.."), b""), (_link_member("s", "."), b"")], "links through"),
        ([(_link_member("h", "nowhere", tarfile.LNKTYPE), b"")], "not a regular file"),
        ([(_link_member("s", "."), b""), (_link_member("h", "s", tarfile.LNKTYPE), b"")], "hard"),
        ([(_member("a"), b"1"), (_member("a"), b"2")], "appears twice"),
        ([(_member("a/../b"), b"1")], "escapes the bundle"),
    ],
    ids=[
        "file-then-link",
        "dotdot-out",
        "link-before-chain",
        "hard-dangling",
        "hard-to-link",
        "twice",
        "inner-dotdot",
    ],
)
def test_member_checks_across_the_archive(tmp_path: Path, members, fragment: str) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_with_hooks(members))
    with pytest.raises(BundleError, match=fragment):
        check_archive(archive)
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match=fragment):
        unpack_bundle(archive, dest)
    assert not dest.exists()


def test_hook_must_be_a_regular_file_member(tmp_path: Path) -> None:
    archive = tmp_path / "h.tar.gz"
    archive.write_bytes(
        _tar(
            [
                (_member("kernex-bundle.yaml"), META),
                (_member("hooks/health", 0o755), b""),
                (_link_member("hooks/install", "health"), b""),
            ]
        )
    )
    with pytest.raises(BundleError, match="hook file 'hooks/install' is missing"):
        check_archive(archive)


def test_numeric_version_is_refused_but_old_archives_still_unpack(tmp_path: Path) -> None:
    raw = b"name: app\nversion: 1.10\nhooks: {install: hooks/install, health: hooks/health}\n"
    with pytest.raises(BundleError, match=r"version is the number 1\.1, not a string") as info:
        parse_metadata(raw)
    assert 'version: "1.10"' in (info.value.hint or "")
    # An archive built before the rule: the agent reads it as it always did ("1.1").
    archive = tmp_path / "old.tar.gz"
    hooks = [(_member(f"hooks/{h}", 0o755), b"#!/bin/sh\n") for h in ("install", "health")]
    archive.write_bytes(_tar([(_member("kernex-bundle.yaml"), raw), *hooks]))
    assert unpack_bundle(archive, tmp_path / "out").version == "1.1"
    with pytest.raises(BundleError, match="not a string"):
        check_archive(archive)  # `kernex bundle push old.tar.gz` says why
