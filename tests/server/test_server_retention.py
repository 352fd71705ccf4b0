"""Retention: old rows go in small batches; what devices are served never does."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kit.device import SimDevice
from kit.fleet import kernex_yaml
from kit.wait import wait_for
from sqlalchemy import func, select
from typer.testing import CliRunner

from kernex_cli.main import app
from kernex_server.models import (
    AuditEntry,
    Deployment,
    DeviceStatus,
    Revision,
    Rollout,
    RolloutDevice,
    StatusReportRow,
)
from kernex_server.retention import DAY, Pruner, RetentionPolicy

POLICY = RetentionPolicy(
    audit_days=365, status_days=90, deployment_days=365, rollout_days=180, revision_days=365,
    batch=1,
)  # fmt: skip


def rollout(state: str, revision: str, now: float) -> Rollout:
    return Rollout(group="", revision=revision, state=state, wave_started_at=now, created_at=now,
                   updated_at=now, policy={})  # fmt: skip


def count(s: Any, model: Any) -> int:
    return int(s.scalar(select(func.count()).select_from(model)))


def test_prune_keeps_what_devices_are_served(server: Any, fleet_repo: Any) -> None:
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    first = server.reconcile()["commit"]
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="second"))
    fleet_repo.commit("second")
    second = server.reconcile()["commit"]
    fleet_repo.write("kernex.yaml", "not: [valid")
    fleet_repo.commit("broken")
    assert server.reconcile()["state"] == "invalid"
    for serial in (1, 2):
        report = {"phase": "healthy", "serial": serial}
        assert device.status(server.client, report).status_code == 204
    server.kx.statuses.flush()
    sessions = server.kx.store.sessions
    now = time.time()
    with sessions.begin() as s:
        finished = rollout("completed", "0" * 40, now)
        halted = rollout("halted", second, now)
        serving = rollout("superseded", second, now)
        s.add_all([finished, halted, serving])
        s.flush()
        s.add(RolloutDevice(rollout_id=serving.id, device_id="dev-1", wave=0, target_digest="x",
                            target={}, previous={}, new_serial=2))  # fmt: skip
        ids = {"finished": finished.id, "halted": halted.id, "serving": serving.id}
    with sessions() as s:
        audits = count(s, AuditEntry)
    assert audits > 0

    pruner = Pruner(sessions, POLICY, clock=lambda: time.time() + 400 * DAY)
    planned = pruner.plan()
    assert planned == {"audit": audits, "status_history": 2, "deployments": 1,
                       "rollouts": 1, "revisions": 1}  # fmt: skip
    assert pruner.prune() == planned
    assert pruner.plan() == dict.fromkeys(planned, 0)

    with sessions() as s:
        assert count(s, AuditEntry) == count(s, StatusReportRow) == 0
        assert s.get(DeviceStatus, "dev-1") is not None  # the current status stays
        assert [d.serial for d in s.scalars(select(Deployment))] == [2]  # the current serial's
        kept = {r.commit for r in s.scalars(select(Revision))}
        assert first not in kept
        assert second in kept  # deployed, and in the device's manifest
        assert fleet_repo.head() in kept  # the newest revision (invalid) stays
        left = set(s.scalars(select(Rollout.id)))
        assert left == {ids["halted"], ids["serving"]}
    assert server.reconcile()["state"] == "unchanged"  # the newest revision is still known
    assert device.manifest(server.client).status_code == 200


def test_nothing_recent_is_pruned(server: Any) -> None:
    server.reconcile()
    assert Pruner(server.kx.store.sessions, POLICY).prune() == {
        "audit": 0, "status_history": 0, "deployments": 0, "rollouts": 0, "revisions": 0
    }  # fmt: skip


def test_the_server_prunes_in_the_background(start_server: Any) -> None:
    server = start_server(background=True, prune_interval=0.1, retain_audit_days=1.0)
    store = server.kx.store
    store.audit(at=time.time() - 2 * DAY, actor="old", action="x", target="t", address="",
                result="ok")  # fmt: skip

    def pruned() -> bool:
        with store.sessions() as s:
            return not s.scalar(select(func.count()).where(AuditEntry.actor == "old"))

    wait_for("the old audit row to be pruned", pruned, 10, every=0.05)


def test_cli_prune_dry_run(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    assert runner.invoke(app, ["server", "init", "--data-dir", str(data)]).exit_code == 0
    done = runner.invoke(app, ["server", "prune", "--dry-run", "--data-dir", str(data)])
    assert done.exit_code == 0, done.output
    assert "would remove        0 audit" in done.output
    assert "status history" in done.output
    real = runner.invoke(app, ["server", "prune", "--json", "--data-dir", str(data)])
    assert real.exit_code == 0, real.output
    assert '"dry_run": false' in real.output


def test_stale_upload_files_are_removed_at_start_and_by_the_pruning_pass(
    start_server: Any, make_settings: Any
) -> None:
    tmp_dir = make_settings().blob_dir / "tmp"
    tmp_dir.mkdir(parents=True)
    hour_ago = time.time() - 3601
    at_start = tmp_dir / "upload.before-start"  # left by a server that died mid-upload
    at_start.write_bytes(b"half")
    os.utime(at_start, (hour_ago, hour_ago))
    server = start_server(background=True, prune_interval=0.1)
    assert not at_start.exists()

    later = tmp_dir / "upload.later"
    later.write_bytes(b"half")
    young = tmp_dir / "upload.young"  # written to within the hour: may be in progress
    young.write_bytes(b"half")
    os.utime(later, (hour_ago, hour_ago))
    deadline = time.monotonic() + 10
    while later.exists():
        assert time.monotonic() < deadline, "the pruning pass left the stale upload"
        time.sleep(0.05)
    assert young.exists()
    assert server.kx.blobs.root / "tmp" == tmp_dir
