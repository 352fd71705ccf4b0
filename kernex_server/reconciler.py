"""The reconciler: Git -> core -> database -> signed manifests.

Each pass reads the branch head from the ``FleetSource``; a commit not seen before is
checked (signatures: ``kernex_server.signers``), validated and resolved by the core
for every accepted device, and recorded as a ``Revision``. Only devices whose desired
state digest changed get a new serial and a newly signed manifest. An invalid or
unsigned commit is recorded with its errors and changes nothing: the last good revision
keeps being served.

It runs in worker threads, one pass at a time per process; on PostgreSQL a transaction
advisory lock makes it one pass at a time across every server sharing the database.
The passes return the manifests that changed; the caller publishes them to the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from kernex_core.errors import FleetInvalidError, KernexError
from kernex_core.fleet import Fleet
from kernex_core.manifest import Manifest
from kernex_core.protocol import EnrollmentState
from kernex_server import signers
from kernex_server.git_source import FleetSource
from kernex_server.manifests import DesiredDigests, ManifestIssuer, ServedManifest
from kernex_server.models import Deployment, Device, DeviceManifest, Revision
from kernex_server.rollouts import RolloutEngine
from kernex_server.serials import deployed_commit, lift_to_floor, read_floor, resign_before
from kernex_server.settings import Settings

log = logging.getLogger("kernex.server.reconciler")

# One reconcile at a time per deployment: the advisory lock's key is derived from the
# schema the server works in, so servers sharing a schema take turns while separate
# deployments in one database (a schema each) never wait for each other.
ADVISORY_LOCK_SQL = (
    "SELECT pg_try_advisory_xact_lock(hashtextextended('kernex-reconcile:' || current_schema(), 0))"
)
WAIT_LOCK_SQL = (
    "SELECT pg_advisory_xact_lock(hashtextextended('kernex-reconcile:' || current_schema(), 0))"
)

T = TypeVar("T")

DEPLOYED = "deployed"
INVALID = "invalid"
UNSIGNED = "unsigned"


@dataclass(frozen=True)
class ReconcileResult:
    commit: str | None
    state: str  # deployed | invalid | unsigned | unchanged | skipped | no_source | fetching
    changed: tuple[ServedManifest, ...] = ()
    admitted: tuple[str, ...] = ()  # pending devices admitted by a declared key fingerprint
    errors: tuple[Mapping[str, Any], ...] = ()
    forced: bool = False
    fetching: bool = False  # a fetch still runs: this pass read what was fetched before
    warnings: tuple[Mapping[str, Any], ...] = ()  # e.g. bundles missing from the store

    def to_dict(self) -> dict[str, Any]:
        return {
            "fetching": self.fetching,
            "commit": self.commit,
            "state": self.state,
            "devices_changed": len(self.changed),
            "admitted": list(self.admitted),
            "errors": [dict(e) for e in self.errors],
            "forced": self.forced,
            "warnings": [dict(w) for w in self.warnings],
        }


FleetLoader = Callable[[Mapping[str, bytes]], Fleet]
"""Reads the fleet repository's files (path -> bytes): ``kernex_core.fleet.load_fleet``."""


