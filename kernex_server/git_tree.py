"""Reading fleet files out of Git objects (never a working tree).

One ``git ls-tree`` lists the fleet files of a commit and one ``git cat-file --batch``
streams all their blobs: ten thousand small files in well under a second, where walking
the tree object by object costs ten times more. Git's own failures become
``GitSourceError`` subclasses with hints.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from kernex_core.errors import KernexError
from kernex_core.fleet import FLEET_DIRS, FLEET_FILE, MAX_FILE_BYTES, is_fleet_file

_BLOB_MODES = ("100644", "100755")


class GitSourceError(KernexError):
    """Git could not give Kernex what it asked for."""


class NotARepositoryError(GitSourceError):
    """The path is not a Git repository (or does not exist)."""


class UnknownRevisionError(GitSourceError):
    """The revision names no commit in the repository."""


def _git(repo: str | Path, *args: str, stdin: bytes | None = None) -> bytes:
    path = Path(repo)
    if not path.is_dir():
        raise NotARepositoryError(
            f"{path} does not exist or is not a directory",
            hint="Pass the fleet repository with --repo, or run `kernex init DIR` to make one.",
        )
    try:
        done = subprocess.run(
            ["git", "-C", str(path), *args],
            input=stdin,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise GitSourceError("git is not installed", hint="Install Git 2.24 or newer.") from exc
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        if "not a git repository" in message.lower():
            raise NotARepositoryError(
                f"{path} is not a Git repository",
                hint="Run `kernex init DIR` to make a fleet repository, or `git init` here.",
            )
        raise GitSourceError(f"git {args[0]} failed: {message}")
    return done.stdout


def resolve_commit(repo: str | Path, rev: str) -> str:
    """The full sha of the commit ``rev`` names (a branch, tag, sha or expression)."""
    _git(repo, "rev-parse", "--git-dir")  # a clear error for a path that is no repository
    try:
        out = _git(
            repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"
        )
    except GitSourceError as exc:
        raise UnknownRevisionError(
            f"unknown revision '{rev}' in {repo}",
            hint="Name a commit, branch or tag that exists (see `git log --oneline`).",
        ) from exc
    sha = out.decode("ascii").strip()
    if not sha:
        raise UnknownRevisionError(
            f"unknown revision '{rev}' in {repo}",
            hint="Name a commit, branch or tag that exists (see `git log --oneline`).",
        )
    return sha


def parent_commit(repo: str | Path, rev: str) -> str | None:
    """The first parent of ``rev``, or None for a root commit."""
    sha = resolve_commit(repo, rev)
    out = _git(repo, "rev-list", "--parents", "-n", "1", sha).decode("ascii").split()
    return out[1] if len(out) > 1 else None


def read_fleet_files(repo: str | Path, rev: str) -> dict[str, bytes]:
    """The fleet files (``kernex.yaml``, ``bundles|groups|devices/*.yaml``) at ``rev``.

    A blob over the per-file limit is returned cut to one byte past the limit, so that
    validation reports it without the whole blob being read into memory.
    """
    sha = resolve_commit(repo, rev)
    listing = _git(repo, "ls-tree", "-r", "-z", "-l", "--full-tree", sha, "--",
                   FLEET_FILE, *FLEET_DIRS)  # fmt: skip
    wanted: dict[str, str] = {}
    oversized: dict[str, str] = {}
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, kind, oid, size = meta.decode("ascii").split()
        path = raw_path.decode("utf-8", "surrogateescape")
        if kind != "blob" or mode not in _BLOB_MODES or not is_fleet_file(path):
            continue
        if int(size) > MAX_FILE_BYTES:
            oversized[path] = oid
        else:
            wanted[path] = oid
    files = _cat_blobs(repo, wanted)
    for path, oid in oversized.items():
        files[path] = _blob_head(repo, oid, MAX_FILE_BYTES + 1)
    return files


def _cat_blobs(repo: str | Path, wanted: dict[str, str]) -> dict[str, bytes]:
    if not wanted:
        return {}
    oids = list(wanted.values())
    out = _git(repo, "cat-file", "--batch", stdin="".join(f"{o}\n" for o in oids).encode())
    blobs: dict[str, bytes] = {}
    pos = 0
    for oid in oids:
        end = out.index(b"\n", pos)
        header = out[pos:end].decode("ascii").split()
        if len(header) != 3 or header[0] != oid:
            raise GitSourceError(f"git cat-file answered {header!r} for {oid}")
        size = int(header[2])
        blobs[oid] = out[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1  # the content is followed by a newline
    return {path: blobs[oid] for path, oid in wanted.items()}


def _blob_head(repo: str | Path, oid: str, limit: int) -> bytes:
    with subprocess.Popen(
        ["git", "-C", str(repo), "cat-file", "blob", oid], stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None  # noqa: S101 - stdout=PIPE guarantees it
        head = proc.stdout.read(limit)
        proc.kill()
    return head
