"""trusted_signers in kernex.yaml: only commits signed by a listed key deploy.

The list in force is the one of the deployed revision, so a commit cannot add its own
signer; a commit that turns the list on (nothing listed in the deployed revision) must be
signed by one of the keys it lists itself. Real Git, real ssh-keygen and gpg signatures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit.fleet import GIT_ENV, kernex_yaml

needs_ssh = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg")


def fleet_yaml(greeting: str, *signers: tuple[str, str]) -> str:
    text = kernex_yaml(greeting=greeting)
    if signers:
        text += "trusted_signers:\n" + "".join(
            f"  - name: {name}\n    key: {key}\n" for name, key in signers
        )
    return text


def ssh_key(path: Path) -> tuple[Path, str]:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path, path.with_suffix(".pub").read_text().strip()


def ssh_commit(repo: Any, key: Path | None, message: str) -> str:
    if key is None:
        return str(repo.commit(message))
    repo.git("add", "-A")
    signing = ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}")
    repo.git(*signing, "commit", "-q", "--allow-empty", "-S", "-m", message)
    return str(repo.head())


def refused(server: Any, commit: str, why: str) -> None:
    result = server.reconcile()
    assert result["commit"] == commit
    assert result["state"] == "unsigned", result
    assert why in result["errors"][0]["message"], result["errors"]


def deployed(server: Any, commit: str) -> None:
    result = server.reconcile()
    assert result["commit"] == commit
    assert result["state"] == "deployed", result


@needs_ssh
def test_ssh_trusted_signers_decide_what_deploys(
    start_server: Any, fleet_repo: Any, tmp_path: Path
) -> None:
    alice, alice_pub = ssh_key(tmp_path / "alice")
    bob, bob_pub = ssh_key(tmp_path / "bob")
    mallory, mallory_pub = ssh_key(tmp_path / "mallory")
    server = start_server()  # the initial commit lists no signers: it deploys unsigned
    assert server.admin_get("/v1/admin/revisions")["revisions"][0]["state"] == "deployed"

    # Turning the list on: the commit must be signed by a key it lists.
    fleet_repo.write("kernex.yaml", fleet_yaml("on", ("alice", alice_pub)))
    refused(server, ssh_commit(fleet_repo, None, "list alice, unsigned"), "not signed")
    refused(server, ssh_commit(fleet_repo, mallory, "list alice, mallory signs"), "trusted")
    deployed(server, ssh_commit(fleet_repo, alice, "list alice"))

    fleet_repo.write("kernex.yaml", fleet_yaml("unsigned", ("alice", alice_pub)))
    refused(server, ssh_commit(fleet_repo, None, "unsigned"), "carries no signature")
    fleet_repo.write("kernex.yaml", fleet_yaml("stranger", ("alice", alice_pub)))
    refused(server, ssh_commit(fleet_repo, mallory, "stranger"), "not signed by a trusted signer")
    # A commit cannot add its own signer: the deployed revision's list decides.
    fleet_repo.write("kernex.yaml", fleet_yaml("x", ("alice", alice_pub), ("m", mallory_pub)))
    refused(server, ssh_commit(fleet_repo, mallory, "mallory adds herself"), "trusted signer")

    fleet_repo.write("kernex.yaml", fleet_yaml("bob", ("alice", alice_pub), ("bob", bob_pub)))
    deployed(server, ssh_commit(fleet_repo, alice, "alice adds bob"))
    fleet_repo.write("kernex.yaml", fleet_yaml("by bob", ("alice", alice_pub), ("bob", bob_pub)))
    deployed(server, ssh_commit(fleet_repo, bob, "bob signs"))
    fleet_repo.write("kernex.yaml", fleet_yaml("no bob", ("alice", alice_pub)))
    removal = ssh_commit(fleet_repo, alice, "alice removes bob")
    deployed(server, removal)
    fleet_repo.write("kernex.yaml", fleet_yaml("bob again", ("alice", alice_pub)))
    refused(server, ssh_commit(fleet_repo, bob, "removed signer"), "not signed by a trusted")

    # Alice hands over to Bob, signing it while she is listed; the commit deploys, and a
    # forced pass over it again does not judge it by the list it brought.
    fleet_repo.write("kernex.yaml", fleet_yaml("handover", ("bob", bob_pub)))
    handover = ssh_commit(fleet_repo, alice, "alice hands over to bob")
    deployed(server, handover)
    forced = server.admin_post("/v1/admin/reconcile?force=1")
    assert (forced["commit"], forced["state"]) == (handover, "deployed")
    fleet_repo.write("kernex.yaml", fleet_yaml("bob now", ("bob", bob_pub)))
    refused(server, ssh_commit(fleet_repo, alice, "alice is gone"), "not signed by a trusted")
    fleet_repo.write("kernex.yaml", fleet_yaml("bob now", ("alice", alice_pub)))
    removal = ssh_commit(fleet_repo, bob, "bob brings alice back")
    deployed(server, removal)

    # The list survives a restart: it is read from the deployed revision's commit.
    restarted = start_server()
    assert restarted.reconcile()["state"] == "unchanged"
    fleet_repo.write("kernex.yaml", fleet_yaml("after restart", ("alice", alice_pub)))
    refused(restarted, ssh_commit(fleet_repo, None, "unsigned after restart"), "not signed")
    revisions = restarted.admin_get("/v1/admin/revisions")["revisions"]
    assert next(r["commit"] for r in revisions if r["state"] == "deployed") == removal


@pytest.fixture
def gnupg(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A keyring for the test (a short path: gpg-agent's socket lives in it); the server
    inherits GNUPGHOME like any keyring it is given."""
    home = tempfile.mkdtemp(prefix="kxgpg", dir="/tmp")
    os.chmod(home, 0o700)
    env = {**GIT_ENV, "GNUPGHOME": home}
    monkeypatch.setenv("GNUPGHOME", home)
    try:
        yield env
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
        shutil.rmtree(home, ignore_errors=True)


