"""The error tree shared by every Kernex program.

    KernexError                      root; carries a hint (what to do next)
    ├── FleetInvalidError            the fleet repository does not validate (all issues at once)
    │   └── FleetConflictError       equal-priority groups set the same key for inventory devices
    ├── KeyFormatError               a key file or encoded key cannot be read
    ├── TrustError                   something signed failed verification
    │   ├── EnvelopeError            a DSSE envelope is malformed or not signed by a trusted key
    │   ├── ManifestRejectedError    a manifest fails the agent's trust rules (reason names which)
    │   ├── ReleaseSignatureError    a bundle lacks a valid release signature
    │   └── RequestSignatureError    an HTTP message signature is missing, bad, stale or replayed
    └── BundleError                  a bundle archive is malformed or hostile

Programs add their own subtrees under KernexError (the server's, the agent's, the CLI's),
and every foreign exception is turned into one of these at the edge that met it.
"""

from __future__ import annotations

from dataclasses import dataclass


class KernexError(Exception):
    """Root of every error Kernex raises on purpose.

    ``hint`` tells a person what to do next; renderers print it under the message.
    """

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ValidationIssue:
    """One problem in the fleet repository, located as precisely as the source allows."""

    file: str
    line: int | None
    column: int | None
    key_path: str  # dotted path of the offending key, e.g. "groups.canary.bundles.app"
    message: str
    hint: str | None = None

    def location(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        key = f" [{self.key_path}]" if self.key_path else ""
        return f"{self.location()}: {self.message}{key}"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "key_path": self.key_path,
            "message": self.message,
            "hint": self.hint,
        }


class FleetInvalidError(KernexError):
    """The fleet repository does not validate; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        count = len(issues)
        super().__init__(
            f"fleet repository is invalid: {count} error{'s' if count != 1 else ''}",
            hint="Fix the errors listed (file:line:column) and run `kernex validate` again.",
        )
        self.issues = issues


class FleetConflictError(FleetInvalidError):
    """Resolving devices met two matching groups of equal priority that set the same key.

    Raised by ``Fleet.resolve``/``resolve_device`` for devices the repository does not list
    (their labels come from enrollment), with one issue per conflict; a revision that
    raises it should be treated like an invalid one.
    """


class KeyFormatError(KernexError):
    """A key file or an encoded key could not be read."""


class TrustError(KernexError):
    """Something signed did not verify."""


class EnvelopeError(TrustError):
    """A DSSE envelope is malformed or carries no signature by a trusted key."""


class ManifestRejectedError(TrustError):
    """A manifest fails one of the agent's trust rules.

    ``reason`` is a short machine-readable word (``signature``, ``device``, ``serial``,
    ``expired``, ``format``, ``size``, ``release``) for metrics, reports and tests.
    """

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class ReleaseSignatureError(TrustError):
    """A bundle carries no valid signature by a pinned release key."""


class RequestSignatureError(TrustError):
    """An HTTP message signature is missing, malformed, bad, stale or replayed.

    ``reason`` is one of ``missing``, ``malformed``, ``unknown_key``, ``bad_signature``,
    ``digest``, ``stale``, ``replay``, for metrics and logs.
    """

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class BundleError(KernexError):
    """A bundle archive is malformed or hostile."""
