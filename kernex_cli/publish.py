"""Publishing bundles: build a reproducible archive, upload it, record it in the catalog.

The three steps behind ``kernex bundle build|push``:

    built = build_to_file(Path("hello"), Path("hello-1.0.0.tar.gz"), sign_key=key)
    upload_bundle(client, built.path, on_progress=...)   # PUT /v1/admin/bundles/{sha256}
    catalog_text(old_text, built.info, signatures)        # bundles/<name>.yaml, comments kept

The release signature travels next to the archive as ``FILE.sig.json`` (``BundleInfo`` plus
``signatures``), so the key stays where the build runs and ``push`` only copies it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernex_cli.bundle_build import build_bundle, check_archive, read_metadata
from kernex_cli.client import AdminClient, ApiError, ServerUnreachableError
from kernex_cli.fleet_edit import EditError, _dump, _load
from kernex_core import keys
from kernex_core.envelope import Signature
from kernex_core.errors import BundleError, EnvelopeError, KernexError
from kernex_core.fsutil import atomic_write_bytes, atomic_write_text
from kernex_core.release import sign_release, verify_release

UPLOAD_CHUNK = 256 * 1024  # bytes per streamed upload chunk
UPLOAD_ATTEMPTS = 3  # an upload cut off (connection lost, 503) starts again this often
UPLOAD_RETRY_SECONDS = 1.0  # wait before attempt n+1: n times this
SIGNATURE_SUFFIX = ".sig.json"


class RebindError(KernexError):
    """A bundle version the catalog pins would get other bytes."""


class SignatureFileError(KernexError):
    """A release signature file is unreadable or does not match its bundle."""


@dataclass(frozen=True)
class BundleInfo:
    """What the catalog pins about one built archive."""

    name: str
    version: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
        }


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    info: BundleInfo
    signature_path: Path | None


def signature_path_for(archive: Path) -> Path:
    return archive.with_name(archive.name + SIGNATURE_SUFFIX)


def build_to_file(
    src_dir: Path, out: Path | None, *, sign_key: keys.PrivateKey | None = None
) -> BuiltBundle:
    """Build ``src_dir`` into ``out`` (default NAME-VERSION.tar.gz); sign it when given a key."""
    data = build_bundle(src_dir)
    meta = read_metadata(src_dir)
    out = out or Path(f"{meta.name}-{meta.version}.tar.gz")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    info = BundleInfo(meta.name, meta.version, hashlib.sha256(data).hexdigest(), len(data))
    sig_path = None
    if sign_key is not None:
        sig = sign_release(sign_key, info.name, info.version, info.sha256, info.size)
        sig_path = signature_path_for(out)
        document = {**info.to_dict(), "signatures": [sig.to_dict()]}
        atomic_write_text(sig_path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return BuiltBundle(out, info, sig_path)


def inspect_archive(path: Path) -> BundleInfo:
    """Check an archive as a device would, and hash it."""
    try:
        meta = check_archive(path)
    except FileNotFoundError as exc:
        raise BundleError(
            f"{path} does not exist", hint="Build it: `kernex bundle build DIR`."
        ) from exc
    except IsADirectoryError as exc:
        raise BundleError(
            f"{path} is a directory, not a bundle archive",
            hint=f"Build it first (`kernex bundle build {path}`), then push the .tar.gz it writes.",
        ) from exc
    except OSError as exc:
        raise BundleError(
            f"cannot read {path}: {exc.strerror}", hint="Check the path and its permissions."
        ) from exc
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return BundleInfo(meta.name, meta.version, digest.hexdigest(), size)


def read_signatures(path: Path, info: BundleInfo) -> list[Signature]:
    """The release signatures in ``path``; each must verify over exactly ``info``."""
    try:
        document = json.loads(path.read_text())
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        signatures = [Signature.from_dict(s) for s in document.get("signatures") or []]
    except (OSError, ValueError, EnvelopeError) as exc:
        raise SignatureFileError(
            f"cannot read the release signature file {path}: {exc}",
            hint="Rebuild with `kernex bundle build --sign-key KEY`.",
        ) from exc
    stated = {k: document.get(k) for k in ("name", "version", "sha256", "size")}
    if stated != info.to_dict():
        raise SignatureFileError(
            f"{path} signs {stated}, not this archive ({info.to_dict()})",
            hint="Push the archive the signature was made for, or sign it again.",
        )
    return signatures


def check_signatures_with(
    signatures: Sequence[Signature], public: keys.PublicKey, info: BundleInfo
) -> None:
    verify_release(
        list(signatures),
        {keys.fingerprint(public): public},
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        size=info.size,
    )


def _chunks(path: Path, on_progress: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(UPLOAD_CHUNK):
            if on_progress is not None:
                on_progress(len(chunk))
            yield chunk


def upload_bundle(
    client: AdminClient,
    path: Path,
    info: BundleInfo,
    *,
    force: bool = False,
    on_progress: Callable[[int], None] | None = None,
    on_restart: Callable[[Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Stream ``path`` to the server's content-addressed store; the server checks the sha256,
    and refuses (409) bytes for a version its deployed fleet pins to others unless ``force``.

    The upload is idempotent (the address is the digest), so one cut off by a lost
    connection or a 503 starts again from the first byte, up to ``UPLOAD_ATTEMPTS`` times;
    ``on_restart`` is told before each new attempt (a progress bar starts over)."""
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            answer: dict[str, Any] = client.request(
                "PUT",
                f"/v1/admin/bundles/{info.sha256}",
                params={
                    "name": info.name,
                    "version": info.version,
                    "force": "1" if force else None,
                },
                content=_chunks(path, on_progress),
                headers={"Content-Type": "application/gzip", "Content-Length": str(info.size)},
            )
            return answer
        except (ServerUnreachableError, ApiError) as exc:
            retry = isinstance(exc, ServerUnreachableError) or exc.status == 503
            if not retry or attempt == UPLOAD_ATTEMPTS:
                raise
            if on_restart is not None:
                on_restart(exc)
            sleep(UPLOAD_RETRY_SECONDS * attempt)
    raise AssertionError("unreachable")  # the loop returns or raises


