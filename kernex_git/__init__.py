"""Kernex's one edge to Git: every git command the server and the CLI run goes through here.

Plain ``git`` subprocesses (no GitPython, see docs/architecture.md), one error tree
(``GitError``), one locked-down environment for the server (``GitEnv.server``), network
limits on fetches, and ``redact_url`` / ``redact_text`` so credentials in repository URLs
never reach a message, log or response. Imports only ``kernex_core``.
"""

from kernex_git.command import GitEnv, NetworkLimits, run_git, stop_all
from kernex_git.errors import (
    GitCommandError,
    GitError,
    GitNotInstalledError,
    GitTimeoutError,
    NotARepositoryError,
    UnknownRevisionError,
)
from kernex_git.redact import redact_text, redact_url
from kernex_git.remote import fetch_branch, is_remote
from kernex_git.repo import Repository, init_repository
from kernex_git.tree import read_fleet_files

__all__ = [
    "GitCommandError",
    "GitEnv",
    "GitError",
    "GitNotInstalledError",
    "GitTimeoutError",
    "NetworkLimits",
    "NotARepositoryError",
    "Repository",
    "UnknownRevisionError",
    "fetch_branch",
    "init_repository",
    "is_remote",
    "read_fleet_files",
    "redact_text",
    "redact_url",
    "run_git",
    "stop_all",
]
