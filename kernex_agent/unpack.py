"""Unpacking a verified bundle into a new slot directory, trusting nothing in the archive.

The archive is checked whole first (``kernex_core.bundle.scan_archive``: paths, types,
limits, links that could lead out). Then Kernex writes the tree itself rather than with
``tarfile.extractall``, whose ``data`` filter resolves paths with ``os.path.realpath`` and
was fooled by link chains past ``PATH_MAX`` (CVE-2025-4517):

- directories and regular files first, links last, so nothing is written through a link
  the archive made;
- every path is walked from a directory descriptor one component at a time, opened with
  ``O_NOFOLLOW``, and files are created with ``O_EXCL`` (never over an existing file);
- a symlink is made only with its checked target; a hard link only to a file member.

Before writing, the free space under the destination must hold the unpacked size.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from kernex_core.bundle import (
    BundleMeta,
    ExtractLimits,
    Kind,
    Member,
    file_sha256,
    open_stream,
    scan_archive,
)
from kernex_core.errors import BundleError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024
BLOCK = 4096  # bytes counted per member on top of its content in the free-space check


class NoSpaceError(BundleError):
    """The file system cannot hold the unpacked bundle; the download itself is fine."""


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write under ``path``."""
    return shutil.disk_usage(path).free


def unpack_bundle(
    path: Path,
    dest: Path,
    limits: ExtractLimits | None = None,
    *,
    sha256: str | None = None,
    free: Callable[[Path], int] = free_bytes,
) -> BundleMeta:
    """Check the archive at ``path``, then unpack it into ``dest`` (which must not exist).

    With ``sha256``, the archive's digest is checked first; the file is opened once and
    the digest, the checks and the unpacking all read that one open file, so renaming
    other bytes over ``path`` meanwhile changes nothing.
    """
    with open(path, "rb") as fh:
        if sha256 is not None:
            got = file_sha256(fh)
            if got != sha256:
                raise BundleError(
                    f"staged bundle {path.name} has sha256 {got}, expected {sha256}",
                    hint="The staged file changed after it was verified; it is fetched again.",
                )
        scanned = scan_archive(fh, limits, numeric_version=True)
        need = scanned.unpacked_bytes + BLOCK * len(scanned.members)
        have = free(dest.parent)
        if have < need:
            raise NoSpaceError(
                f"not enough free space to unpack {scanned.meta.name}@{scanned.meta.version}: "
                f"it needs {human_bytes(need)}, {dest.parent} has {human_bytes(have)} free",
                hint="Free space on the device (or lower the bundle's size); the agent "
                "tries again on the next cycle.",
            )
        dest.mkdir(mode=0o755)
        fh.seek(0)
        try:
            with _Tree(dest) as tree, open_stream(fh) as tar:
                _write(tree, tar, scanned.members)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"bundle could not be unpacked: {exc}", hint=_HINT) from exc
    return scanned.meta


_HINT = "Rebuild the bundle with `kernex bundle build DIR`."


def _write(tree: _Tree, tar: tarfile.TarFile, members: list[Member]) -> None:
    """Write files and directories in archive order, then the links."""
    plain = iter(m for m in members if not m.is_link)
    for info in tar:
        if info.issym() or info.islnk():
            continue
        member = next(plain, None)
        if member is None or member.path != posixpath.normpath(info.name):
            raise BundleError("bundle archive changed while it was unpacked", hint=_HINT)
        if member.kind is Kind.DIR:
            tree.make_dir(member.path)
            continue
        src = tar.extractfile(info)
        if src is None:  # pragma: no cover - a regular file gives a stream
            raise BundleError(f"cannot read bundle member {member.path!r}", hint=_HINT)
        tree.write_file(member, _chunks(src, member.size))
    for member in members:
        if member.kind is Kind.SYMLINK:
            tree.make_symlink(member)
        elif member.kind is Kind.HARDLINK:
            tree.make_hardlink(member)


def _chunks(src: IO[bytes], size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            raise BundleError("bundle member ends early (corrupt archive)", hint=_HINT)
        left -= len(chunk)
        yield chunk


class _Tree:
    """Writes under one root directory through descriptors, never following a link."""

    def __init__(self, root: Path) -> None:
        self.root = os.open(root, _DIR_FLAGS)
        self._cached: tuple[str, int] | None = None  # the last parent opened: path, fd

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self._forget()
        os.close(self.root)

    def _forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _parent(self, path: str) -> tuple[int, str]:
        """A descriptor of ``path``'s directory (made as needed) and its last component."""
        parent, _, name = path.rpartition("/")
        if not parent:
            return self.root, name
        if self._cached is not None and self._cached[0] == parent:
            return self._cached[1], name
        self._forget()
        fd = self.root
        for part in parent.split("/"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != self.root:
                os.close(fd)
            fd = child
        self._cached = (parent, fd)
        return fd, name

    def make_dir(self, path: str) -> None:
        if path == ".":
            return
        fd, name = self._parent(path)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=fd)
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            os.fchmod(child, 0o755)
        finally:
            os.close(child)

    def write_file(self, member: Member, chunks: Iterator[bytes]) -> None:
        fd, name = self._parent(member.path)
        out = os.open(name, _FILE_FLAGS, 0o600, dir_fd=fd)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            os.fchmod(out, member.mode)
        finally:
            os.close(out)

    def make_symlink(self, member: Member) -> None:
        fd, name = self._parent(member.path)
        os.symlink(member.target, name, dir_fd=fd)

    def make_hardlink(self, member: Member) -> None:
        src_fd, src_name = self._parent(member.target)
        src_fd = os.dup(src_fd)  # the cache may move on to the link's own directory
        try:
            fd, name = self._parent(member.path)
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(src_fd)
