"""Where the reconciler's commits come from: the fleet repository, through ``kernex_git``.

A local path is read in place; a URL is fetched into a bare mirror in the data directory
on every poll, in the background (``kernex_server.git_fetch``); the reconciler reads the
mirror and never waits on the network. Files are read from Git objects, never from a
working tree. Git runs in the locked-down server environment (``GitEnv.server``: no
system or user config, only ``<data_dir>/gitconfig``; no prompts; network limits), and
every failure is a ``kernex_git.GitError`` whose text has credentials redacted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from kernex_git import GitEnv, GitError, Repository, fetch_branch, is_remote, read_fleet_files
from kernex_git.signature import verify_signed_by, verify_ssh_allowed


class FleetSource(Protocol):
    """Where the reconciler gets commits and fleet files from."""

    def sync(self) -> None: ...
    def head(self) -> str: ...
    def read(self, commit: str) -> Mapping[str, bytes]: ...
    def is_ancestor(self, older: str, newer: str) -> bool: ...
    def verify_commit(self, commit: str) -> str | None: ...
    def verify_signed_by(self, commit: str, keys: Sequence[str]) -> str | None: ...


class GitFleetSource:
    def __init__(
        self,
        repo: str,
        branch: str,
        *,
        clone_dir: Path,
        allowed_signers: Path | None = None,
        env: GitEnv | None = None,
    ) -> None:
        self.url = repo
        self.branch = branch
        self.remote = is_remote(repo)
        self.env = env or GitEnv.server()
        path = Path(clone_dir) if self.remote else Path(repo).expanduser().resolve()
        self.repo = Repository(path, env=self.env)
        self.allowed_signers = allowed_signers

    @property
    def path(self) -> Path:
        return self.repo.path

    def sync(self) -> None:
        if self.remote:
            fetch_branch(self.url, self.branch, self.path, env=self.env)
        elif not self.path.exists():
            raise GitError(
                f"fleet repository {self.path} does not exist",
                hint="Set `repo` in server.toml to a Git repository path or URL.",
            )

    def head(self) -> str:
        if self.remote and not (self.path / "HEAD").is_file():
            raise GitError(
                "the fleet repository has not been fetched yet",
                hint="The first fetch runs in the background; see `kernex status`.",
            )
        return self.repo.resolve(f"refs/heads/{self.branch}")

    def read(self, commit: str) -> Mapping[str, bytes]:
        return read_fleet_files(self.repo, commit)

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.repo.is_ancestor(older, newer)

    def verify_commit(self, commit: str) -> str | None:
        """None when the commit carries an SSH signature the allowed-signers file of
        server.toml accepts (``require_signed_commits``)."""
        if self.allowed_signers is None or not self.allowed_signers.is_file():
            return (
                "require_signed_commits is on but no allowed-signers file is configured "
                f"({self.allowed_signers})"
            )
        problem = verify_ssh_allowed(self.repo, commit, self.allowed_signers)
        if problem is None:
            return None
        return f"commit {commit[:12]} is not signed by an allowed signer: {problem}"

    def verify_signed_by(self, commit: str, keys: Sequence[str]) -> str | None:
        """None when the commit carries a valid signature by one of ``keys`` (SSH public
        key lines, OpenPGP fingerprints): ``trusted_signers`` of kernex.yaml."""
        return verify_signed_by(self.repo, commit, keys)
