"""The Git edge of the reconciler: where the fleet repository's commits come from.

A local path is read in place; a URL is cloned (bare) into the data directory and
fetched on every poll. Files are read from Git objects (``kernex_server.git_tree``),
never from a working tree. Every GitPython error becomes ``GitSourceError``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import git

from kernex_server import git_tree
from kernex_server.errors import GitSourceError

log = logging.getLogger("kernex.server.git")

# Transports a fleet repository may come from. GIT_ALLOW_PROTOCOL overrides any
# protocol.allow configuration of the host, so ext:: (runs a command) and other
# helpers stay off; no prompt may hang the reconciler waiting for a password.
GIT_ENV = {
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
    "GIT_TERMINAL_PROMPT": "0",
}
FETCH_TIMEOUT = 600  # seconds a clone or fetch may take before it is killed


class FleetSource(Protocol):
    """Where the reconciler gets commits and fleet files from."""

    def sync(self) -> None: ...
    def head(self) -> str: ...
    def read(self, commit: str) -> Mapping[str, bytes]: ...
    def is_ancestor(self, older: str, newer: str) -> bool: ...
    def verify_commit(self, commit: str) -> str | None: ...


def is_remote(repo: str) -> bool:
    return "://" in repo or (repo.count(":") == 1 and "@" in repo.split(":")[0])


class GitFleetSource:
    def __init__(
        self, repo: str, branch: str, *, clone_dir: Path, allowed_signers: Path | None = None
    ) -> None:
        self.url = repo
        self.branch = branch
        self.remote = is_remote(repo)
        self.path = Path(clone_dir) if self.remote else Path(repo).expanduser().resolve()
        self.allowed_signers = allowed_signers

    def _git(self) -> git.Git:
        return git.Git(str(self.path))

    def sync(self) -> None:
        if not self.remote:
            if not self.path.exists():
                raise GitSourceError(
                    f"fleet repository {self.path} does not exist",
                    hint="Set `repo` in server.toml to a Git repository path or URL.",
                )
            return
        try:
            if not (self.path / "HEAD").is_file():
                log.info("cloning fleet repository %s into %s", self.url, self.path)
                git.Git().execute(
                    ["git", "clone", "--bare", "--no-tags", "--", self.url, str(self.path)],
                    env=GIT_ENV,
                    kill_after_timeout=FETCH_TIMEOUT,
                )
            spec = f"+refs/heads/{self.branch}:refs/heads/{self.branch}"
            self._git().execute(
                ["git", "fetch", "--prune", "--no-tags", "--", self.url, spec],
                env=GIT_ENV,
                kill_after_timeout=FETCH_TIMEOUT,
            )
        except git.GitCommandError as exc:
            raise GitSourceError(
                f"cannot fetch {self.url} ({self.branch}): {_stderr(exc)}",
                hint="Check the repository URL, the branch and the server's Git credentials.",
            ) from exc

    def head(self) -> str:
        return git_tree.resolve_commit(self.path, f"refs/heads/{self.branch}")

    def read(self, commit: str) -> Mapping[str, bytes]:
        return git_tree.read_fleet_files(self.path, commit)

    def is_ancestor(self, older: str, newer: str) -> bool:
        try:
            self._git().execute(["git", "merge-base", "--is-ancestor", older, newer])
        except git.GitCommandError as exc:
            if exc.status == 1:
                return False
            raise GitSourceError(f"cannot compare {older} and {newer}: {_stderr(exc)}") from exc
        return True

    def verify_commit(self, commit: str) -> str | None:
        """None when the commit carries a signature the allowed signers accept."""
        if self.allowed_signers is None or not self.allowed_signers.is_file():
            return (
                "require_signed_commits is on but no allowed-signers file is configured "
                f"({self.allowed_signers})"
            )
        try:
            self._git().execute(
                [
                    "git",
                    "-c",
                    f"gpg.ssh.allowedSignersFile={self.allowed_signers}",
                    "verify-commit",
                    commit,
                ]
            )
        except git.GitCommandError as exc:
            return f"commit {commit[:12]} is not signed by an allowed signer: {_stderr(exc)}"
        return None


def _stderr(exc: git.GitCommandError) -> str:
    text = str(exc.stderr or "").strip().strip("'").strip()
    return text.replace("stderr: ", "").strip() or str(exc)
