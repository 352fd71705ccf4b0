"""An in-memory simulator of the server's device plane, for agent tests.

Like python-tuf's RepositorySimulator: it signs manifests on demand with its own manifest
key, serves bundles with Range, verifies every request's signature with the real
``kernex_core.httpsig`` rules, records what was fetched and reported, and lets a test
tamper with serials, expiry, keys, device ids, bytes and the pace of the bytes.

``transport()`` gives an ``httpx.MockTransport``; ``route()`` is the synchronous core that
``LoopbackServer`` serves on a real socket (127.0.0.1) as well, for tests that run agent
processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from kernex_cli.bundle_build import build_bundle
from kernex_core import keys, serverinfo
from kernex_core.envelope import Envelope, sign_envelope
from kernex_core.errors import RequestSignatureError
from kernex_core.httpsig import NonceCache, verify_request
from kernex_core.manifest import BundleEntry, Manifest, sign_manifest
from kernex_core.protocol import EnrollmentState, EnrollRequest, EnrollResponse, StatusReport
from kernex_core.release import RELEASE_KEYS_PAYLOAD_TYPE, ReleaseKeySet, sign_release

TOKEN = "test-enrollment-token"


@dataclass
class Blob:
    data: bytes
    name: str
    version: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Fetch:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class ServerSimulator:
    base_url: str = "http://kernex.test"
    clock: Callable[[], float] = time.time
    manifest_key: keys.PrivateKey = field(default_factory=keys.generate_ed25519)
    release_key: keys.PrivateKey | None = None
    devices: dict[str, keys.PublicKey] = field(default_factory=dict)
    blobs: dict[str, Blob] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)  # device id -> envelope JSON
    serials: dict[str, int] = field(default_factory=dict)
    fetched: list[Fetch] = field(default_factory=list)
    reports: list[tuple[str, StatusReport]] = field(default_factory=list)
    # Tampering: sha256 -> async generator factory that replaces the body.
    bodies: dict[str, Callable[[int], AsyncIterator[bytes]]] = field(default_factory=dict)
    served_bytes: dict[str, bytes] = field(default_factory=dict)  # sha -> other bytes served
    manifest_delay: float = 0.0  # seconds before answering a manifest request
    unreachable: bool = False
    status_code: int | None = None  # answer every request with this status
    nonces: NonceCache = field(default_factory=NonceCache)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- content

    @property
    def manifest_key_id(self) -> str:
        return keys.fingerprint(self.manifest_key.public_key())

    def add_bundle(self, data: bytes, name: str, version: str) -> Blob:
        blob = Blob(data, name, version)
        self.blobs[blob.sha256] = blob
        return blob

    def build(self, src: Path) -> bytes:
        return build_bundle(src)

    def entry(self, blob: Blob, *, url: str | None = None, sign: bool = True) -> BundleEntry:
        sigs = ()
        if sign and self.release_key is not None:
            sigs = (
                sign_release(
                    self.release_key, blob.name, blob.version, blob.sha256, len(blob.data)
                ),
            )
        return BundleEntry(
            name=blob.name,
            version=blob.version,
            sha256=blob.sha256,
            size=len(blob.data),
            url=url or f"/v1/bundles/{blob.sha256}",
            release_signatures=sigs,
        )

    def publish(
        self,
        device_id: str,
        bundles: list[BundleEntry],
        *,
        config: dict[str, Any] | None = None,
        serial: int | None = None,
        for_device: str | None = None,
        expires_in: float = 3600,
        key: keys.PrivateKey | None = None,
        manifest_keys: list[keys.PublicKey] | None = None,
        release_keys: Envelope | None = None,
        tamper: Callable[[bytes], bytes] | None = None,
    ) -> Manifest:
        """Sign and serve a new manifest for ``device_id`` (serial +1 unless given)."""
        with self.lock:
            serial = serial if serial is not None else self.serials.get(device_id, 0) + 1
            self.serials[device_id] = max(serial, self.serials.get(device_id, 0))
            now = int(self.clock())
            manifest = Manifest(
                device_id=for_device or device_id,
                serial=serial,
                revision=f"rev{serial:04d}",
                issued_at=now,
                expires_at=int(now + expires_in),
                bundles=tuple(bundles),
                config=config or {},
                manifest_keys=tuple(
                    (keys.fingerprint(k), keys.public_key_to_pem(k)) for k in manifest_keys or ()
                ),
                release_keys=release_keys.to_dict() if release_keys else None,
            )
            raw = sign_manifest(manifest, key or self.manifest_key).to_json()
            self.manifests[device_id] = tamper(raw) if tamper else raw
            return manifest

    def release_key_set(
        self, new_keys: list[keys.PublicKey], version: int, signer: keys.PrivateKey
    ) -> Envelope:
        ks = ReleaseKeySet(version=version, keys={keys.fingerprint(k): k for k in new_keys})
        payload = json.dumps(ks.to_dict()).encode()
        return sign_envelope(
            RELEASE_KEYS_PAYLOAD_TYPE, payload, {keys.fingerprint(signer.public_key()): signer}
        )

    def reports_for(self, device_id: str) -> list[StatusReport]:
        return [r for d, r in self.reports if d == device_id]

    def bundle_fetches(self) -> list[Fetch]:
        return [f for f in self.fetched if f.path.startswith("/v1/bundles/")]

    # ---------------------------------------------------------------- serving

    def _authenticate(self, method: str, path: str, headers: dict[str, str], body: bytes) -> str:
        parsed = verify_request(
            method,
            path,
            headers,
            body,
            self.devices.get,
            now=self.clock(),
            nonces=self.nonces,
        )
        return parsed.keyid

    def route(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        path = parts.path
        headers = {k.lower(): v for k, v in headers.items()}
        with self.lock:
            self.fetched.append(Fetch(method, path, headers))
        if self.status_code is not None:
            return self.status_code, {}, b'{"error": "simulated"}'
        if path == "/v1/enroll" and method == "POST":
            return self._enroll(path, headers, body)
        if path == serverinfo.SERVER_INFO_PATH and method == "GET":
            challenge = parse_qs(parts.query).get("challenge", [None])[0]
            info = serverinfo.describe(
                self.manifest_key, url="sim", version="sim", challenge=challenge
            )
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        try:
            if path.startswith("/v1/devices/"):
                device = self._authenticate(method, path, headers, body)
        except RequestSignatureError as exc:
            return 401, {}, json.dumps({"error": str(exc)}).encode()
        if path.startswith("/v1/devices/") and path.endswith("/manifest"):
            if path.split("/")[3] != device:
                return 403, {}, b'{"error": "not your manifest"}'
            raw = self.manifests.get(device)
            if raw is None:
                return 304, {}, b""
            etag = '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'
            if headers.get("if-none-match") == etag:
                return 304, {"ETag": etag}, b""
            return 200, {"ETag": etag, "Content-Type": "application/json"}, raw
        if path.startswith("/v1/devices/") and path.endswith("/status"):
            with self.lock:
                self.reports.append((device, StatusReport.from_dict(json.loads(body))))
            return 204, {}, b""
        if path.startswith("/v1/bundles/"):
            return self._bundle(path.rsplit("/", 1)[1], headers)
        return 404, {}, b'{"error": "not found"}'

    def _enroll(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        req = EnrollRequest.from_dict(json.loads(body))
        key = keys.load_public_key_pem(req.public_key)
        try:
            verify_request(
                "POST", path, headers, body, lambda _kid: key, now=self.clock(), nonces=self.nonces
            )
        except RequestSignatureError as exc:
            return 401, {}, json.dumps({"error": str(exc)}).encode()
        if req.enrollment_token != TOKEN:
            return 403, {}, b'{"error": "bad enrollment token"}'
        self.devices[req.device_id] = key
        resp = EnrollResponse(
            device_id=req.device_id,
            state=EnrollmentState.ACCEPTED,
            manifest_public_key=keys.public_key_to_pem(self.manifest_key.public_key()),
            manifest_key_id=self.manifest_key_id,
        )
        return 200, {"Content-Type": "application/json"}, json.dumps(resp.to_dict()).encode()

    def _bundle(self, sha: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        blob = self.blobs.get(sha)
        if blob is None:
            return 404, {}, b'{"error": "no such bundle"}'
        data = self.served_bytes.get(sha, blob.data)
        rng = headers.get("range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
            if start >= len(data):
                return 416, {}, b""
            return (
                206,
                {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                data[start:],
            )
        return 200, {"Content-Type": "application/octet-stream"}, data

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.unreachable:
            raise httpx.ConnectError("simulated: connection refused", request=request)
        body = await request.aread()
        path = request.url.path
        if path.endswith("/manifest") and self.manifest_delay:
            await asyncio.sleep(self.manifest_delay)  # about time itself: a slow server
        sha = path.rsplit("/", 1)[1] if path.startswith("/v1/bundles/") else ""
        if sha in self.bodies:
            with self.lock:
                self.fetched.append(Fetch(request.method, path, dict(request.headers)))
            rng = request.headers.get("range", "")
            start = int(rng[len("bytes=") : -1]) if rng else 0
            return httpx.Response(206 if start else 200, content=self.bodies[sha](start))
        status, headers, content = self.route(
            request.method, str(request.url), dict(request.headers), body
        )
        return httpx.Response(status, headers=headers, content=content)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


class LoopbackServer:
    def __init__(self, sim: ServerSimulator) -> None:
        self.sim = sim

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, content = sim.route(
                    self.command, self.path, dict(self.headers.items()), body
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if content and status != 304:
                    self.wfile.write(content)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        sim.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