def check_not_rebound(text: str, info: BundleInfo) -> None:
    """Refuse new bytes for a version ``bundles/<name>.yaml`` (``text``) already pins."""
    source = f"bundles/{info.name}.yaml"
    _yaml, data = _load(text, source)
    versions = data.get("versions")
    entry = versions.get(info.version) if isinstance(versions, dict) else None
    pinned = entry.get("sha256") if isinstance(entry, dict) else None
    if pinned is None or pinned == info.sha256:
        return
    raise RebindError(
        f"{info.name} {info.version} is already published with other bytes "
        f"(sha256 {str(pinned)[:16]}... in {source}); this archive is {info.sha256[:16]}...",
        hint="Give the new build a new version in kernex-bundle.yaml; to replace the "
        "published bytes anyway, pass --force.",
    )


def catalog_text(text: str, info: BundleInfo, signatures: Sequence[Signature]) -> str:
    """``bundles/<name>.yaml`` with this version pinned; comments and other versions kept.

    Signatures already recorded for the same bytes are kept (a second release key may
    have signed them); new bytes for a version replace its entry.
    """
    source = f"bundles/{info.name}.yaml"
    yaml, data = _load(text, source)
    if "name" not in data:
        data["name"] = info.name
    versions = data.get("versions")
    if versions is None:
        data["versions"] = versions = type(data)()
    if not isinstance(versions, type(data)):
        raise EditError(f"{source}: 'versions' is not a mapping")
    entry = versions.get(info.version)
    if not isinstance(entry, type(data)):
        entry = type(data)()
        versions[info.version] = entry
    kept: list[dict[str, str]] = []
    if entry.get("sha256") == info.sha256 and isinstance(entry.get("release_signatures"), list):
        kept = [dict(s) for s in entry["release_signatures"] if isinstance(s, dict)]
    entry["sha256"] = info.sha256
    entry["size"] = info.size
    merged = {s.get("keyid"): s for s in kept}
    for sig in signatures:
        merged[sig.keyid] = sig.to_dict()
    old = entry.get("release_signatures")
    new = [merged[k] for k in sorted(merged, key=str)]
    if old is None or [dict(s) for s in old if isinstance(s, dict)] != new:
        entry["release_signatures"] = new
    return _dump(yaml, data)
