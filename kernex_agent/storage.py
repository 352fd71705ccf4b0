"""The file-system edge: every write the agent makes under its data directory.

All writes go through ``DeviceFS`` so a test (or a fleet simulator) can replace it, for
example with one that raises ``OSError(ENOSPC)`` to play a full disk. Small files are
written atomically (``kernex_core.fsutil``); the ``current`` link of a bundle is switched
by making a symlink under a temporary name and renaming it over the old one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from kernex_agent.unpack import free_bytes, unpack_bundle
from kernex_core.bundle import BundleMeta, ExtractLimits
from kernex_core.fsutil import atomic_write_bytes, fsync_dir


class DeviceFS:
    def write_atomic(self, path: Path, data: bytes, *, mode: int = 0o644) -> None:
        atomic_write_bytes(path, data, mode=mode)

    def mkdir(self, path: Path, *, mode: int = 0o755) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=mode)

    def open_append(self, path: Path) -> BinaryIO:
        return open(path, "ab")

    def write_chunk(self, fh: BinaryIO, data: bytes) -> None:
        fh.write(data)

    def sync_file(self, fh: BinaryIO) -> None:
        fh.flush()
        os.fsync(fh.fileno())

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)
        fsync_dir(dst.parent)

    def unlink(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def remove_tree(self, path: Path) -> None:
        if path.is_symlink() or path.is_file():
            self.unlink(path)
        elif path.exists():
            shutil.rmtree(path)

    def switch_link(self, link: Path, target: str) -> None:
        """Point ``link`` at ``target`` (relative) atomically: old or new, never neither."""
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        self.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_dir(link.parent)

    def remove_link(self, link: Path) -> None:
        self.unlink(link)
        if link.parent.exists():
            fsync_dir(link.parent)

    def extract(
        self, archive: Path, dest: Path, limits: ExtractLimits, *, sha256: str | None = None
    ) -> BundleMeta:
        return unpack_bundle(archive, dest, limits, sha256=sha256, free=self.free_bytes)

    def free_bytes(self, path: Path) -> int:
        """Bytes still free for the agent on the file system holding ``path``."""
        return free_bytes(path)


def read_link(link: Path) -> str | None:
    """The slot name ``current`` points at, or None."""
    try:
        return Path(os.readlink(link)).name
    except (FileNotFoundError, OSError):
        return None
