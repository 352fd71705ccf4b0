"""Key rotation with real parts: a `kernex server run` process, `kernex agent run` processes
and the `kernex keys` commands.

Manifest key: `rotate-manifest-key` announces a new key in manifests the old key signs;
`--finish` is refused while a device (stopped) has not taken it, then succeeds; devices
keep converging under the new key and trust it alone (a manifest the old key signs is
refused under their persisted anchors). Release keys: `rotate-release-key` hands devices
a set the old release key signed; afterwards a bundle only the old key signed is refused
and one the new key signed installs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit.bundles import bundle_bytes
from kit.fleet import FleetRepo, kernex_yaml, sha
from kit.wait import wait_for

from kernex_cli.localserver import LocalServer
from kernex_core import keys
from kernex_core.errors import ManifestRejectedError
from kernex_core.manifest import Manifest, sign_manifest
from kernex_core.release import sign_release
from kernex_core.trust import TrustAnchors, accept_manifest

pytestmark = pytest.mark.e2e
KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]
OK = "#!/bin/sh\nexit 0\n"


def make_bundle(root: Path, version: str) -> bytes:
    return bundle_bytes(root, "app", version, install=OK, health=OK)


class Fleet:
    def __init__(self, local: LocalServer, repo: FleetRepo, root: Path) -> None:
        self.local, self.repo, self.root = local, repo, root
        self.client = httpx.Client(
            base_url=local.base_url,
            headers={"Authorization": f"Bearer {local.admin_token}"},
            timeout=30,
        )
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.catalog: dict[str, tuple[bytes, list[dict[str, Any]]]] = {}

    def kernex(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KERNEX_SERVER": self.local.base_url,
            "KERNEX_TOKEN": self.local.admin_token,
            "XDG_CONFIG_HOME": str(self.root / "config"),
        }
        done = subprocess.run([*KERNEX, *args], capture_output=True, text=True, timeout=60, env=env)
        if ok:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def publish(self, version: str, blob: bytes, signed_by: list[keys.PrivateKey]) -> None:
        put = self.client.put(f"/v1/admin/bundles/{sha(blob)}", content=blob)
        assert put.status_code in (200, 201), put.text
        sigs = [sign_release(k, "app", version, sha(blob), len(blob)) for k in signed_by]
        self.catalog[version] = (blob, [s.to_dict() for s in sigs])
        lines = ["name: app", "versions:"]
        for v, (b, signatures) in sorted(self.catalog.items()):
            lines += [f"  {v}:", f"    sha256: {sha(b)}", f"    size: {len(b)}"]
            lines.append(f"    release_signatures: {json.dumps(signatures)}")
        self.repo.write("bundles/app.yaml", "\n".join(lines) + "\n")

    def deploy(self, version: str, greeting: str) -> str:
        self.repo.write("kernex.yaml", kernex_yaml(version=version, greeting=greeting))
        return self.repo.commit(f"app {version}, {greeting}")

    def enroll(self, device_id: str, release_pub: Path) -> Path:
        token = self.client.post("/v1/admin/enrollment-tokens", json={"max_uses": 1}).json()
        data = self.root / device_id
        self.kernex(
            "agent", "enroll", "--server", self.local.base_url, "--token", token["token"],
            "--device-id", device_id, "--release-key", str(release_pub), "--data-dir", str(data),
        )  # fmt: skip
        return data

    def start(self, device_id: str) -> None:
        with (self.root / f"{device_id}.log").open("ab") as log:
            self.agents[device_id] = subprocess.Popen(
                [*KERNEX, "agent", "run", "--data-dir", str(self.root / device_id)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self, device_id: str) -> None:
        agent = self.agents.pop(device_id)
        agent.terminate()
        agent.wait(timeout=30)

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/v1/admin/devices/{device_id}").json())

    def converged(self, device_id: str, version: str) -> bool:
        d = self.device(device_id)
        status = d.get("status") or {}
        return (
            status.get("phase") == "healthy"
            and status.get("serial") == d["desired_serial"]
            and status.get("bundles") == {"app": version}
        )

    def anchors(self, device_id: str) -> TrustAnchors:
        state = json.loads((self.root / device_id / "state.json").read_text())
        return TrustAnchors.from_dict(device_id, state["trust"])


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    repo = FleetRepo(tmp_path / "fleet")
    settings = {"poll_interval": 0.5, "heartbeat_flush_interval": 0.2}
    with LocalServer(tmp_path / "server", repo=repo.path, settings=settings) as local:
        f = Fleet(local, repo, tmp_path)
        try:
            yield f
        finally:
            for device_id in list(f.agents):
                f.stop(device_id)
            f.client.close()


def test_manifest_and_release_keys_rotate_through_running_agents(
    fleet: Fleet, tmp_path: Path
) -> None:
    old_release, new_release = keys.generate_ed25519(), keys.generate_ed25519()
    for name, key in (("old", old_release), ("new", new_release)):
        (tmp_path / f"{name}.key").write_bytes(keys.private_key_to_pem(key))
        (tmp_path / f"{name}.pub").write_text(keys.public_key_to_pem(key.public_key()))
    v1, v2, v3 = (make_bundle(tmp_path, v) for v in ("1.0.0", "1.1.0", "1.2.0"))
    fleet.publish("1.0.0", v1, [old_release])
    fleet.deploy("1.0.0", "one")
    devices = ("edge-1", "edge-2")
    for device_id in devices:
        fleet.enroll(device_id, tmp_path / "old.pub")
        fleet.start(device_id)
    for device_id in devices:
        wait_for(f"{device_id} on 1.0.0", lambda d=device_id: fleet.converged(d, "1.0.0"))

    # -- manifest key: announce, refuse to finish while edge-2 is away, finish --------
    old_key_id = fleet.client.get("/v1/admin/keys").json()["manifest_key_id"]
    old_manifest_key = keys.load_private_key_pem(
        (fleet.local.data_dir / "keys" / "manifest.key").read_bytes()
    )
    fleet.stop("edge-2")
    started = json.loads(fleet.kernex("keys", "rotate-manifest-key", "--json").stdout)
    new_key_id = started["rotation"]["next_key_id"]
    assert new_key_id != old_key_id
    wait_for("edge-1 to take the new key", lambda: fleet.converged("edge-1", "1.0.0"))
    assert set(fleet.anchors("edge-1").manifest_keys) == {old_key_id, new_key_id}

    refused = fleet.kernex("keys", "rotate-manifest-key", "--finish", ok=False)
    assert refused.returncode == 1
    assert "edge-2" in refused.stderr
    assert "not taken the new key" in refused.stderr

    fleet.start("edge-2")
    wait_for(
        "every device to move",
        lambda: fleet.client.get("/v1/admin/keys").json()["rotation"]["devices_not_moved"] == [],
    )
    finished = json.loads(fleet.kernex("keys", "rotate-manifest-key", "--finish", "--json").stdout)
    assert finished["retired_key_id"] == old_key_id
    assert finished["manifest_key_id"] == new_key_id
    assert finished["rotation"] is None
    assert not (fleet.local.data_dir / "keys" / "manifest.next.key").exists()
    info = httpx.get(f"{fleet.local.base_url}/v1/server-info").json()
    assert info["manifest_key_id"] == new_key_id

    commit = fleet.deploy("1.0.0", "two")  # a new desired state, signed by the new key
    for device_id in devices:
        wait_for(
            f"{device_id} on {commit[:8]}",
            lambda d=device_id: (
                fleet.converged(d, "1.0.0") and fleet.device(d)["desired_revision"] == commit
            ),
        )
        anchors = fleet.anchors(device_id)
        assert set(anchors.manifest_keys) == {new_key_id}  # the old key is trusted no more
        forged = Manifest(
            device_id=device_id,
            serial=anchors.highest_serial + 1,
            revision="f" * 40,
            issued_at=0,
            expires_at=2**31,
            bundles=(),
            config={},
        )
        raw = sign_manifest(forged, old_manifest_key).to_json()
        with pytest.raises(ManifestRejectedError) as rejected:
            accept_manifest(raw, anchors, now=1.0)
        assert rejected.value.reason == "signature"

    # -- release keys: the old key signs the new set; bundles then need the new key ----
    fleet.publish("1.0.0", v1, [old_release, new_release])  # re-sign what runs first
    fleet.deploy("1.0.0", "three")
    for device_id in devices:
        wait_for(f"{device_id} on three", lambda d=device_id: fleet.converged(d, "1.0.0"))
    rotated = fleet.kernex(
        "keys", "rotate-release-key", "--sign-key", str(tmp_path / "old.key"),
        "--new-key", str(tmp_path / "new.pub"), "--json",
    )  # fmt: skip
    new_release_id = keys.fingerprint(new_release.public_key())
    assert json.loads(rotated.stdout)["release_keys"]["keys"] == [new_release_id]
    for device_id in devices:
        wait_for(
            f"{device_id} to pin the new release key",
            lambda d=device_id: (
                fleet.anchors(d).release_keys is not None
                and set(fleet.anchors(d).release_keys.keys) == {new_release_id}
            ),  # type: ignore[union-attr]
        )

    fleet.publish("1.1.0", v2, [old_release])  # the retired key alone: refused
    fleet.deploy("1.1.0", "old key")
    for device_id in devices:
        wait_for(
            f"{device_id} to refuse 1.1.0",
            lambda d=device_id: (
                (fleet.device(d).get("status") or {}).get("phase") == "failed"
                and "release" in ((fleet.device(d).get("status") or {}).get("error") or "")
            ),
        )
        assert (fleet.device(device_id)["status"]["bundles"]) == {"app": "1.0.0"}
    fleet.publish("1.2.0", v3, [new_release])
    fleet.deploy("1.2.0", "new key")
    for device_id in devices:
        wait_for(f"{device_id} on 1.2.0", lambda d=device_id: fleet.converged(d, "1.2.0"))
    for agent in fleet.agents.values():
        assert agent.poll() is None
