"""The content-addressed bundle store: ``<data dir>/blobs/sha256/<aa>/<hex>``.

An upload streams into a temporary file in the store (same file system), hashing as it
goes; only when the digest and size are known and match the declared ones is the file
fsynced and renamed into place. Storing the same bytes twice is a no-op.

A temporary file outlives its upload only when the server process dies mid-upload; such
files (untouched for ``STALE_UPLOAD_SECONDS``; an upload in progress writes to its file
all the time) are removed at start and on every pruning pass (``remove_stale_uploads``).
A client whose upload was cut off sends the bundle again from the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from kernex_core.formats import SHA256_RE
from kernex_core.fsutil import fsync_dir
from kernex_server.errors import BundleStoreError

STALE_UPLOAD_SECONDS = 3600.0  # a temporary upload file untouched this long is left over
UPLOAD_PREFIX = "upload."


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    created: bool  # False when the store already had these bytes


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.total_bytes = 0  # bytes stored, from ``stored()`` at start, then kept up to date

    def stored(self) -> dict[str, tuple[int, float]]:
        """Every blob in the store: sha256 -> (size, mtime); refreshes ``total_bytes``."""
        out: dict[str, tuple[int, float]] = {}
        for path in (self.root / "sha256").glob("*/*"):
            if SHA256_RE.match(path.name):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    out[path.name] = (st.st_size, st.st_mtime)
        self.total_bytes = sum(size for size, _ in out.values())
        return out

    def remove(self, sha256: str) -> int:
        """Delete a blob; return the bytes freed (0 when it was not there)."""
        path = self.path_for(sha256)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        self.total_bytes = max(0, self.total_bytes - size)
        return size

    def remove_stale_uploads(self, *, now: float, older_than: float = STALE_UPLOAD_SECONDS) -> int:
        """Delete temporary upload files not written for ``older_than`` seconds (left by a
        server that died mid-upload); return how many went."""
        removed = 0
        tmp_dir = self.root / "tmp"
        for path in tmp_dir.glob(f"{UPLOAD_PREFIX}*") if tmp_dir.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime >= older_than:
                    path.unlink()
                    removed += 1
        return removed

    def path_for(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise BundleStoreError(f"{sha256!r} is not a sha256 hex digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return SHA256_RE.match(sha256) is not None and self.path_for(sha256).is_file()

    async def put_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        expected_sha256: str | None = None,
        max_bytes: int,
    ) -> StoredBlob:
        """Store the streamed bytes; raise ``BundleStoreError`` on mismatch or overflow."""
        if expected_sha256 is not None and not SHA256_RE.match(expected_sha256):
            raise BundleStoreError(
                f"declared digest {expected_sha256!r} is not 64 lowercase hex digits"
            )
        tmp_dir = self.root / "tmp"
        await anyio.to_thread.run_sync(lambda: tmp_dir.mkdir(parents=True, exist_ok=True))
        fd, tmp_name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=tmp_dir)
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as raw:
                fh = anyio.wrap_file(raw)
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BundleStoreError(
                            f"bundle is larger than the {max_bytes} byte limit",
                            hint="Raise max_bundle_bytes in server.toml if this is intended.",
                        )
                    digest.update(chunk)
                    await fh.write(chunk)
                await fh.flush()
                await anyio.to_thread.run_sync(os.fsync, raw.fileno())
            sha = digest.hexdigest()
            if expected_sha256 is not None and sha != expected_sha256:
                raise BundleStoreError(
                    f"uploaded bytes have sha256 {sha}, not the declared {expected_sha256}",
                    hint="The upload was corrupted or the wrong file was sent; nothing was stored.",
                )
            return await anyio.to_thread.run_sync(self._commit, tmp, sha, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _commit(self, tmp: Path, sha: str, size: int) -> StoredBlob:
        target = self.path_for(sha)
        if target.is_file() and target.stat().st_size == size:
            os.utime(target)  # uploaded again: its garbage-collection grace period restarts
            return StoredBlob(sha, size, created=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        self.total_bytes += size
        return StoredBlob(sha, size, created=True)
