"""Manifest issuing (build + sign) and the in-memory cache that serves them.

Building is pure: a desired state, a serial, a revision and a clock reading give a
``Manifest``; ``ManifestIssuer`` signs it with the server's manifest key. The
``ManifestCache`` lives on the event loop: the hot path of ``GET .../manifest`` reads it
without touching the database, and long polls wait on one ``asyncio.Event`` per device,
which costs nothing while idle.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio

from kernex_core import keys
from kernex_core.envelope import Envelope
from kernex_core.errors import KernexError
from kernex_core.fleet import DesiredState, Fleet
from kernex_core.manifest import BundleEntry, Manifest, sign_manifest
from kernex_core.protocol import BUNDLE_PATH


def stored_manifest(envelope: str) -> Manifest:
    """The manifest inside an envelope the server signed and stored (not verified again)."""
    return Manifest.from_dict(json.loads(Envelope.from_json(envelope.encode()).payload))


@dataclass(frozen=True)
class ServedManifest:
    device_id: str
    serial: int
    envelope: bytes
    expires_at: float

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.envelope).hexdigest() + '"'


class ManifestIssuer:
    def __init__(self, key: keys.PrivateKey, *, bundle_base_url: str = "") -> None:
        self.key = key
        self.bundle_base_url = bundle_base_url
        # what every manifest announces (kernex_server.keyring): the manifest keys to
        # trust from now on, and the newest release-key set (a DSSE envelope)
        self.announce: tuple[tuple[str, str], ...] = ()
        self.release_keys: dict[str, Any] | None = None

    def bundle_url(self, sha256: str, catalog_url: str | None = None) -> str:
        """The catalog's own URL for a version wins, then ``bundle_base_url``, then the
        server's store (relative: the agent resolves it against the server URL)."""
        if catalog_url:
            return catalog_url
        if self.bundle_base_url:
            return self.bundle_base_url.rstrip("/") + "/" + sha256
        return BUNDLE_PATH.format(sha256=sha256)

    def build(
        self,
        device_id: str,
        desired: DesiredState,
        *,
        serial: int,
        revision: str,
        now: float,
        ttl: int,
    ) -> Manifest:
        bundles = tuple(
            BundleEntry(
                name=b.name,
                version=b.version,
                sha256=b.sha256,
                size=b.size,
                url=self.bundle_url(b.sha256, getattr(b, "url", None)),
                release_signatures=tuple(b.release_signatures),
            )
            for _, b in sorted(desired.bundles.items())
        )
        return Manifest(
            device_id=device_id,
            serial=serial,
            revision=revision,
            issued_at=int(now),
            expires_at=int(now) + ttl,
            bundles=bundles,
            config=json.loads(json.dumps(dict(desired.config))),
        )

    def sign(self, manifest: Manifest) -> bytes:
        announced = replace(manifest, manifest_keys=self.announce, release_keys=self.release_keys)
        return sign_manifest(announced, self.key).to_json()

    def resign(self, manifest: Manifest, *, now: float, ttl: int) -> tuple[Manifest, bytes]:
        """Same content and serial, fresh validity: the agent treats it as a refresh."""
        fresh = replace(manifest, issued_at=int(now), expires_at=int(now) + ttl)
        return fresh, self.sign(fresh)


class DesiredDigests:
    """The desired digest a revision gives each device, cached per revision and labels (to
    tell devices that are served something else: ``held_back``)."""

    def __init__(self, issuer: ManifestIssuer) -> None:
        self.issuer = issuer
        self._cache: dict[str, tuple[tuple[Any, ...], str]] = {}  # device -> (key, digest)

    def get(
        self, fleet: Fleet, commit: str, device_id: str, labels: Mapping[str, str]
    ) -> str | None:
        key = (commit, tuple(sorted(labels.items())))
        cached = self._cache.get(device_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            desired = fleet.resolve_device(device_id, dict(labels))
        except KernexError:
            return None  # the server logs this when it issues the device's manifest
        draft = self.issuer.build(device_id, desired, serial=0, revision=commit, now=0, ttl=0)
        self._cache[device_id] = (key, draft.desired_digest())
        return self._cache[device_id][1]


class ManifestCache:
    """Signed manifests by device, and the long polls waiting for them to change.

    Touch only from the event loop thread.
    """

    def __init__(self) -> None:
        self._items: dict[str, ServedManifest] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, device_id: str) -> ServedManifest | None:
        return self._items.get(device_id)

    def served_devices(self) -> list[str]:
        return list(self._items)

    def publish(self, manifests: Iterable[ServedManifest]) -> None:
        for served in manifests:
            self._items[served.device_id] = served
            event = self._changed.pop(served.device_id, None)
            if event is not None:
                event.set()

    def drop(self, device_id: str) -> None:
        self._items.pop(device_id, None)
        event = self._changed.pop(device_id, None)
        if event is not None:
            event.set()

    def waiting(self) -> int:
        return len(self._changed)

    async def wait_for_change(
        self, device_id: str, etag: str, timeout: float
    ) -> ServedManifest | None:
        """Return the device's manifest once its ETag differs from ``etag``, or after
        ``timeout`` seconds whatever is current."""
        current = self._items.get(device_id)
        if current is not None and current.etag != etag:
            return current
        event = self._changed.get(device_id)
        if event is None:
            event = self._changed[device_id] = asyncio.Event()
        with anyio.move_on_after(timeout):
            await event.wait()
        return self._items.get(device_id)