def gpg_key(env: dict[str, str], uid: str) -> str:
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-keys", uid],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def gpg_commit(repo: Any, env: dict[str, str], fpr: str | None, message: str) -> str:
    if fpr is None:
        return str(repo.commit(message))
    args = ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={fpr}"]
    subprocess.run(["git", "-C", str(repo.path), "add", "-A"], env=env, check=True)
    subprocess.run(
        ["git", "-C", str(repo.path), *args, "commit", "-q", "--allow-empty", "-S", "-m", message],
        env=env,
        check=True,
    )
    return str(repo.head())


@needs_gpg
def test_gpg_trusts_only_listed_fingerprints_not_the_whole_keyring(
    start_server: Any, fleet_repo: Any, gnupg: dict[str, str]
) -> None:
    alice = gpg_key(gnupg, "Alice <alice@example.com>")
    bob = gpg_key(gnupg, "Bob <bob@example.com>")
    mallory = gpg_key(gnupg, "Mallory <mallory@example.com>")  # in the keyring, not listed
    server = start_server()

    fleet_repo.write("kernex.yaml", fleet_yaml("on", ("alice", alice), ("bob", bob)))
    deployed(server, gpg_commit(fleet_repo, gnupg, alice, "list alice and bob"))
    fleet_repo.write("kernex.yaml", fleet_yaml("stranger", ("alice", alice), ("bob", bob)))
    refused(server, gpg_commit(fleet_repo, gnupg, mallory, "mallory"), "not signed by a trusted")
    fleet_repo.write("kernex.yaml", fleet_yaml("unsigned", ("alice", alice), ("bob", bob)))
    refused(server, gpg_commit(fleet_repo, gnupg, None, "unsigned"), "carries no signature")
    deployed(server, gpg_commit(fleet_repo, gnupg, bob, "bob signs"))

    fleet_repo.write("kernex.yaml", fleet_yaml("no bob", ("alice", alice)))
    deployed(server, gpg_commit(fleet_repo, gnupg, alice, "alice removes bob"))
    fleet_repo.write("kernex.yaml", fleet_yaml("bob again", ("alice", alice)))
    refused(server, gpg_commit(fleet_repo, gnupg, bob, "removed"), "not signed by a trusted")
    deployed(server, gpg_commit(fleet_repo, gnupg, alice, "alice again"))


@needs_gpg
def test_require_signed_commits_does_not_trust_the_servers_keyring(
    start_server: Any, fleet_repo: Any, gnupg: dict[str, str], tmp_path: Path
) -> None:
    """server.toml's allowed-signers file lists SSH keys; a commit signed by some key of
    the server user's keyring is not thereby signed by an allowed signer."""
    stranger = gpg_key(gnupg, "Stranger <stranger@example.com>")
    data = tmp_path / "data"
    data.mkdir()
    (data / "allowed_signers").write_text("")
    gpg_commit(fleet_repo, gnupg, stranger, "signed by a key the keyring happens to hold")
    server = start_server(require_signed_commits=True, allowed_signers_file="allowed_signers")
    newest = server.admin_get("/v1/admin/revisions")["revisions"][0]
    assert newest["state"] == "unsigned"
    assert "lists SSH keys only" in newest["errors"][0]["message"]
