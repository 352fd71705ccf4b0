"""Garbage collection of the bundle store: ``POST /v1/admin/bundles/gc[?dry_run=1]``.

A blob is kept while anything retained may still send a device to it:

- a bundle of a device's current manifest, or of a retained rollout's new or previous
  state (``rollout_devices``);
- a version in the bundle catalog of a retained deployed revision (read from Git, once
  per commit), and of the revision the server has loaded;
- a blob uploaded (or uploaded again) less than ``bundle_gc_grace_days`` ago, so a bundle
  pushed before the commit that names it is not taken away.

Everything else in the store, row and file, is removed (with ``dry_run`` only listed).
Pruning revisions (kernex_server.retention) is what lets old catalogs, and so old blobs,
go. The store's size is the ``kernex_bundle_store_bytes`` metric.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import Response

from kernex_core.envelope import Envelope
from kernex_core.errors import KernexError
from kernex_server import wire
from kernex_server.api import Param, operation, route
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.bundles import BlobStore
from kernex_server.context import context_of
from kernex_server.http import ApiError, json_response
from kernex_server.models import BundleBlob, DeviceManifest, Revision, RolloutDevice
from kernex_server.reconciler import DEPLOYED, Reconciler

log = logging.getLogger("kernex.server.bundles")
DAY = 86400.0


@dataclass(frozen=True)
class GcResult:
    dry_run: bool
    removed: list[dict[str, Any]]  # sha256, size
    kept: int
    store_bytes: int  # after the pass (unchanged by a dry run)
    unreadable: list[str] = field(default_factory=list)  # revisions whose catalog was unread

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": self.removed,
            "removed_bytes": sum(r["size"] for r in self.removed),
            "kept": self.kept,
            "store_bytes": self.store_bytes,
            "unreadable_revisions": self.unreadable,
        }


def _bundle_shas(manifest: Mapping[str, Any] | None) -> Iterable[str]:
    for b in (manifest or {}).get("bundles") or []:
        if isinstance(b, Mapping) and isinstance(b.get("sha256"), str):
            yield b["sha256"]


class BundleCollector:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        reconciler: Reconciler,
        *,
        grace_days: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.reconciler = reconciler
        self.grace = grace_days * DAY
        self.clock = clock
        self._catalogs: dict[str, frozenset[str]] = {}  # commit -> its catalog's digests
        self._lock = threading.Lock()  # one pass at a time

    def referenced(self) -> tuple[set[str], list[str]]:
        """Digests something retained names, and the revisions whose catalog is unread."""
        refs: set[str] = set()
        with self.sessions() as s:
            for raw in s.scalars(select(DeviceManifest.envelope)):
                refs.update(_bundle_shas(json.loads(Envelope.from_json(raw.encode()).payload)))
            for target, previous in s.execute(select(RolloutDevice.target, RolloutDevice.previous)):
                refs.update(_bundle_shas(target))
                refs.update(_bundle_shas(previous))
            commits = set(s.scalars(select(Revision.commit).where(Revision.state == DEPLOYED)))
        fleet = self.reconciler.fleet
        if fleet is not None:
            refs.update(v.sha256 for versions in fleet.catalog.values() for v in versions.values())
        unreadable = []
        for commit in sorted(commits):
            shas = self._catalog(commit)
            if shas is None:
                unreadable.append(commit)
            else:
                refs.update(shas)
        return refs, unreadable

    def _catalog(self, commit: str) -> frozenset[str] | None:
        if commit in self._catalogs:
            return self._catalogs[commit]
        source, load = self.reconciler.source, self.reconciler.load_fleet
        if source is None or load is None:
            return None
        try:
            fleet = load(source.read(commit))
        except KernexError as exc:
            log.warning("bundle gc: cannot read the catalog of %s: %s", commit, exc.message)
            return None
        shas = frozenset(v.sha256 for versions in fleet.catalog.values() for v in versions.values())
        self._catalogs[commit] = shas
        return shas

    def collect(self, *, dry_run: bool) -> GcResult:
        with self._lock:
            refs, unreadable = self.referenced()
            now = self.clock()
            with self.sessions() as s:
                rows = {r.sha256: r.uploaded_at for r in s.scalars(select(BundleBlob))}
            on_disk = self.blobs.stored()  # sha256 -> (size, mtime)
            removed: list[dict[str, Any]] = []
            kept = 0
            for sha in sorted(set(rows) | set(on_disk)):
                size, mtime = on_disk.get(sha, (0, 0.0))
                newest = max(rows.get(sha, 0.0), mtime)
                if sha in refs or now - newest < self.grace:
                    kept += 1
                    continue
                removed.append({"sha256": sha, "size": size})
            if not dry_run and removed:
                gone = [r["sha256"] for r in removed]
                with self.sessions.begin() as s:
                    for start in range(0, len(gone), 500):
                        chunk = gone[start : start + 500]
                        s.execute(delete(BundleBlob).where(BundleBlob.sha256.in_(chunk)))
                for sha in gone:
                    self.blobs.remove(sha)
                log.info("bundle gc removed %d blob(s)", len(gone))
            return GcResult(dry_run, removed, kept, self.blobs.total_bytes, unreadable)


@operation(
    "POST",
    "Remove stored bundles nothing retained names, past the grace period "
    "(?dry_run=1 lists them only)",
    ok=wire.BundleGc,
    query=[Param("dry_run", bool, "1: only list what would be removed")],
    errors=(503,),
)
@requires(Role.ADMIN)
@audited("bundle.gc")
async def gc_endpoint(request: Request) -> Response:
    kx = context_of(request)
    dry_run = request.query_params.get("dry_run") in {"1", "true", "yes"}
    collector = kx.bundle_gc
    if collector is None:  # create_app always sets it
        raise ApiError(503, "bundle garbage collection is not set up")
    result = await anyio.to_thread.run_sync(lambda: collector.collect(dry_run=dry_run))
    request.state.audit_detail = {
        "dry_run": dry_run,
        "removed": len(result.removed),
        "removed_bytes": sum(r["size"] for r in result.removed),
    }
    return json_response(result.to_dict())


routes = [route("/v1/admin/bundles/gc", gc_endpoint)]
