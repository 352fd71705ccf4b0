"""The signed-commit gate: which keys must have signed a commit before it deploys.

Two lists, each enforced when set, a commit must satisfy both:

- ``require_signed_commits`` with ``allowed_signers_file`` in server.toml: an SSH
  allowed-signers file outside Git, set by whoever runs the server;
- ``trusted_signers`` in kernex.yaml, **as listed in the deployed revision**. A commit
  cannot add its own signer: a change to the list takes effect with the commit after the
  one that makes it, and that one must be signed by a key of the list in force. A signer
  removed from the list can no longer deploy once the removal is deployed. A commit that
  turns the list on (the deployed revision lists no signer, or nothing is deployed yet)
  must be signed by one of the keys it lists itself, so it proves the key works.

SSH keys are checked against an allowed-signers file written from the list alone, OpenPGP
fingerprints against the fingerprint gpg reports; the server user's keyring supplies the
public keys and never the trust (``kernex_git.signature``).
"""

from __future__ import annotations

from kernex_core.fleet import Fleet, TrustedSigner
from kernex_server.git_source import FleetSource
from kernex_server.settings import Settings


def before_load(
    settings: Settings,
    source: FleetSource,
    commit: str,
    deployed: Fleet | None,
    deployed_commit: str | None,
) -> str | None:
    """Why ``commit`` may not deploy under server.toml's list and the deployed revision's
    ``trusted_signers`` (checked before the commit's own files are read); None if it may.
    The deployed commit itself passed when it was deployed (a forced pass re-reads it)."""
    if commit == deployed_commit:
        return None
    if settings.require_signed_commits:
        problem = source.verify_commit(commit)
        if problem is not None:
            return problem
    if deployed is not None and deployed.settings.trusted_signers:
        origin = f"kernex.yaml of the deployed revision {(deployed_commit or '')[:12]}"
        return _check(source, commit, deployed.settings.trusted_signers, origin)
    return None


def after_load(
    source: FleetSource, commit: str, deployed: Fleet | None, candidate: Fleet
) -> str | None:
    """A commit that turns ``trusted_signers`` on must be signed by a key it lists."""
    if deployed is not None and deployed.settings.trusted_signers:
        return None  # the deployed list decided, before the commit was read
    if not candidate.settings.trusted_signers:
        return None
    origin = "this commit's kernex.yaml, which turns signing on"
    return _check(source, commit, candidate.settings.trusted_signers, origin)


def _check(
    source: FleetSource, commit: str, signers: tuple[TrustedSigner, ...], origin: str
) -> str | None:
    problem = source.verify_signed_by(commit, [s.key for s in signers])
    if problem is None:
        return None
    names = ", ".join(s.name for s in signers)
    return f"commit {commit[:12]} is not signed by a trusted signer ({names}; {origin}): {problem}"
