"""``--wait`` for deploy and rollback: wait until the server deploys a commit and the devices
it changed report that they run it.

Two stages, each polled through the admin API:

1. the revision: ``POST /v1/admin/reconcile`` (the server fetches and reconciles now), then
   ``GET /v1/admin/revisions`` until the commit is there: deployed -> stage 2; invalid or
   unsigned -> failure with its errors. A later deployed commit that descends from ours
   (someone pushed after us) counts as deployed.
2. the devices: those whose desired serial changed from the snapshot taken before the
   commit. Each is *converged* when it reports its desired serial as healthy, *failed* when it
   reports that serial as failed or rolled_back, else *pending*.
3. the rollouts of the deployed commit (``GET /v1/admin/rollouts``): a staged rollout holds
   later waves back, so the wait goes on while one is running or paused, and fails at once
   when one halts or is aborted (docs/rollouts.md); so does a halted or aborted rollout
   that holds its devices through the commit (audited ``rollout.hold``).

The classification (``Convergence``) is pure; ``Waiter`` does the polling, with an injected
clock and sleep, and calls ``progress`` after every poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kernex_cli.client import AdminClient
from kernex_core.errors import KernexError

FAILED_PHASES = frozenset({"failed", "rolled_back"})
STAGING = frozenset({"running", "paused"})
STOPPED = frozenset({"halted", "aborted"})
POLL_INTERVAL = 1.0  # seconds between polls of the server


class WaitError(KernexError):
    """The server did not deploy the commit (invalid, unsigned, unseen) in time."""

    def __init__(
        self, message: str, *, hint: str | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.errors = errors or []


def snapshot(client: AdminClient) -> dict[str, int | None]:
    """Desired serial of every device the server knows, before a commit."""
    devices = client.get("/v1/admin/devices")["devices"]
    return {d["id"]: d.get("desired_serial") for d in devices}


@dataclass(frozen=True)
class DeviceProgress:
    device_id: str
    desired_serial: int | None
    reported_serial: int | None
    phase: str | None
    error: str | None
    online: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "desired_serial": self.desired_serial,
            "reported_serial": self.reported_serial,
            "phase": self.phase,
            "error": self.error,
            "online": self.online,
        }


@dataclass(frozen=True)
class Convergence:
    converged: tuple[DeviceProgress, ...] = ()
    failed: tuple[DeviceProgress, ...] = ()
    pending: tuple[DeviceProgress, ...] = ()
    rollouts: tuple[Mapping[str, Any], ...] = ()  # the deployed commit's rollouts

    @property
    def total(self) -> int:
        return len(self.converged) + len(self.failed) + len(self.pending)

    @property
    def halted(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(r for r in self.rollouts if r.get("state") in STOPPED)

    @property
    def staging(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(r for r in self.rollouts if r.get("state") in STAGING)

    @property
    def done(self) -> bool:
        return bool(self.halted) or (not self.pending and not self.staging)

    @classmethod
    def classify(
        cls, baseline: Mapping[str, int | None], devices: list[dict[str, Any]]
    ) -> Convergence:
        converged: list[DeviceProgress] = []
        failed: list[DeviceProgress] = []
        pending: list[DeviceProgress] = []
        for d in sorted(devices, key=lambda d: str(d["id"])):
            desired = d.get("desired_serial")
            if d.get("state") != "accepted" or desired is None:
                continue
            if d["id"] in baseline and baseline[d["id"]] == desired:
                continue  # the commit did not change this device
            status = d.get("status") or {}
            reported = status.get("serial", d.get("reported_serial"))
            item = DeviceProgress(
                d["id"],
                desired,
                reported,
                status.get("phase"),
                status.get("error"),
                bool(d.get("online")),
            )
            if reported == desired and item.phase == "healthy":
                converged.append(item)
            elif reported == desired and item.phase in FAILED_PHASES:
                failed.append(item)
            else:
                pending.append(item)
        return cls(tuple(converged), tuple(failed), tuple(pending))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "converged": [p.device_id for p in self.converged],
            "failed": [p.to_dict() for p in self.failed],
            "pending": [p.to_dict() for p in self.pending],
            "rollouts": [
                {k: r.get(k) for k in ("id", "group", "state", "wave", "reason", "waves")}
                for r in self.rollouts
            ],
        }


@dataclass
class WaitResult:
    commit: str
    deployed: str  # the revision the server serves (ours, or a later one that contains it)
    convergence: Convergence
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return not self.timed_out and not self.convergence.failed and not self.convergence.halted

    def to_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "deployed": self.deployed,
            "ok": self.ok,
            "timed_out": self.timed_out,
            **self.convergence.to_dict(),
        }


@dataclass
class Waiter:
    client: AdminClient
    is_ancestor: Callable[[str, str], bool]  # (older, newer) in the local repository
    timeout: float
    progress: Callable[[str, Convergence | None], None] = lambda _stage, _c: None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    interval: float = POLL_INTERVAL
    _deadline: float = field(default=0.0, init=False)

    def wait(self, commit: str, baseline: Mapping[str, int | None]) -> WaitResult:
        self._deadline = self.clock() + self.timeout
        deployed = self.wait_for_revision(commit)
        held = self.holding(deployed)
        while True:
            devices = self.client.get("/v1/admin/devices")["devices"]
            rollouts = self.client.get("/v1/admin/rollouts")["rollouts"]
            state = replace(
                Convergence.classify(baseline, devices),
                rollouts=tuple(
                    {**r, "held": True} if r.get("id") in held else r
                    for r in rollouts
                    if r.get("revision") == deployed or r.get("id") in held
                ),
            )
            self.progress("devices", state)
            if state.done:
                return WaitResult(commit, deployed, state)
            if self.clock() >= self._deadline:
                return WaitResult(commit, deployed, state, timed_out=True)
            self.sleep(self.interval)

    def holding(self, deployed: str) -> set[Any]:
        """Ids of the halted or aborted rollouts that keep their devices where they are
        through ``deployed`` (it leaves their bundle versions as they were): the server
        audits each as ``rollout.hold`` with the commit."""
        entries = self.client.get(
            "/v1/admin/audit", actor="rollouts", action="rollout.hold", limit=1000
        )["entries"]
        return {
            int(e["target"])
            for e in entries
            if (e.get("detail") or {}).get("commit") == deployed and str(e["target"]).isdigit()
        }

    def wait_for_revision(self, commit: str) -> str:
        """Trigger reconciles until the server has deployed ``commit``; return what it serves."""
        newest_seen: str | None = None
        while True:
            self.progress("revision", None)
            result = self.client.post("/v1/admin/reconcile")
            newest_seen = result.get("commit") or newest_seen
            revisions = self.client.get("/v1/admin/revisions")["revisions"]
            found = self._judge(commit, revisions)
            if found is not None:
                return found
            if self.clock() >= self._deadline:
                raise WaitError(
                    f"the server has not deployed {commit[:12]} in time "
                    f"(its newest commit is {(newest_seen or 'none')[:12]})",
                    hint="Without --push the server must read this same repository (a local "
                    "path); with a remote repository, pass --push so it can fetch the commit.",
                )
            self.sleep(self.interval)

    def _judge(self, commit: str, revisions: list[dict[str, Any]]) -> str | None:
        for rev in revisions:  # newest first
            if rev["commit"] == commit:
                if rev["state"] == "deployed":
                    return commit
                raise WaitError(
                    f"the server refused {commit[:12]}: the commit is {rev['state']}",
                    hint="Fix the errors below and commit again; the server keeps serving "
                    "the last good revision.",
                    errors=list(rev.get("errors") or []),
                )
            if rev["state"] == "deployed" and self.is_ancestor(commit, rev["commit"]):
                return str(rev["commit"])
        return None
