"""Building a bundle from a directory: the walk, the checks a device would make, packing.

``build_bundle`` is reproducible: the same directory gives the same bytes (sorted paths,
zero mtimes and owners, fixed modes, a gzip header without name or time). Before packing,
``kernex-bundle.yaml`` is parsed strictly (an unquoted ``version: 1.10`` is refused, YAML
would read it as 1.1) and every hook file must be a regular, executable file starting with
``#!`` (or an ELF binary), so a bundle that cannot run its hooks fails here, not on a
device. The packed archive then passes the same checks as on a device
(``kernex_core.bundle.scan_archive``).
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

from kernex_core.bundle import (
    METADATA_NAME,
    BundleMeta,
    ExtractLimits,
    check_member,
    parse_metadata,
    scan_archive,
)
from kernex_core.errors import BundleError

_RUNNABLE = (b"#!", b"\x7fELF")


def check_archive(path: Path, limits: ExtractLimits | None = None) -> BundleMeta:
    """Check every member and the metadata of a tar.gz without writing; return the metadata."""
    with open(path, "rb") as fh:
        return scan_archive(fh, limits).meta


def read_metadata(src_dir: Path) -> BundleMeta:
    """Parse ``src_dir/kernex-bundle.yaml`` strictly; a missing file is a BundleError."""
    meta_path = src_dir / METADATA_NAME
    if not meta_path.is_file():
        raise BundleError(
            f"{src_dir} has no {METADATA_NAME}",
            hint="Write kernex-bundle.yaml with name, version and hooks (see docs/bundles.md).",
        )
    return parse_metadata(meta_path.read_bytes())


def check_hooks(src_dir: Path, meta: BundleMeta) -> None:
    """Each hook file is a regular file, executable, and starts with ``#!`` (or is ELF)."""
    for kind, hook in meta.hooks().items():
        rel = hook.argv[0]
        path = src_dir / rel
        try:
            st = path.lstat()
            with open(path, "rb") as fh:
                head = fh.read(4)
        except OSError:
            raise BundleError(
                f"{kind} hook file {rel!r} is missing from {src_dir}",
                hint="Put the hook file in the bundle directory, or fix its path in "
                f"{METADATA_NAME}.",
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(
                f"{kind} hook file {rel!r} is not a regular file (a symlink or directory)",
                hint="Copy the script into the bundle directory instead of linking it.",
            )
        if not st.st_mode & stat.S_IXUSR:
            raise BundleError(
                f"{kind} hook file {rel!r} is not executable; the device would fail to run it",
                hint=f"Run `chmod +x {path}` and build again.",
            )
        if not head.startswith(_RUNNABLE):
            raise BundleError(
                f"{kind} hook file {rel!r} does not start with '#!'; the device runs it "
                "directly (no shell) and would fail",
                hint="Make its first line an interpreter, e.g. `#!/bin/sh`.",
            )


def _add(tar: tarfile.TarFile, src: Path, rel: str) -> None:
    st = src.lstat()
    info = tarfile.TarInfo(rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(src)
        info.mode = 0o777
        check_member(info)
        tar.addfile(info)
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        data = src.read_bytes()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        raise BundleError(f"{src} is not a regular file, directory or symlink")


def build_bundle(src_dir: Path) -> bytes:
    """Pack ``src_dir`` (which holds kernex-bundle.yaml) into reproducible tar.gz bytes."""
    src_dir = Path(src_dir)
    meta = read_metadata(src_dir)
    check_hooks(src_dir, meta)
    paths = sorted(
        (p for p in src_dir.rglob("*") if p != src_dir), key=lambda p: p.relative_to(src_dir)
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in paths:
            _add(tar, p, p.relative_to(src_dir).as_posix())
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    data = out.getvalue()
    scan_archive(io.BytesIO(data))  # what a device will check, caught here first
    return data
