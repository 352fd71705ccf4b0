"""Who signed a commit, checked against a list of keys and nothing else.

``git verify-commit`` alone is not a trust decision: for an OpenPGP signature it accepts
any key in the keyring of the user running it, whatever its owner. Here the signature
format is read from the commit object and each format is checked against the list:

- SSH: ``git verify-commit`` with an allowed-signers file written from the listed SSH
  keys only (a temporary file), so ``ssh-keygen -Y verify`` knows no other key;
- OpenPGP: ``git verify-commit --raw``; the signature must be valid and the fingerprint
  gpg reports (``VALIDSIG``: the signing key's or its primary key's) must be listed. The
  keyring only supplies the public key material, never the trust;
- anything else (X.509) is refused.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kernex_git.errors import GitCommandError
from kernex_git.repo import Repository

OPENPGP_FINGERPRINT = re.compile(r"^[0-9A-Fa-f]{40}\Z")
_SIGNATURE_HEADERS = (b"gpgsig ", b"gpgsig-sha256 ")
_PRINCIPAL_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


def signature_format(repo: Repository, commit: str) -> str | None:
    """``"ssh"``, ``"openpgp"`` or ``"other"`` for a signed commit; None when unsigned."""
    raw = repo.run("cat-file", "commit", commit).stdout
    for line in raw.split(b"\n\n", 1)[0].split(b"\n"):
        if line.startswith(_SIGNATURE_HEADERS):
            armor = line.split(b" ", 1)[1].strip()
            if armor.startswith(b"-----BEGIN SSH SIGNATURE-----"):
                return "ssh"
            if armor.startswith(b"-----BEGIN PGP SIGNATURE-----"):
                return "openpgp"
            return "other"
    return None


def verify_signed_by(repo: Repository, commit: str, keys: Sequence[str]) -> str | None:
    """None when ``commit`` carries a valid signature by one of ``keys`` (SSH public key
    lines or OpenPGP fingerprints); otherwise why not, in one line."""
    kind = signature_format(repo, commit)
    if kind is None:
        return "it carries no signature"
    if kind == "ssh":
        ssh_keys = [k for k in keys if not OPENPGP_FINGERPRINT.match(k)]
        if not ssh_keys:
            return "it is signed with an SSH key and no SSH key is listed"
        return _verify_ssh(repo, commit, ssh_keys)
    if kind == "openpgp":
        fingerprints = {k.upper() for k in keys if OPENPGP_FINGERPRINT.match(k)}
        if not fingerprints:
            return "it is signed with an OpenPGP key and no OpenPGP fingerprint is listed"
        return _verify_openpgp(repo, commit, fingerprints)
    return "its signature is neither SSH nor OpenPGP (X.509 signatures are not accepted)"


def verify_ssh_allowed(repo: Repository, commit: str, allowed_signers: Path) -> str | None:
    """None when ``commit`` has an SSH signature by a key in the ``allowed_signers`` file."""
    kind = signature_format(repo, commit)
    if kind is None:
        return "it carries no signature"
    if kind != "ssh":
        return (
            "the allowed-signers file lists SSH keys only; list OpenPGP fingerprints in "
            "trusted_signers of kernex.yaml instead"
        )
    return _run_verify(repo, commit, allowed_signers)


def _verify_ssh(repo: Repository, commit: str, ssh_keys: Sequence[str]) -> str | None:
    lines = [f"signer-{i}@kernex {key.strip()}\n" for i, key in enumerate(ssh_keys)]
    with tempfile.TemporaryDirectory(prefix="kernex-signers-") as tmp:
        allowed = Path(tmp) / "allowed_signers"
        allowed.write_text("".join(lines), encoding="utf-8")
        problem = _run_verify(repo, commit, allowed)
    if problem is None:
        return None
    key = re.search(r"key (SHA256:[A-Za-z0-9+/=]+)", problem)
    if key and "No principal matched" in problem:
        return f"its SSH signature is by key {key.group(1)}, which is not listed"
    return f"its SSH signature does not verify ({problem})"


def _run_verify(repo: Repository, commit: str, allowed_signers: Path) -> str | None:
    try:
        repo.run("-c", f"gpg.ssh.allowedSignersFile={allowed_signers}", "verify-commit", commit)
    except GitCommandError as exc:
        text = " ".join(exc.stderr.split())
        return text or f"git verify-commit exited with {exc.returncode}"
    return None


def _verify_openpgp(repo: Repository, commit: str, fingerprints: set[str]) -> str | None:
    done = repo.run("-c", "gpg.format=openpgp", "verify-commit", "--raw", commit, check=False)
    status = done.stderr.decode("utf-8", "replace").splitlines()
    words = [line.split()[1:] for line in status if line.startswith("[GNUPG:] ")]
    valid = [w for w in words if w and w[0] == "VALIDSIG"]
    if done.returncode != 0 or not valid:
        missing = [w[1] for w in words if len(w) > 6 and w[0] == "ERRSIG" and w[6] == "9"]
        if missing:
            return (
                f"the server's keyring lacks OpenPGP key {missing[0]}; import the listed "
                "signers' public keys with `gpg --import` as the server's user"
            )
        reasons = sorted({w[0] for w in words if w and w[0] in _BAD_STATUS})
        return f"its OpenPGP signature does not verify ({', '.join(reasons) or 'gpg failed'})"
    signed_by = {w[1].upper() for w in valid if len(w) > 1}
    signed_by |= {w[10].upper() for w in valid if len(w) > 10}  # the primary key
    if signed_by & fingerprints:
        return None
    return f"its OpenPGP signature is by key {valid[0][1]}, which is not listed"


_BAD_STATUS = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}
