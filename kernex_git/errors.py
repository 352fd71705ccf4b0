"""The errors of the Git edge, under ``KernexError``.

    KernexError
    └── GitError                     a git command failed (message and hint carry no secrets)
        ├── GitNotInstalledError     no git executable on PATH
        ├── NotARepositoryError      the path is not a Git repository (or does not exist)
        ├── UnknownRevisionError     the revision names no commit
        ├── GitTimeoutError          a git command ran past its time limit and was killed
        └── GitCommandError          git exited non-zero; ``returncode`` and ``stderr``

Every message, hint and stderr text passes through ``redact_text`` when the error is
made, so a token in a repository URL cannot reach a log, a response or a terminal.
"""

from __future__ import annotations

from kernex_core.errors import KernexError
from kernex_git.redact import redact_text


class GitError(KernexError):
    """Git could not do what Kernex asked of it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(redact_text(message), hint=None if hint is None else redact_text(hint))


class GitNotInstalledError(GitError):
    """There is no ``git`` executable on PATH."""

    hint = "Install Git 2.34 or newer and make sure `git` is on PATH."


class NotARepositoryError(GitError):
    """The path is not a Git repository (or does not exist)."""


class UnknownRevisionError(GitError):
    """The revision names no commit in the repository."""


class GitTimeoutError(GitError):
    """A git command ran past its time limit and was killed with its children."""


class GitCommandError(GitError):
    """git exited non-zero. ``stderr`` is git's own text, already redacted."""

    def __init__(
        self, message: str, *, returncode: int, stderr: str = "", hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.stderr = redact_text(stderr)
