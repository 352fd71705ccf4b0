"""Bundles: the tar.gz archives the agent installs; their metadata and member checks (pure).

A bundle is a gzip-compressed tar with ``kernex-bundle.yaml`` at its root::

    name: app
    version: "1.4.0"                    # a string: unquoted, YAML reads 1.10 as 1.1
    hooks:
      install: hooks/install            # a path relative to the bundle root, run as argv[0]
      health: {run: [hooks/health, --quick], timeout: 30}
      reload: hooks/reload              # optional: run after a config change

plus its payload. Hooks are run with an argument list (never a shell) and a timeout in
seconds (default 300).

Nothing in an archive is trusted: ``scan_archive`` checks every member before anything is
written (``MemberChecker``): member paths stay inside the tree (no absolute paths, no
``..``) and never pass through a symlink member; a symlink's target stays inside and passes
through no other symlink before its last component; a hard link names a regular file
member; only regular files, directories and links are allowed (no device nodes or fifos);
setuid/setgid bits are refused; member count and unpacked size are bounded (a tar bomb).
Writing the tree is the agent's part (``kernex_agent.unpack``), with links made last.

Building a bundle from a directory is the CLI's part (``kernex_cli.bundle_build``).
"""

from __future__ import annotations

import enum
import hashlib
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
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


def parse_metadata(raw: bytes, *, numeric_version: bool = False) -> BundleMeta:
    """Parse and validate ``kernex-bundle.yaml``; every problem is a BundleError with a hint.

    ``version`` must be a YAML string: ``version: 1.10`` unquoted is the number 1.1, so it
    is refused with a hint to quote it. The agent passes ``numeric_version=True`` to keep
    reading archives built before this rule (their catalog entries carry the number's
    ``str()``, and so does the metadata read here).
    """
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
        if not numeric_version:
            raise BundleError(
                f"{METADATA_NAME}: version is the number {version!r}, not a string",
                hint='Quote the version exactly as meant, e.g. version: "1.10" '
                "(unquoted, YAML reads 1.10 as the number 1.1).",
            )
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
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES  # bytes of regular-file content


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(frozen=True)
class Member:
    """One checked archive member: a normalised relative path and what to make there."""

    path: str
    kind: Kind
    mode: int = 0o644  # 0o755 or 0o644 for files, 0o755 for directories
    size: int = 0  # bytes, regular files only
    target: str = ""  # symlink: the link text; hard link: the path of a file member

    @property
    def is_link(self) -> bool:
        return self.kind in (Kind.SYMLINK, Kind.HARDLINK)


_KINDS = {
    tarfile.REGTYPE: Kind.FILE,
    tarfile.AREGTYPE: Kind.FILE,
    tarfile.DIRTYPE: Kind.DIR,
    tarfile.SYMTYPE: Kind.SYMLINK,
    tarfile.LNKTYPE: Kind.HARDLINK,
}


def _odd(path: str) -> bool:
    return not path or path.startswith("/") or "\\" in path or "\x00" in path


