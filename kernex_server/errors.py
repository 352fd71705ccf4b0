"""The server's errors, under ``KernexError``.

    KernexError
    └── ServerError                  something the server cannot do; carries a hint
        ├── ServerSetupError         data directory, keys or settings missing or unreadable
        ├── DatabaseError            the database cannot be reached or migrated
        │   └── DatabasePermissionError  the role lacks a right (the hint names the GRANT)
        ├── BundleStoreError         a bundle cannot be stored (digest mismatch, size limit)
        └── EnrollmentError          an enrollment is refused (status code says why)

Git failures are ``kernex_git.GitError`` (the one Git error tree, shared with the CLI).
HTTP handlers turn these into JSON error bodies ``{"error": ..., "hint": ...}``.
"""

from __future__ import annotations

from kernex_core.errors import KernexError


class ServerError(KernexError):
    """Root of the server's own errors."""


class ServerSetupError(ServerError):
    """The data directory, manifest key or settings are missing or unreadable."""


class DatabaseError(ServerError):
    """The database cannot be reached or migrated."""


class DatabasePermissionError(DatabaseError):
    """The database role lacks a right the migrations need."""


class BundleStoreError(ServerError):
    """A bundle upload cannot be stored."""


class EnrollmentError(ServerError):
    """An enrollment is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
