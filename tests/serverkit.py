"""Test kit for the server: a real fleet repository, a simulated device, app builders."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kernex_core import httpsig, keys
from kernex_core.manifest import Manifest
from kernex_core.trust import ManifestVerifier

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Kernex Tests",
    "GIT_AUTHOR_EMAIL": "tests@kernex.dev",
    "GIT_COMMITTER_NAME": "Kernex Tests",
    "GIT_COMMITTER_EMAIL": "tests@kernex.dev",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}

BUNDLE_V1 = b"app bundle version 1.0.0 bytes\n"
BUNDLE_V2 = b"app bundle version 1.1.0 bytes, newer\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundles_yaml() -> str:
    return (
        "name: app\n"
        "versions:\n"
        f"  1.0.0:\n    sha256: {sha(BUNDLE_V1)}\n    size: {len(BUNDLE_V1)}\n"
        f"  1.1.0:\n    sha256: {sha(BUNDLE_V2)}\n    size: {len(BUNDLE_V2)}\n"
    )


def kernex_yaml(version: str = "1.0.0", greeting: str = "hello") -> str:
    return (
        "apiVersion: kernex/v1\n"
        "name: test-fleet\n"
        "defaults:\n"
        f"  bundles:\n    app: {version}\n"
        f"  config:\n    app:\n      greeting: {greeting}\n"
    )


class FleetRepo:
    """A real Git repository holding a small valid fleet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        self.write("kernex.yaml", kernex_yaml())
        self.write("bundles/app.yaml", bundles_yaml())
        self.write(
            "groups/canary.yaml",
            "selector: ring=canary\npriority: 10\nconfig:\n  app:\n    canary: true\n",
        )
        self.commit("initial fleet")

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.path), *args],
            env=GIT_ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def write(self, rel: str, text: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def commit(self, message: str, *extra: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", *extra, "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


@dataclass
class SimDevice:
    """A device as the server sees it: an id, a key, and signed HTTP requests."""

    device_id: str
    key: keys.PrivateKey = field(default_factory=keys.generate_ed25519)
    labels: Mapping[str, str] = field(default_factory=dict)
    created: int | None = None  # fixed signature time (stale tests); None: now

    def public_pem(self) -> str:
        return keys.public_key_to_pem(self.key.public_key())

    def fingerprint(self) -> str:
        return keys.fingerprint(self.key.public_key())

    def headers(self, method: str, path: str, body: bytes = b"", **kw: Any) -> dict[str, str]:
        created = self.created if self.created is not None else int(time.time())
        return httpsig.sign_request(
            method, path, body, self.key, self.device_id, created=created, **kw
        )

    def enroll_body(self, token: str | None = None) -> bytes:
        return json.dumps(
            {
                "device_id": self.device_id,
                "public_key": self.public_pem(),
                "labels": dict(self.labels),
                "agent_version": "test-1",
                "enrollment_token": token,
            }
        ).encode()

    def enroll(self, client: httpx.Client, token: str | None = None) -> httpx.Response:
        body = self.enroll_body(token)
        headers = {**self.headers("POST", "/v1/enroll", body), "Content-Type": "application/json"}
        return client.post("/v1/enroll", content=body, headers=headers)

    def get(self, client: httpx.Client, path: str, **kw: Any) -> httpx.Response:
        extra = kw.pop("headers", {})
        return client.get(path, headers={**self.headers("GET", path), **extra}, **kw)

    def manifest(
        self, client: httpx.Client, *, wait: int | None = None, etag: str | None = None
    ) -> httpx.Response:
        path = f"/v1/devices/{self.device_id}/manifest"
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": str(wait)} if wait is not None else None
        return self.get(client, path, headers=headers, params=params)

    def status(self, client: httpx.Client, report: Mapping[str, Any]) -> httpx.Response:
        path = f"/v1/devices/{self.device_id}/status"
        body = json.dumps(report).encode()
        return client.post(path, content=body, headers=self.headers("POST", path, body))


def verify_manifest(
    raw: bytes, device_id: str, manifest_key: keys.PrivateKey, min_serial: int = 0
) -> Manifest:
    public = manifest_key.public_key()
    verifier = ManifestVerifier(
        device_id, {keys.fingerprint(public): public}, min_serial=min_serial
    )
    return verifier.verify(raw, time.time())


def admin(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def migration_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from kernex_server.database import migrations_dir

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head
