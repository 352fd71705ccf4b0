"""The fleet repository as the CLI edits it: a thin, checked wrapper over the git command.

Every edit the CLI makes to desired state is a commit in this repository; nothing writes
the server's database behind Git's back. Failures of git become GitError with a hint.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from kernex_core.errors import KernexError

FALLBACK_IDENTITY = ("-c", "user.name=Kernex CLI", "-c", "user.email=kernex@localhost")


class GitError(KernexError):
    """A git command failed, or the directory is not the repository it should be."""


class FleetRepo:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise GitError(
                f"{self.path} is not a directory", hint="Pass the fleet repository with --repo DIR."
            )
        top = self._run("rev-parse", "--show-toplevel", check=False)
        if top.returncode != 0:
            raise GitError(
                f"{self.path} is not a Git repository",
                hint="Run `kernex init DIR` to make a fleet repository, or pass --repo DIR.",
            )
        self.path = Path(top.stdout.decode().strip())

    def _run(
        self, *args: str, check: bool = True, input_bytes: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True,
            input=input_bytes,
            check=False,
        )
        if check and proc.returncode != 0:
            raise GitError(
                f"git {' '.join(args[:2])} failed: {proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def git(self, *args: str) -> str:
        return self._run(*args).stdout.decode()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def rev_parse(self, rev: str) -> str:
        proc = self._run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        if proc.returncode != 0:
            raise GitError(
                f"unknown revision {rev!r}",
                hint="Name a commit, branch or tag (see `git log --oneline`).",
            )
        return proc.stdout.decode().strip()

    def show(self, rev: str, path: str) -> bytes | None:
        """The file's bytes at ``rev``, or None when it does not exist there."""
        proc = self._run("cat-file", "blob", f"{rev}:{path}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def is_dirty(self, path: str) -> bool:
        return bool(self.git("status", "--porcelain", "--", path).strip())

    def last_change(self, path: str) -> str | None:
        out = self.git("log", "-n", "1", "--format=%H", "--", path).strip()
        return out or None

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether ``older`` is ``newer`` or one of its ancestors (False if either is unknown)."""
        return self._run("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0

    def has_identity(self) -> bool:
        return self._run("config", "user.email", check=False).returncode == 0

    def commit(self, paths: list[str], message: str) -> str:
        """Commit exactly ``paths`` (additions, changes and deletions) with ``message``."""
        self.git("add", "-A", "--", *paths)
        identity = () if self.has_identity() else FALLBACK_IDENTITY
        self.git(*identity, "commit", "--quiet", "-m", message, "--only", "--", *paths)
        return self.head()

    def push(self, remote: str = "origin") -> None:
        branch = self.git("rev-parse", "--abbrev-ref", "HEAD").strip()
        proc = self._run("push", remote, f"HEAD:{branch}", check=False)
        if proc.returncode != 0:
            raise GitError(
                f"git push to {remote} failed: {proc.stderr.decode(errors='replace').strip()}",
                hint="Pull and rebase on the remote branch, then run the command again.",
            )
