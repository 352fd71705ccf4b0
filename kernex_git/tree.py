"""The fleet files of a commit (``kernex.yaml`` and ``bundles|groups|devices/*.yaml``)."""

from __future__ import annotations

from pathlib import Path

from kernex_core.fleet import FLEET_DIRS, FLEET_FILE, MAX_FILE_BYTES, is_fleet_file
from kernex_git.command import GitEnv
from kernex_git.repo import Repository


def read_fleet_files(
    repo: Repository | str | Path, rev: str, *, env: GitEnv | None = None
) -> dict[str, bytes]:
    """The fleet files at ``rev``, read from Git objects. A file over the per-file limit
    is returned cut to one byte past it, so validation reports it."""
    repository = repo if isinstance(repo, Repository) else Repository(repo, env=env)
    return repository.read_files(
        rev, [FLEET_FILE, *FLEET_DIRS], wanted=is_fleet_file, max_bytes=MAX_FILE_BYTES
    )