@dataclass
class _Loaded:
    fleet: Fleet
    commit: str
    extra: dict[str, Any] = field(default_factory=dict)


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        issuer: ManifestIssuer,
        source: FleetSource | None,
        load_fleet: FleetLoader | None,
        *,
        postgres: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.issuer = issuer
        self.source = source
        self.load_fleet = load_fleet
        self.postgres = postgres
        self.clock = clock
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self.serial_floor = 0  # no serial below it is issued (set by a restore)
        self._git_digests = DesiredDigests(issuer)
        self.rollouts = RolloutEngine(self._write, ttl=self.manifest_ttl, online=lambda _d: True)

    @property
    def fleet(self) -> Fleet | None:
        return self._loaded.fleet if self._loaded else None

    # The fleet's ``policies.*`` override server.toml only when kernex.yaml sets them.
    def manifest_ttl(self, fleet: Fleet | None = None) -> int:
        fleet = fleet or self.fleet
        ttl = fleet.settings.manifest_ttl if fleet else None
        return ttl if ttl is not None else self.settings.manifest_ttl

    def offline_after(self) -> int:
        value = self.fleet.settings.offline_after if self.fleet else None
        return value if value is not None else self.settings.offline_after

    def git_digest(self, device_id: str, labels: Mapping[str, str]) -> str | None:
        """The desired digest the deployed revision gives this device (None: none yet)."""
        loaded = self._loaded
        return (
            self._git_digests.get(loaded.fleet, loaded.commit, device_id, labels)
            if loaded
            else None
        )

    # -- one pass ----------------------------------------------------------------------

    def reconcile(self, *, force: bool = False, fetch: bool = True) -> ReconcileResult:
        """One pass; ``fetch=False`` reads what the source holds locally (the server
        fetches in the background, ``kernex_server.git_fetch``, never under the lock)."""
        source, load_fleet = self.source, self.load_fleet
        if source is None or load_fleet is None:
            return ReconcileResult(None, "no_source")
        if fetch:
            source.sync()
        with self._lock:
            head = source.head()
            now = self.clock()
            with self.sessions.begin() as s:
                if not self._try_lock(s):
                    return ReconcileResult(head, "skipped")
                last = s.scalar(select(Revision).order_by(Revision.id.desc()).limit(1))
                good = s.scalar(
                    select(Revision)
                    .where(Revision.state == DEPLOYED)
                    .order_by(Revision.id.desc())
                    .limit(1)
                )
                loaded = self._loaded
                if good is not None and (loaded is None or loaded.commit != good.commit):
                    self._load_known_good(good.commit)  # first pass, or another server deployed
                if last is not None and last.commit == head and not force:
                    return ReconcileResult(head, "unchanged")
                return self._pass(s, source, load_fleet, head, good, now)

    def _pass(
        self,
        s: Session,
        source: FleetSource,
        load_fleet: FleetLoader,
        head: str,
        good: Revision | None,
        now: float,
    ) -> ReconcileResult:
        previous = good.commit if good else None
        try:
            deployed = self._deployed(source, load_fleet, previous)
        except KernexError as exc:  # its trusted_signers are unknown: deploy nothing
            unknown = f"cannot read the deployed revision's trusted_signers: {exc.message}"
            return self._unsigned(s, head, unknown, previous, now)
        problem = signers.before_load(self.settings, source, head, deployed, previous)
        if problem is not None:
            return self._unsigned(s, head, problem, previous, now)
        try:
            fleet = load_fleet(source.read(head))
        except FleetInvalidError as exc:
            issues: tuple[Mapping[str, Any], ...] = tuple(i.to_dict() for i in exc.issues)
            log.warning("commit %s is invalid (%d errors); serving %s", head, len(issues), previous)
            for issue in exc.issues:
                log.warning("  %s", issue)
            self._record(s, head, INVALID, list(issues), previous, now)
            return ReconcileResult(head, INVALID, errors=issues)
        except KernexError as exc:
            failure: tuple[Mapping[str, Any], ...] = ({"message": exc.message, "hint": exc.hint},)
            log.warning("commit %s cannot be loaded: %s", head, exc.message)
            self._record(s, head, INVALID, list(failure), previous, now)
            return ReconcileResult(head, INVALID, errors=failure)
        problem = signers.after_load(source, head, deployed, fleet)
        if problem is not None:
            return self._unsigned(s, head, problem, previous, now)
        forced = (
            previous is not None and previous != head and not source.is_ancestor(previous, head)
        )
        if forced:
            log.warning("commit %s does not descend from %s (force-push)", head, previous)
        # Recorded first: the database refuses a serial from an older revision than the
        # deployed one (migration 0009), and these serials are of this one.
        row = self._record(s, head, DEPLOYED, [], previous, now, forced=forced)
        s.flush()
        try:
            changed, admitted = self._apply(s, fleet, head, now)
        except FleetInvalidError as exc:  # conflicts found while resolving devices
            conflicts: tuple[Mapping[str, Any], ...] = tuple(i.to_dict() for i in exc.issues)
            log.warning("commit %s does not resolve (%d errors)", head, len(conflicts))
            row.state, row.errors, row.forced = INVALID, list(conflicts), False
            return ReconcileResult(head, INVALID, errors=conflicts)
        row.devices_changed = len(changed)
        self._loaded = _Loaded(fleet, head)
        log.info("deployed %s: %d device(s) changed", head, len(changed))
        return ReconcileResult(head, DEPLOYED, tuple(changed), tuple(admitted), forced=forced)

    def _deployed(
        self, source: FleetSource, load_fleet: FleetLoader, commit: str | None
    ) -> Fleet | None:
        if commit is None:
            return None
        if self._loaded is not None and self._loaded.commit == commit:
            return self._loaded.fleet
        return load_fleet(source.read(commit))  # deployed by another server

    def _unsigned(
        self, s: Session, head: str, problem: str, previous: str | None, now: float
    ) -> ReconcileResult:
        log.warning("not deploying %s: %s", head, problem)
        errors: tuple[Mapping[str, Any], ...] = ({"message": problem},)
        self._record(s, head, UNSIGNED, list(errors), previous, now)
        return ReconcileResult(head, UNSIGNED, errors=errors)

    def _try_lock(self, s: Session) -> bool:
        if not self.postgres:
            return True
        got = s.scalar(text(ADVISORY_LOCK_SQL))
        return bool(got)

    def follow_deployed(self) -> bool:
        """Load the fleet of the revision the database says is deployed, when another
        server sharing the database deployed it (enrollments resolve against it); False
        when this process's copy of the repository does not hold it yet (fetch, retry)."""
        with self._lock, self.sessions() as s:
            return self._follow(deployed_commit(s))

    def _follow(self, commit: str | None) -> bool:
        """Read from the local mirror only: Git's network never runs under the lock."""
        if commit is not None and (self._loaded is None or self._loaded.commit != commit):
            self._load_known_good(commit)
        return commit is None or (self._loaded is not None and self._loaded.commit == commit)

    def _load_known_good(self, commit: str) -> None:
        if self.source is None or self.load_fleet is None:
            return
        try:
            self._loaded = _Loaded(self.load_fleet(self.source.read(commit)), commit)
        except KernexError as exc:
            log.error("cannot reload deployed revision %s: %s", commit, exc)

    def _record(
        self,
        s: Session,
        commit: str,
        state: str,
        errors: list[Any],
        previous: str | None,
        now: float,
        *,
        forced: bool = False,
    ) -> Revision:
        row = Revision(
            commit=commit,
            branch=self.settings.branch,
            state=state,
            errors=errors,
            forced=forced,
            previous=previous,
            devices_changed=0,
            created_at=now,
        )
        s.add(row)
        return row

    def _apply(
        self, s: Session, fleet: Fleet, commit: str, now: float
    ) -> tuple[list[ServedManifest], list[str]]:
        """Resolve every accepted device (and every pending one whose key the repository
        declares, which this admits); sign new manifests where the desired state changed."""
        known = s.scalars(
            select(Device).where(
                Device.state.in_([EnrollmentState.ACCEPTED.value, EnrollmentState.PENDING.value])
            )
        ).all()
        admit = [
            d
            for d in known
            if d.state == EnrollmentState.PENDING.value
            and (spec := fleet.devices.get(d.id)) is not None
            and spec.key_fingerprint == d.fingerprint
        ]
        accepted = [d for d in known if d.state == EnrollmentState.ACCEPTED.value] + admit
        inventory = {d.id: dict(d.labels or {}) for d in accepted}
        desired = fleet.resolve(inventory)  # raises before anything is changed
        for device in admit:
            device.state = EnrollmentState.ACCEPTED.value
            device.admitted_by = "fingerprint"
            device.updated_at = now
        ttl = self.manifest_ttl(fleet)
        current = {m.device_id: m for m in s.scalars(select(DeviceManifest))}  # one query
        drafts: dict[str, tuple[Manifest, str]] = {}
        digests: dict[str, str] = {}
        for device_id in sorted(inventory):  # the repo may list devices not enrolled yet
            draft = self.issuer.build(
                device_id, desired[device_id], serial=0, revision=commit, now=now, ttl=ttl
            )
            digests[device_id] = digest = draft.desired_digest()
            existing = current.get(device_id)
            if existing is None or existing.desired_digest != digest:
                drafts[device_id] = (draft, digest)
        # Staged rollouts decide which changed devices move now (docs/rollouts.md).
        staged = self.rollouts.stage(
            s,
            fleet=fleet,
            commit=commit,
            previous_commit=self._loaded.commit if self._loaded else None,
            desired=desired,
            drafts=drafts,
            digests=digests,
            current=current,
            now=now,
        )
        return staged.served, [d.id for d in admit]

    def _write(
        self,
        s: Session,
        draft: Manifest,
        digest: str,
        existing: DeviceManifest | None,
        now: float,
    ) -> ServedManifest:
        """Sign ``draft`` under the device's next serial and record it as served."""
        device_id, commit = draft.device_id, draft.revision
        serial = max((existing.serial if existing else 0) + 1, self.serial_floor)
        manifest = replace(draft, serial=serial)
        envelope = self.issuer.sign(manifest)
        if existing is None:
            existing = DeviceManifest(device_id=device_id)
            s.add(existing)
        existing.serial = serial
        existing.desired_digest = digest
        existing.revision = commit
        existing.envelope = envelope.decode("utf-8")
        existing.issued_at = manifest.issued_at
        existing.expires_at = manifest.expires_at
        s.add(
            Deployment(
                device_id=device_id,
                serial=serial,
                revision=commit,
                desired_digest=digest,
                bundles={b.name: b.version for b in manifest.bundles},
                created_at=now,
                rollout_id=int(manifest.rollout_id) if manifest.rollout_id else None,
            )
        )
        return ServedManifest(device_id, serial, envelope, manifest.expires_at)

    # -- single devices and upkeep -----------------------------------------------------

    def issue_for(self, device_id: str) -> ServedManifest | None:
        """Resolve one (just accepted or enrolled) device against the deployed revision."""
        with self._lock:
            now = self.clock()
            with self.sessions.begin() as s:
                if self.postgres:  # wait out a reconcile another server has under way
                    s.execute(text(WAIT_LOCK_SQL))
                    self._follow(deployed_commit(s))
                loaded = self._loaded
                if loaded is None or (self.postgres and loaded.commit != deployed_commit(s)):
                    return None  # never issue from an older revision than the deployed one
                device = s.get(Device, device_id)
                if device is None or device.state != EnrollmentState.ACCEPTED.value:
                    return None
                if self.rollouts.holds(s, device_id):  # its rollout decides what it runs
                    row = s.get(DeviceManifest, device_id)
                    return served_from_row(row) if row is not None else None
                try:
                    desired = loaded.fleet.resolve_device(device_id, dict(device.labels or {}))
                except KernexError as exc:
                    log.error("cannot resolve device %s: %s", device_id, exc)
                    return None
                existing = s.get(DeviceManifest, device_id)
                ttl = self.manifest_ttl()
                draft = self.issuer.build(
                    device_id, desired, serial=0, revision=loaded.commit, now=now, ttl=ttl
                )
                digest = draft.desired_digest()
                if existing is not None and existing.desired_digest == digest:
                    return served_from_row(existing)  # nothing changed for it
                return self._write(s, draft, digest, existing, now)

    def locked(self, act: Callable[[Session, float], T]) -> T | None:
        """Run ``act`` in one transaction under the reconcile lock (this process's, and the
        advisory lock across servers); ``None`` when another server holds it."""
        with self._lock:
            now = self.clock()
            with self.sessions.begin() as s:
                if not self._try_lock(s):
                    return None
                return act(s, now)

    def evaluate_rollouts(self) -> list[ServedManifest]:
        """Promote, halt or complete running rollouts (staged rollouts' timer and reports)."""
        return self.locked(self.rollouts.evaluate) or []

    def lift_serials(self) -> list[ServedManifest]:
        """Read the serial floor and re-sign every manifest below it (after a restore)."""
        with self._lock:
            now = self.clock()
            with self.sessions.begin() as s:
                self.serial_floor = read_floor(s)
                if not self.serial_floor or not self._try_lock(s):
                    return []
                ttl = self.manifest_ttl()
                return lift_to_floor(s, self.issuer, self.serial_floor, now=now, ttl=ttl)

    def resign_expiring(self) -> list[ServedManifest]:
        """Re-sign manifests close to expiry: same serial and content, new validity."""
        ttl = self.manifest_ttl()
        left = ttl * self.settings.resign_when_left
        out = self.locked(lambda s, now: resign_before(s, self.issuer, now + left, now, ttl))
        if out:
            log.info("re-signed %d manifest(s) close to expiry", len(out))
        return out or []


def served_from_row(row: DeviceManifest) -> ServedManifest:
    return ServedManifest(row.device_id, row.serial, row.envelope.encode("utf-8"), row.expires_at)
