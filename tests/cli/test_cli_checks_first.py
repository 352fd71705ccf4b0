"""Commands check rights and names before they commit (issue 12, item 4): a viewer's
`deploy --wait`, a device name with a typo, new bytes for a published bundle version."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
from kit.cli import Kernex
from kit.fleet import BUNDLE_V1, sha
from kit.server import RunningServer

from kernex_cli.publish import build_to_file


def make_app_bundle(root: Path, version: str, payload: str) -> Path:
    """A real bundle named `app` (the name the test fleet's catalog pins), built."""
    src = root / f"app-src-{version}-{payload}"
    (src / "hooks").mkdir(parents=True)
    (src / "kernex-bundle.yaml").write_text(
        f"name: app\nversion: '{version}'\nhooks:\n  install: hooks/install\n"
        "  health: hooks/health\n"
    )
    for hook in ("install", "health"):
        (src / "hooks" / hook).write_text("#!/bin/sh\nexit 0\n")
        (src / "hooks" / hook).chmod(0o755)
    (src / "payload.txt").write_text(payload)
    return build_to_file(src, root / f"app-{version}-{payload}.tar.gz").path


def stored(server: RunningServer) -> set[str]:
    return {b["sha256"] for b in server.admin("GET", "/v1/admin/bundles")["bundles"]}


def test_a_viewer_deploy_wait_is_refused_before_anything_is_committed(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    head = kx_server.repo.head()
    result = kernex(
        "deploy",
        "app@1.1.0",
        "--group",
        "canary",
        "--repo",
        str(kx_server.repo.path),
        "--wait",
        token=kx_server.token_for("viewer"),
    )
    assert result.exit_code == 1, result.output
    assert "has role viewer; --wait" in result.stderr
    assert "Nothing was committed" in result.stderr
    assert kx_server.repo.head() == head
    assert kx_server.repo.git("status", "--porcelain") == ""


def test_deploy_to_an_unknown_device_needs_new(kernex: Kernex, kx_server: RunningServer) -> None:
    repo = kx_server.repo
    head = repo.head()
    typo = kernex("deploy", "app@1.1.0", "--device", "edge-O01", "--repo", str(repo.path))
    assert typo.exit_code == 1, typo.output
    assert "device edge-O01 has no file" in typo.stderr
    assert "--new" in typo.stderr
    assert repo.head() == head
    assert not (repo.path / "devices" / "edge-O01.yaml").exists()

    made = kernex("deploy", "app@1.1.0", "--device", "edge-001", "--new", "--repo", str(repo.path))
    assert made.exit_code == 0, made.output
    assert repo.head() != head
    assert "app: 1.1.0" in repo.git("show", "HEAD:devices/edge-001.yaml")

    config = kernex("config", "set", "a.b=1", "--device", "edge-O02", "--repo", str(repo.path))
    assert config.exit_code == 1, config.output
    assert "--new" in config.stderr


def test_bundle_push_refuses_new_bytes_for_a_published_version(
    kernex: Kernex, kx_server: RunningServer, tmp_path: Path
) -> None:
    repo = kx_server.repo
    archive = make_app_bundle(tmp_path, "1.0.0", "other bytes\n")  # the catalog pins BUNDLE_V1
    new_sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    head = repo.head()
    refused = kernex("bundle", "push", str(archive), "--repo", str(repo.path))
    assert refused.exit_code == 1, refused.output
    assert "app 1.0.0 is already published with other bytes" in refused.stderr
    assert "--force" in refused.stderr
    assert repo.head() == head
    assert new_sha not in stored(kx_server)

    forced = kernex("bundle", "push", str(archive), "--repo", str(repo.path), "--force")
    assert forced.exit_code == 0, forced.output
    assert new_sha in stored(kx_server)
    assert new_sha in repo.git("show", "HEAD:bundles/app.yaml")


def test_the_server_refuses_to_rebind_a_deployed_version_without_force(
    kx_server: RunningServer,
) -> None:
    kx_server.admin("POST", "/v1/admin/reconcile")
    data = b"not the bytes the catalog pins\n"
    url = f"/v1/admin/bundles/{sha(data)}"
    auth = {"Authorization": f"Bearer {kx_server.token}"}
    with httpx.Client(base_url=kx_server.base, headers=auth, timeout=30) as http:
        refused = http.put(url, params={"name": "app", "version": "1.0.0"}, content=data)
        assert refused.status_code == 409, refused.text
        assert "--force" in refused.json()["hint"]
        assert sha(data) not in stored(kx_server)
        same = http.put(
            f"/v1/admin/bundles/{sha(BUNDLE_V1)}",
            params={"name": "app", "version": "1.0.0"},
            content=BUNDLE_V1,
        )
        assert same.status_code == 201, same.text  # the pinned bytes themselves: fine
        forced = http.put(
            url, params={"name": "app", "version": "1.0.0", "force": "1"}, content=data
        )
        assert forced.status_code == 201, forced.text
    entries = kx_server.admin("GET", "/v1/admin/audit", params={"action": "bundle.upload"})
    details = [e.get("detail") or {} for e in entries["entries"]]
    assert any(d.get("rebinds") == "app@1.0.0" for d in details), details
