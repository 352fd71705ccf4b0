"""A local Git repository: read commits and files out of objects, commit, push.

Files are read from Git objects, never from a working tree: one ``git ls-tree`` lists
the wanted files of a commit and one ``git cat-file --batch`` streams all their blobs
(ten thousand small files in well under a second, where asking object by object costs
ten times more). The server reads its clone this way; the CLI reads and edits the
operator's checkout with the same class.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from kernex_git.command import GitEnv, run_git
from kernex_git.errors import (
    GitCommandError,
    GitError,
    NotARepositoryError,
    UnknownRevisionError,
)

FALLBACK_IDENTITY = ("-c", "user.name=Kernex", "-c", "user.email=kernex@localhost")
_BLOB_MODES = ("100644", "100755")
_REV_HINT = "Name a commit, branch or tag that exists (see `git log --oneline`)."


class Repository:
    """The repository at ``path`` (a work tree or a bare repository)."""

    def __init__(self, path: str | Path, *, env: GitEnv | None = None) -> None:
        self.path = Path(path).expanduser()
        self.env = env or GitEnv.operator()

    @classmethod
    def open(cls, path: str | Path, *, env: GitEnv | None = None) -> Repository:
        """The work tree that contains ``path``, checked to be one (clear errors if not)."""
        repo = cls(Path(path).expanduser().resolve(), env=env)
        repo.check()
        top = repo.run("rev-parse", "--show-toplevel", check=False)
        if top.returncode == 0 and top.stdout.strip():
            repo.path = Path(top.stdout.decode("utf-8", "surrogateescape").strip())
        return repo

    # -- running -----------------------------------------------------------------------

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_git(args, cwd=self.path, env=self.env, input=input, check=check,
                       timeout=timeout)  # fmt: skip

    def git(self, *args: str) -> str:
        """git's standard output as text (for commands whose output is text)."""
        return self.run(*args).stdout.decode("utf-8", "surrogateescape")

    def check(self) -> None:
        """Raise ``NotARepositoryError`` unless the path is a Git repository."""
        if not self.path.is_dir():
            raise NotARepositoryError(
                f"{self.path} does not exist or is not a directory",
                hint="Pass the fleet repository with --repo, or run `kernex init DIR` to make one.",
            )
        if self.run("rev-parse", "--git-dir", check=False).returncode != 0:
            raise NotARepositoryError(
                f"{self.path} is not a Git repository",
                hint="Run `kernex init DIR` to make a fleet repository, or pass --repo DIR.",
            )

    # -- reading -----------------------------------------------------------------------

    def resolve(self, rev: str) -> str:
        """The full sha of the commit ``rev`` names (a branch, tag, sha or expression)."""
        self.check()
        done = self.run(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}",
            check=False,
        )  # fmt: skip
        sha = done.stdout.decode("ascii", "replace").strip()
        if done.returncode != 0 or not sha:
            raise UnknownRevisionError(f"unknown revision '{rev}' in {self.path}", hint=_REV_HINT)
        return sha

    def head(self) -> str:
        return self.resolve("HEAD")

    def parent(self, rev: str) -> str | None:
        """The first parent of ``rev``, or None for a root commit."""
        sha = self.resolve(rev)
        out = self.git("rev-list", "--parents", "-n", "1", sha).split()
        return out[1] if len(out) > 1 else None

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether ``older`` is ``newer`` or one of its ancestors (False if either is
        unknown to the repository)."""
        done = self.run("merge-base", "--is-ancestor", older, newer, check=False)
        return done.returncode == 0

    def show(self, rev: str, path: str) -> bytes | None:
        """The file's bytes at ``rev``, or None when it does not exist there."""
        done = self.run("cat-file", "blob", f"{rev}:{path}", check=False)
        return done.stdout if done.returncode == 0 else None

    def read_files(
        self,
        rev: str,
        pathspecs: Sequence[str],
        *,
        wanted: Callable[[str], bool] = lambda _path: True,
        max_bytes: int,
    ) -> dict[str, bytes]:
        """The regular files under ``pathspecs`` at ``rev`` that ``wanted`` accepts.

        Symlinks and submodules are skipped. A blob over ``max_bytes`` is returned cut to
        one byte past the limit, so a validator can report it without the whole blob
        being read into memory.
        """
        sha = self.resolve(rev)
        listing = self.run("ls-tree", "-r", "-z", "-l", "--full-tree", sha, "--", *pathspecs)
        small: dict[str, str] = {}
        large: dict[str, str] = {}
        for record in listing.stdout.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, oid, size = meta.decode("ascii").split()
            path = raw_path.decode("utf-8", "surrogateescape")
            if kind != "blob" or mode not in _BLOB_MODES or not wanted(path):
                continue
            (large if int(size) > max_bytes else small)[path] = oid
        files = self._cat_blobs(small)
        for path, oid in large.items():
            files[path] = self._blob_head(oid, max_bytes + 1)
        return files

    def _cat_blobs(self, wanted: dict[str, str]) -> dict[str, bytes]:
        if not wanted:
            return {}
        oids = list(dict.fromkeys(wanted.values()))
        out = self.run("cat-file", "--batch", input="".join(f"{o}\n" for o in oids).encode())
        blobs: dict[str, bytes] = {}
        pos = 0
        data = out.stdout
        for oid in oids:
            end = data.find(b"\n", pos)
            header = data[pos:end].decode("ascii", "replace").split() if end >= 0 else []
            if len(header) != 3 or header[0] != oid:
                raise GitError(f"git cat-file answered {header!r} for {oid}")
            size = int(header[2])
            blobs[oid] = data[end + 1 : end + 1 + size]
            pos = end + 1 + size + 1  # the content is followed by a newline
        return {path: blobs[oid] for path, oid in wanted.items()}

    def _blob_head(self, oid: str, limit: int) -> bytes:
        with subprocess.Popen(
            ["git", "-C", str(self.path), "cat-file", "blob", oid],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env.variables(),
        ) as proc:
            assert proc.stdout is not None  # noqa: S101 - stdout=PIPE guarantees it
            head = proc.stdout.read(limit)
            proc.kill()
        return head

    # -- editing (the CLI) -------------------------------------------------------------

    def is_dirty(self, path: str) -> bool:
        return bool(self.git("status", "--porcelain", "--", path).strip())

    def last_change(self, path: str) -> str | None:
        out = self.git("log", "-n", "1", "--format=%H", "--", path).strip()
        return out or None

    def has_identity(self) -> bool:
        for key in ("user.name", "user.email"):
            done = self.run("config", key, check=False)
            if done.returncode != 0 or not done.stdout.strip():
                return False
        return True

    def commit(self, paths: Sequence[str], message: str) -> str:
        """Commit exactly ``paths`` (additions, changes and deletions) with ``message``;
        a fallback identity is used where the operator has none configured."""
        self.run("add", "-A", "--", *paths)
        identity = () if self.has_identity() else FALLBACK_IDENTITY
        self.run(*identity, "commit", "--quiet", "-m", message, "--only", "--", *paths)
        return self.head()

    def commit_all(self, message: str) -> str:
        self.run("add", "--all")
        identity = () if self.has_identity() else FALLBACK_IDENTITY
        self.run(*identity, "commit", "--quiet", "-m", message)
        return self.head()

    def push(self, remote: str = "origin") -> None:
        """Push the current branch to the same branch of ``remote``."""
        branch = self.git("rev-parse", "--abbrev-ref", "HEAD").strip()
        try:
            self.run("push", "--", remote, f"HEAD:{branch}")
        except GitCommandError as exc:
            raise GitCommandError(
                f"git push to {remote} failed: {exc.stderr}",
                returncode=exc.returncode,
                stderr=exc.stderr,
                hint="Pull and rebase on the remote branch, then run the command again.",
            ) from exc


def init_repository(directory: Path, message: str, *, branch: str = "main") -> Repository:
    """``git init`` ``directory`` (which holds the first files) and commit them all."""
    run_git(["init", "--quiet", "-b", branch], cwd=directory)
    repo = Repository(directory)
    repo.commit_all(message)
    return repo
