"""require_signed_commits: only commits signed by an allowed SSH signer are deployed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kit.device import SimDevice, verify_manifest
from kit.fleet import kernex_yaml

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


def ssh_key(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True
    )
    return path


def signed_commit(repo: Any, key: Path, message: str) -> str:
    repo.git("add", "-A")
    repo.git(
        "-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-q", "-S", "-m", message
    )
    return str(repo.head())


def test_unsigned_and_wrongly_signed_commits_are_not_deployed(
    start_server: Any, fleet_repo: Any, tmp_path: Path
) -> None:
    trusted = ssh_key(tmp_path / "trusted")
    stranger = ssh_key(tmp_path / "stranger")
    data = tmp_path / "data"
    data.mkdir()
    public = (tmp_path / "trusted.pub").read_text().strip()
    (data / "allowed_signers").write_text(f"tests@kernex.dev {public}\n")
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="signed"))
    first = signed_commit(fleet_repo, trusted, "signed start")
    server = start_server(require_signed_commits=True, allowed_signers_file="allowed_signers")
    revisions = server.admin_get("/v1/admin/revisions")["revisions"]
    assert revisions[0]["commit"] == first
    assert revisions[0]["state"] == "deployed"
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    good = device.manifest(server.client)
    assert verify_manifest(good.content, "dev-1", server.key).config["app"]["greeting"] == "signed"

    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="unsigned"))
    fleet_repo.commit("not signed")
    result = server.reconcile()
    assert result["state"] == "unsigned"
    assert "not signed by an allowed signer" in result["errors"][0]["message"]
    assert device.manifest(server.client).content == good.content

    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="stranger"))
    signed_commit(fleet_repo, stranger, "signed by someone else")
    assert server.reconcile()["state"] == "unsigned"
    assert device.manifest(server.client).content == good.content

    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="trusted again"))
    signed_commit(fleet_repo, trusted, "signed by the team")
    assert server.reconcile()["state"] == "deployed"
    later = verify_manifest(device.manifest(server.client).content, "dev-1", server.key)
    assert later.config["app"]["greeting"] == "trusted again"
    assert later.serial == 2
    states = [r["state"] for r in server.admin_get("/v1/admin/revisions")["revisions"]]
    assert states == ["deployed", "unsigned", "unsigned", "deployed"]


def test_missing_allowed_signers_file_deploys_nothing(start_server: Any) -> None:
    server = start_server(require_signed_commits=True, allowed_signers_file="missing")
    revisions = server.admin_get("/v1/admin/revisions")["revisions"]
    assert revisions[0]["state"] == "unsigned"
    assert "allowed-signers" in revisions[0]["errors"][0]["message"]
