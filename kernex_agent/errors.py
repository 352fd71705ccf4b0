"""The agent's errors, under ``KernexError``::

    AgentError                   root of the agent's own errors
    ├── AgentStateError          the data directory is missing, not enrolled or unreadable
    ├── EnrollmentError          enrollment was refused or could not be completed
    ├── ServerUnreachableError   network failure or timeout talking to the server (retried)
    ├── ServerResponseError      the server answered with an unexpected status (``status``)
    ├── DownloadError            a bundle download failed or its bytes did not match
    └── HookFailedError          a bundle hook exited non-zero or timed out (``log_tail``)

Foreign exceptions (httpx, OSError from the file system) are turned into these at the edge
that met them; trust failures stay ``kernex_core`` ``TrustError``s.
"""

from __future__ import annotations

from kernex_core.errors import KernexError


class AgentError(KernexError):
    """Root of the agent's errors."""


class AgentStateError(AgentError):
    """The data directory is missing, not enrolled or unreadable."""


class EnrollmentError(AgentError):
    """Enrollment was refused or could not be completed."""


class ServerUnreachableError(AgentError):
    """The server could not be reached or did not answer in time."""


class ServerResponseError(AgentError):
    """The server answered with a status the agent did not expect."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class DownloadError(AgentError):
    """A bundle download failed, or its bytes did not match the manifest."""


class HookFailedError(AgentError):
    """A bundle hook exited non-zero or timed out."""

    def __init__(self, message: str, *, log_tail: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.log_tail = log_tail