def check_member(info: tarfile.TarInfo) -> Member:
    """The checks one member passes on its own: a plain relative path inside the tree, a
    file, directory or link, no setuid/setgid bit, links that stay inside lexically."""
    name = info.name
    if _odd(name):
        raise BundleError(f"bundle member {name!r} has an absolute or odd path", hint=_HINT)
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or ".." in name.split("/"):
        raise BundleError(f"bundle member {name!r} escapes the bundle with '..'", hint=_HINT)
    kind = _KINDS.get(info.type)
    if norm == "." and kind is not Kind.DIR:
        kind = None
    if kind is None:
        raise BundleError(
            f"bundle member {name!r} is a device node, fifo or other special file", hint=_HINT
        )
    if info.mode & (stat.S_ISUID | stat.S_ISGID):
        raise BundleError(f"bundle member {name!r} has a setuid/setgid bit", hint=_HINT)
    if kind is Kind.SYMLINK:
        target = info.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(norm), target))
        if _odd(target) or resolved == ".." or resolved.startswith("../"):
            raise BundleError(
                f"bundle member {name!r} is a symlink out of the bundle ({target!r})", hint=_HINT
            )
        return Member(norm, kind, 0o777, target=target)
    if kind is Kind.HARDLINK:
        target = posixpath.normpath(info.linkname)
        if _odd(info.linkname) or target == ".." or target.startswith("../"):
            raise BundleError(
                f"bundle member {name!r} is a hard link out of the bundle ({info.linkname!r})",
                hint=_HINT,
            )
        return Member(norm, kind, target=target)
    if kind is Kind.DIR:
        return Member(norm, kind, 0o755)
    return Member(norm, kind, 0o755 if info.mode & stat.S_IXUSR else 0o644, size=info.size)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class MemberChecker:
    """Checks an archive's members as a whole, in a pure pass over their headers.

    Besides each member's own checks (``check_member``) and the limits, a member's path
    must not pass through a symlink member (whichever comes first in the archive), a
    symlink's target must not pass through one before its last component (so a chain of
    links each inside on its own, like ``s -> .`` and ``up -> s/..``, cannot lead out),
    a hard link must name a regular file member, and no path appears twice.
    """

    def __init__(self, limits: ExtractLimits) -> None:
        self.limits = limits
        self.members: list[Member] = []
        self.unpacked_bytes = 0

    def add(self, info: tarfile.TarInfo) -> Member:
        if len(self.members) >= self.limits.max_members:
            raise BundleError(f"bundle has more than {self.limits.max_members} members (tar bomb?)")
        member = check_member(info)
        self.unpacked_bytes += member.size
        if self.unpacked_bytes > self.limits.max_unpacked_bytes:
            raise BundleError(
                f"bundle unpacks to more than {self.limits.max_unpacked_bytes} bytes (tar bomb?)"
            )
        self.members.append(member)
        return member

    def finish(self, meta: BundleMeta) -> list[Member]:
        """Run the checks across members; return them, every link after the rest."""
        kinds: dict[str, Kind] = {}
        twice: set[str] = set()
        for m in self.members:
            seen = kinds.get(m.path)
            if seen is not None and not (seen is Kind.DIR and m.kind is Kind.DIR):
                twice.add(m.path)
            kinds[m.path] = m.kind
        symlinks = {p for p, k in kinds.items() if k is Kind.SYMLINK}
        for m in self.members:  # the first problem in archive order is the one reported
            if m.path in twice:
                raise BundleError(f"bundle member {m.path!r} appears twice", hint=_HINT)
            for parent in _parents(m.path):
                if parent in symlinks:
                    raise BundleError(
                        f"bundle member {m.path!r} passes through the symlink {parent!r}",
                        hint=_HINT,
                    )
            if m.kind is Kind.SYMLINK:
                self._check_target(m, symlinks)
            elif m.kind is Kind.HARDLINK and kinds.get(m.target) is not Kind.FILE:
                raise BundleError(
                    f"bundle member {m.path!r} is a hard link to {m.target!r}, "
                    "which is not a regular file in the bundle",
                    hint=_HINT,
                )
        for hook in meta.hooks().values():
            if kinds.get(posixpath.normpath(hook.argv[0])) is not Kind.FILE:
                raise BundleError(
                    f"hook file {hook.argv[0]!r} is missing from the bundle",
                    hint="Put the hook file in the bundle directory and rebuild.",
                )
        return [m for m in self.members if not m.is_link] + [m for m in self.members if m.is_link]

    @staticmethod
    def _check_target(m: Member, symlinks: set[str]) -> None:
        parts = [p for p in m.target.split("/") if p not in ("", ".")]
        where = [p for p in posixpath.dirname(m.path).split("/") if p]
        for i, part in enumerate(parts):
            if part == "..":
                if not where:
                    raise BundleError(
                        f"bundle member {m.path!r} is a symlink out of the bundle ({m.target!r})",
                        hint=_HINT,
                    )
                where.pop()
                continue
            where.append(part)
            here = "/".join(where)
            if here in symlinks and i < len(parts) - 1:
                raise BundleError(
                    f"bundle member {m.path!r} links through the symlink {here!r} ({m.target!r})",
                    hint=_HINT,
                )


@dataclass(frozen=True)
class Scanned:
    """An archive that passed every check: its metadata and members (links last)."""

    meta: BundleMeta
    members: list[Member]
    unpacked_bytes: int


def open_stream(fh: BinaryIO) -> tarfile.TarFile:
    """A forward-only reader over a tar.gz stream (read from the file's current offset)."""
    try:
        return tarfile.open(fileobj=fh, mode="r|gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"bundle is not a readable tar.gz: {exc}", hint=_HINT) from exc


def file_sha256(fh: BinaryIO) -> str:
    """Hex SHA-256 of an open file, read from its start."""
    fh.seek(0)
    digest = hashlib.sha256()
    while chunk := fh.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def scan_archive(
    fh: BinaryIO, limits: ExtractLimits | None = None, *, numeric_version: bool = False
) -> Scanned:
    """Read an open tar.gz from its start and check it whole, writing nothing."""
    fh.seek(0)
    checker = MemberChecker(limits or ExtractLimits())
    meta_raw: bytes | None = None
    with open_stream(fh) as tar:
        try:
            for info in tar:
                member = checker.add(info)
                if member.kind is Kind.FILE and member.path == METADATA_NAME:
                    member_fh = tar.extractfile(info)
                    if member_fh is None:  # pragma: no cover - a file gives a stream
                        raise BundleError(f"cannot read {METADATA_NAME}")
                    meta_raw = member_fh.read(MAX_METADATA_BYTES + 1)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"bundle archive is corrupt: {exc}", hint=_HINT) from exc
    if meta_raw is None:
        raise BundleError(f"bundle has no {METADATA_NAME} at its root", hint=_HINT)
    meta = parse_metadata(meta_raw, numeric_version=numeric_version)
    return Scanned(meta, checker.finish(meta), checker.unpacked_bytes)
