"""A simulated device as the server sees it (``SimDevice``: an id, a key, signed HTTP
requests), a check of the manifests it receives, and a ``Responder`` that reports status
for each new desired serial in a thread, where a test needs to choose the outcome (healthy or
failed); the CI test runs the real agent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from kernex_core import httpsig, keys
from kernex_core.manifest import Manifest
from kernex_core.trust import ManifestVerifier


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


class Responder:
    """Polls the device's desired serial (admin API) and reports ``phase`` for each new one."""

    def __init__(
        self,
        base: str,
        admin_token: str,
        device: SimDevice,
        phase: str = "healthy",
        error: str | None = None,
    ) -> None:
        self.base = base
        self.admin_token = admin_token
        self.device = device
        self.phase = phase
        self.error = error
        self.reported: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        auth = {"Authorization": f"Bearer {self.admin_token}"}
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self._stop.wait(0.1):
                shown: dict[str, Any] = client.get(
                    f"/v1/admin/devices/{self.device.device_id}", headers=auth
                ).json()
                desired = shown.get("desired_serial")
                if desired is None or desired in self.reported:
                    continue
                report = {"phase": self.phase, "serial": desired, "error": self.error}
                response = self.device.status(client, report)
                if response.status_code == 204:
                    self.reported.append(desired)
