"""Bundles: the tar.gz archives the agent installs, and how to read, check and build them.

A bundle is a gzip-compressed tar with ``kernex-bundle.yaml`` at its root::

    name: app
    version: 1.4.0
    hooks:
      install: hooks/install            # a path relative to the bundle root, run as argv[0]
      health: {run: [hooks/health, --quick], timeout: 30}
      reload: hooks/reload              # optional: run after a config change

plus its payload. Hooks are run with an argument list (never a shell) and a timeout in
seconds (default 300).

Extraction trusts nothing in the archive: member paths must stay inside the tree (no
absolute paths, no ``..``), links must point inside it, only regular files, directories
and links are allowed (no device nodes or fifos), setuid/setgid bits are refused, and
member count and total unpacked size are bounded (a tar bomb). Python's own
``filter="data"`` runs as well, as a second line.

``build_bundle`` is reproducible: the same directory gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from kernex_core.errors import BundleError
from kernex_core.formats import NAME_RE, VERSION_RE

METADATA_NAME = "kernex-bundle.yaml"
DEFAULT_HOOK_TIMEOUT = 300.0  # seconds
MAX_HOOK_TIMEOUT = 24 * 3600.0  # seconds
MAX_MEMBERS = 20_000
MAX_UNPACKED_BYTES = 2 * 1024**3  # 2 GiB
MAX_METADATA_BYTES = 64 * 1024
HOOK_NAMES = ("install", "health", "reload")
_HINT = "Rebuild the bundle with `kernex bundle build DIR`."


@dataclass(frozen=True)
class Hook:
    """One hook: an argv whose first element is a path relative to the bundle root."""

    argv: tuple[str, ...]
    timeout: float = DEFAULT_HOOK_TIMEOUT  # seconds

    def to_dict(self) -> dict[str, Any]:
        return {"run": list(self.argv), "timeout": self.timeout}


@dataclass(frozen=True)
class BundleMeta:
    name: str
    version: str
    install: Hook
    health: Hook
    reload: Hook | None = None

    def hooks(self) -> dict[str, Hook]:
        out = {"install": self.install, "health": self.health}
        if self.reload is not None:
            out["reload"] = self.reload
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "hooks": {k: h.to_dict() for k, h in self.hooks().items()},
        }


def _safe_relpath(value: str, what: str) -> str:
    norm = posixpath.normpath(value)
    if (
        not value
        or value.startswith("/")
        or norm.startswith("../")
        or norm in ("..", ".")
        or "\\" in value
        or "\x00" in value
    ):
        raise BundleError(
            f"{what}: path {value!r} must be relative to the bundle root and stay inside it",
            hint="Name hook files like `hooks/install.sh`.",
        )
    return norm


def _parse_hook(name: str, raw: Any) -> Hook:
    timeout: Any = DEFAULT_HOOK_TIMEOUT
    run: Any = raw
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"run", "timeout"}
        if unknown:
            raise BundleError(
                f"hook {name!r}: unknown key(s) {', '.join(sorted(map(str, unknown)))}",
                hint="A hook is a path, or {run: path-or-argv, timeout: seconds}.",
            )
        run = raw.get("run")
        timeout = raw.get("timeout", DEFAULT_HOOK_TIMEOUT)
    argv: list[Any] = [run] if isinstance(run, str) else run
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise BundleError(
            f"hook {name!r} must be a path or a list of strings (argv)",
            hint="Example: `install: hooks/install.sh`.",
        )
    if (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_HOOK_TIMEOUT
    ):
        raise BundleError(
            f"hook {name!r}: timeout must be a number of seconds in (0, {int(MAX_HOOK_TIMEOUT)}]"
        )
    argv[0] = _safe_relpath(argv[0], f"hook {name!r}")
    return Hook(argv=tuple(argv), timeout=float(timeout))


# libyaml's safe loader when PyYAML was built with it: the same safe subset, several times
# faster (every install and every config change parses the bundles' metadata).
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_metadata(raw: bytes) -> BundleMeta:
    """Parse and validate ``kernex-bundle.yaml``; every problem is a BundleError with a hint."""
    if len(raw) > MAX_METADATA_BYTES:
        raise BundleError(f"{METADATA_NAME} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        data = yaml.load(raw, Loader=_SAFE_LOADER)  # noqa: S506 - a SafeLoader (C or Python)
    except yaml.YAMLError as exc:
        raise BundleError(f"{METADATA_NAME} is not valid YAML: {exc}", hint=_HINT) from exc
    if not isinstance(data, Mapping):
        raise BundleError(f"{METADATA_NAME} must be a mapping with name, version and hooks")
    unknown = set(data) - {"name", "version", "hooks"}
    if unknown:
        raise BundleError(
            f"{METADATA_NAME}: unknown key(s) {', '.join(sorted(map(str, unknown)))}",
            hint="Allowed keys: name, version, hooks.",
        )
    name, version, hooks = data.get("name"), data.get("version"), data.get("hooks")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BundleError(
            f"{METADATA_NAME}: name {name!r} is not a valid bundle name",
            hint="Use lower-case letters, digits, '.', '_' and '-' (at most 63).",
        )
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise BundleError(
            f"{METADATA_NAME}: version {version!r} is not valid",
            hint='Quote the version, e.g. version: "1.4.0".',
        )
    if not isinstance(hooks, Mapping):
        raise BundleError(f"{METADATA_NAME}: 'hooks' must map install/health/reload to files")
    unknown = set(hooks) - set(HOOK_NAMES)
    if unknown:
        raise BundleError(
            f"{METADATA_NAME}: unknown hook(s) {', '.join(sorted(map(str, unknown)))}",
            hint="Hooks are install, health and (optional) reload.",
        )
    for required in ("install", "health"):
        if required not in hooks:
            raise BundleError(f"{METADATA_NAME}: the {required!r} hook is required")
    return BundleMeta(
        name=name,
        version=version,
        install=_parse_hook("install", hooks["install"]),
        health=_parse_hook("health", hooks["health"]),
        reload=_parse_hook("reload", hooks["reload"]) if "reload" in hooks else None,
    )


@dataclass(frozen=True)
class ExtractLimits:
    max_members: int = MAX_MEMBERS
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES


def _check_member(member: tarfile.TarInfo) -> str:
    name = member.name
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise BundleError(f"bundle member {name!r} has an absolute or odd path", hint=_HINT)
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or ".." in norm.split("/"):
        raise BundleError(f"bundle member {name!r} escapes the bundle with '..'", hint=_HINT)
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise BundleError(
            f"bundle member {name!r} is a device node, fifo or other special file", hint=_HINT
        )
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise BundleError(f"bundle member {name!r} has a setuid/setgid bit", hint=_HINT)
    if member.issym():
        target = member.linkname
        base = posixpath.dirname(norm)
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise BundleError(
                f"bundle member {name!r} is a symlink out of the bundle ({target!r})", hint=_HINT
            )
    if member.islnk():
        target = posixpath.normpath(member.linkname)
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise BundleError(
                f"bundle member {name!r} is a hard link out of the bundle ({member.linkname!r})",
                hint=_HINT,
            )
    return norm


def _open(fh: BinaryIO) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=fh, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle is not a readable tar.gz: {exc}", hint=_HINT) from exc


def file_sha256(fh: BinaryIO) -> str:
    """Hex SHA-256 of an open file, read from its start."""
    fh.seek(0)
    digest = hashlib.sha256()
    while chunk := fh.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def check_archive(path: Path, limits: ExtractLimits | None = None) -> BundleMeta:
    """Check every member and the metadata without writing anything; return the metadata."""
    with open(path, "rb") as fh:
        return _check_members(fh, limits or ExtractLimits())


def _check_members(fh: BinaryIO, limits: ExtractLimits) -> BundleMeta:
    fh.seek(0)
    meta_raw: bytes | None = None
    total = 0
    count = 0
    with _open(fh) as tar:
        try:
            for member in tar:
                count += 1
                if count > limits.max_members:
                    raise BundleError(
                        f"bundle has more than {limits.max_members} members (tar bomb?)"
                    )
                norm = _check_member(member)
                if member.isfile():
                    total += member.size
                    if total > limits.max_unpacked_bytes:
                        raise BundleError(
                            f"bundle unpacks to more than {limits.max_unpacked_bytes} bytes "
                            "(tar bomb?)"
                        )
                    if norm == METADATA_NAME:
                        member_fh = tar.extractfile(member)
                        if member_fh is None:  # pragma: no cover - isfile() gives a stream
                            raise BundleError(f"cannot read {METADATA_NAME}")
                        meta_raw = member_fh.read(MAX_METADATA_BYTES + 1)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"bundle archive is corrupt: {exc}", hint=_HINT) from exc
    if meta_raw is None:
        raise BundleError(f"bundle has no {METADATA_NAME} at its root", hint=_HINT)
    return parse_metadata(meta_raw)


def extract_bundle(
    path: Path, dest: Path, limits: ExtractLimits | None = None, *, sha256: str | None = None
) -> BundleMeta:
    """Check the archive, then unpack it into ``dest`` (which must not exist yet).

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
        meta = _check_members(fh, limits or ExtractLimits())
        dest.mkdir(mode=0o755)
        fh.seek(0)
        with _open(fh) as tar:
            try:
                tar.extractall(dest, filter="data")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise BundleError(f"bundle could not be unpacked: {exc}", hint=_HINT) from exc
    for hook in meta.hooks().values():
        target = dest / hook.argv[0]
        if not target.is_file() or target.is_symlink():
            raise BundleError(
                f"hook file {hook.argv[0]!r} is missing from the bundle",
                hint="Put the hook file in the bundle directory and rebuild.",
            )
    return meta


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
        _check_member(info)
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
    meta_path = src_dir / METADATA_NAME
    if not meta_path.is_file():
        raise BundleError(
            f"{src_dir} has no {METADATA_NAME}",
            hint="Write kernex-bundle.yaml with name, version and hooks (see docs/bundles.md).",
        )
    meta = parse_metadata(meta_path.read_bytes())
    for hook in meta.hooks().values():
        if not (src_dir / hook.argv[0]).is_file():
            raise BundleError(f"hook file {hook.argv[0]!r} is missing from {src_dir}")
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
    return out.getvalue()
