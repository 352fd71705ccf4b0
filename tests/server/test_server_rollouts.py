"""Staged rollouts against the real app: real Git repository, real database, real signing."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kit.apicheck import check_answers
from kit.device import SimDevice, verify_manifest
from kit.fleet import FleetRepo, kernex_yaml
from starlette.testclient import TestClient

from kernex_core import keys
from kernex_server.app import create_app

STAGED = (
    "selector: ring=stable\npriority: 5\nrollout:\n  waves: [20%, 100%]\n"
    "  failure_threshold: 10%\n  pause: 60s\n{extra}"
)


class Clock:
    """Real time plus an offset the test moves (within the signature skew allowed)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Fleet:
    def __init__(self, client: TestClient, token: str, key: keys.PrivateKey, clock: Clock) -> None:
        self.client, self.token, self.key, self.clock = client, token, key, clock
        self.kx = client.app.state.kx  # type: ignore[attr-defined]
        self.devices: dict[str, SimDevice] = {}
        self.stopped = False

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str) -> Any:
        response = self.client.get(path, headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, status: int = 200) -> Any:
        response = self.client.post(path, headers=self.auth)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def enroll(self, count: int, ring: str = "stable") -> None:
        token = self.post("/v1/admin/enrollment-tokens", status=201)["token"]
        for i in range(count):
            device = SimDevice(f"{ring}-{i:02d}", labels={"ring": ring})
            assert device.enroll(self.client, token=token).status_code == 201
            self.devices[device.device_id] = device

    def manifests(self) -> dict[str, Any]:
        out = {}
        for device_id, device in self.devices.items():
            response = device.manifest(self.client)
            assert response.status_code == 200, response.text
            out[device_id] = verify_manifest(response.content, device_id, self.key)
        return out

    def report(self, device_id: str, phase: str, serial: int) -> None:
        body = {"phase": phase, "serial": serial, "error": None if phase == "healthy" else "boom"}
        assert self.devices[device_id].status(self.client, body).status_code == 204

    def report_all(self, phase_of: Any = lambda _d: "healthy") -> None:
        for device_id, m in self.manifests().items():
            self.report(device_id, phase_of(device_id), m.serial)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.client.__exit__(None, None, None)

    def evaluate(self) -> None:
        self.client.portal.call(self.kx.evaluate_rollouts)  # type: ignore[union-attr]

    def rollouts(self, state: str | None = None) -> list[dict[str, Any]]:
        query = f"?state={state}" if state else ""
        rows: list[dict[str, Any]] = self.get(f"/v1/admin/rollouts{query}")["rollouts"]
        return rows


@pytest.fixture
def start_fleet(make_settings: Any, manifest_key: keys.PrivateKey) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def start(clock: Clock | None = None) -> Fleet:
        clock = clock or Clock()
        app = create_app(make_settings(), manifest_key=manifest_key, background=False, clock=clock)
        client = TestClient(app)
        check_answers(client)
        client.__enter__()
        token = app.state.kx.store.create_api_token(
            f"ops-{secrets.token_hex(3)}", "admin", now=time.time()
        )
        fleets.append(Fleet(client, token, manifest_key, clock))
        return fleets[-1]

    yield start
    for fleet in reversed(fleets):
        fleet.stop()


def staged_repo(repo: FleetRepo, extra: str = "") -> None:
    repo.write("groups/stable.yaml", STAGED.format(extra=extra))
    repo.commit("stable devices get changes in two waves")


def release(fleet: Fleet, repo: FleetRepo, version: str, greeting: str = "hello") -> str:
    repo.write("kernex.yaml", kernex_yaml(version=version, greeting=greeting))
    commit = repo.commit(f"app {version}")
    assert fleet.post("/v1/admin/reconcile")["state"] == "deployed"
    return commit


def on_version(fleet: Fleet) -> dict[str, str]:
    return {d: m.bundles[0].version for d, m in fleet.manifests().items()}


def test_healthy_waves_promote_after_the_pause_same_canaries_each_release(
    start_fleet: Any, fleet_repo: FleetRepo
) -> None:
    staged_repo(fleet_repo)
    fleet = start_fleet()
    fleet.enroll(10)
    fleet.report_all()

    release(fleet, fleet_repo, "1.1.0")
    [rollout] = fleet.rollouts()
    assert rollout["state"] == "running"
    assert rollout["group"] == "stable"
    assert [w["size"] for w in rollout["waves"]] == [2, 8]
    versions = on_version(fleet)
    canaries = {d for d, v in versions.items() if v == "1.1.0"}
    assert len(canaries) == 2  # 20% of 10; the other 8 keep their previous manifest
    manifests = fleet.manifests()
    assert all(manifests[d].serial == 1 for d in versions if d not in canaries)
    assert all(manifests[d].rollout_id == str(rollout["id"]) for d in canaries)

    fleet.report_all()  # the canaries are healthy on the new serial
    assert fleet.get(f"/v1/admin/rollouts/{rollout['id']}")["wave"] == 0  # the pause holds
    fleet.clock.offset = 61
    fleet.evaluate()
    assert set(on_version(fleet).values()) == {"1.1.0"}
    fleet.report_all()
    done = fleet.get(f"/v1/admin/rollouts/{rollout['id']}")
    assert done["state"] == "completed"
    assert [w["healthy"] for w in done["waves"]] == [2, 8]

    release(fleet, fleet_repo, "1.0.0", greeting="again")
    second = fleet.rollouts()[0]
    assert second["id"] != rollout["id"]
    versions = on_version(fleet)
    assert {d for d, v in versions.items() if v == "1.0.0"} == canaries  # same canary set

    actions = [e["action"] for e in fleet.get("/v1/admin/audit?actor=rollouts")["entries"]]
    assert {"rollout.start", "rollout.promote", "rollout.complete"} <= set(actions)
    status = fleet.get("/v1/admin/status")["rollouts"]
    assert status["active"] == 1
    assert status["halted"] == 0


def test_failed_canaries_halt_and_auto_rollback_serves_the_previous_state(
    start_fleet: Any, fleet_repo: FleetRepo
) -> None:
    staged_repo(fleet_repo, extra="  auto_rollback: true\n")
    fleet = start_fleet()
    fleet.enroll(10)
    fleet.report_all()
    release(fleet, fleet_repo, "1.1.0")
    [rollout] = fleet.rollouts()
    before = fleet.manifests()
    canaries = [d for d, m in before.items() if m.bundles[0].version == "1.1.0"]
    fleet.report_all(lambda d: "rolled_back" if d == canaries[0] else "healthy")

    halted = fleet.get(f"/v1/admin/rollouts/{rollout['id']}")
    assert halted["state"] == "halted"
    assert "1 of 2 admitted devices failed" in halted["reason"]
    after = fleet.manifests()
    for device_id, m in after.items():
        assert m.bundles[0].version == "1.0.0"  # later waves never got the new version
        if device_id in canaries:  # the previous state again, under a higher serial
            assert m.serial == before[device_id].serial + 1
            assert m.rollout_id == str(rollout["id"])
        else:
            assert m.serial == 1
    fleet.clock.offset = 120
    fleet.evaluate()
    assert {m.bundles[0].version for m in fleet.manifests().values()} == {"1.0.0"}
    assert fleet.get("/v1/admin/status")["rollouts"] == {"active": 0, "halted": 1}
    halts = fleet.get("/v1/admin/audit?actor=rollouts&action=rollout.halt")["entries"]
    assert sorted(halts[0]["detail"]["rolled_back"]) == sorted(canaries)
    metrics = fleet.client.get("/metrics").text
    assert 'kernex_rollouts{state="halted"} 1.0' in metrics
    assert "kernex_rollout_halts_total 1.0" in metrics

    # Only a new commit (or an operator) moves the group again: it supersedes the halt.
    release(fleet, fleet_repo, "1.0.0", greeting="fixed")
    rows = {r["id"]: r for r in fleet.rollouts()}
    assert rows[rollout["id"]]["state"] == "superseded"
    assert len(rows) == 2


def test_manual_promotion_and_operator_acts_are_audited(
    start_fleet: Any, fleet_repo: FleetRepo
) -> None:
    fleet_repo.write(
        "groups/stable.yaml",
        "selector: ring=stable\nrollout:\n  waves: [20%, 100%]\n  promotion: manual\n",
    )
    fleet_repo.commit("manual promotion")
    fleet = start_fleet()
    fleet.enroll(5)
    fleet.report_all()
    release(fleet, fleet_repo, "1.1.0")
    [rollout] = fleet.rollouts()
    rid = rollout["id"]
    fleet.report_all()
    fleet.clock.offset = 250
    fleet.evaluate()
    shown = fleet.get(f"/v1/admin/rollouts/{rid}")
    assert shown["wave"] == 0
    assert shown["awaiting_promotion"] is True

    assert fleet.post(f"/v1/admin/rollouts/{rid}/pause")["state"] == "paused"
    assert fleet.post(f"/v1/admin/rollouts/{rid}/pause", status=409)
    assert fleet.post(f"/v1/admin/rollouts/{rid}/resume")["state"] == "running"
    promoted = fleet.post(f"/v1/admin/rollouts/{rid}/promote")
    assert promoted["wave"] == 1
    assert set(on_version(fleet).values()) == {"1.1.0"}
    fleet.post(f"/v1/admin/rollouts/{rid}/promote", status=409)  # no wave left
    aborted = fleet.post(f"/v1/admin/rollouts/{rid}/abort")
    assert aborted["state"] == "aborted"
    assert set(on_version(fleet).values()) == {"1.0.0"}  # abort undoes the rollout
    fleet.post("/v1/admin/rollouts/999/abort", status=404)

    # Re-accepting a device must not sneak the aborted state past its rollout.
    fleet.post("/v1/admin/devices/stable-00/accept")
    assert on_version(fleet)["stable-00"] == "1.0.0"

    entries = fleet.get(f"/v1/admin/audit?target={rid}")["entries"]
    acts = [(e["action"], e["result"]) for e in reversed(entries) if e["actor"] != "rollouts"]
    assert acts == [
        ("rollout.pause", "ok"),
        ("rollout.pause", "error"),
        ("rollout.resume", "ok"),
        ("rollout.promote", "ok"),
        ("rollout.promote", "error"),
        ("rollout.abort", "ok"),
    ]


@pytest.mark.parametrize("role", ["viewer"])
def test_viewers_read_rollouts_but_cannot_act(
    start_fleet: Any, fleet_repo: FleetRepo, role: str
) -> None:
    staged_repo(fleet_repo)
    fleet = start_fleet()
    fleet.enroll(3)
    release(fleet, fleet_repo, "1.1.0")
    rid = fleet.rollouts()[0]["id"]
    token = fleet.kx.store.create_api_token("a-viewer", role, now=time.time())
    auth = {"Authorization": f"Bearer {token}"}
    assert fleet.client.get(f"/v1/admin/rollouts/{rid}", headers=auth).status_code == 200
    assert fleet.client.post(f"/v1/admin/rollouts/{rid}/abort", headers=auth).status_code == 403
    assert fleet.get(f"/v1/admin/rollouts/{rid}")["state"] == "running"


def test_rollout_state_survives_a_restart(start_fleet: Any, fleet_repo: FleetRepo) -> None:
    staged_repo(fleet_repo)
    clock = Clock()
    first = start_fleet(clock)
    first.enroll(10)
    first.report_all()
    release(first, fleet_repo, "1.1.0")
    rid = first.rollouts()[0]["id"]
    first.report_all()
    first.stop()

    again = start_fleet(clock)
    again.devices = first.devices
    shown = again.get(f"/v1/admin/rollouts/{rid}")
    assert shown["state"] == "running"
    assert shown["waves"][0]["healthy"] == 2
    assert sorted(on_version(again).values()) == ["1.0.0"] * 8 + ["1.1.0"] * 2
    clock.offset = 61
    again.evaluate()
    assert set(on_version(again).values()) == {"1.1.0"}


def test_a_finished_rollout_keeps_its_final_counts(start_fleet: Any, fleet_repo: FleetRepo) -> None:
    staged_repo(fleet_repo)
    fleet = start_fleet()
    fleet.enroll(10)
    fleet.report_all()
    release(fleet, fleet_repo, "1.1.0")
    [first] = fleet.rollouts()
    fleet.report_all()
    fleet.clock.offset = 61
    fleet.evaluate()
    fleet.report_all()
    done = fleet.get(f"/v1/admin/rollouts/{first['id']}")
    assert done["state"] == "completed"

    # The devices move on (a newer release reaches the canaries and they report it): the
    # completed rollout still shows how it ended, not where its devices are now.
    release(fleet, fleet_repo, "1.0.0", greeting="again")
    fleet.report_all()
    later = fleet.get(f"/v1/admin/rollouts/{first['id']}")
    assert later["state"] == "completed"
    assert [(w["healthy"], w["pending"], w["offline"]) for w in later["waves"]] == [
        (2, 0, 0),
        (8, 0, 0),
    ]
    assert later["waves"] == done["waves"]


def test_a_halted_release_stays_halted_until_a_commit_changes_its_version(
    start_fleet: Any, fleet_repo: FleetRepo
) -> None:
    staged_repo(fleet_repo, extra="  auto_rollback: true\n")
    fleet = start_fleet()
    fleet.enroll(10)
    fleet.report_all()
    release(fleet, fleet_repo, "1.1.0")
    [rollout] = fleet.rollouts()
    canaries = [d for d, v in on_version(fleet).items() if v == "1.1.0"]
    fleet.report_all(lambda d: "failed" if d == canaries[0] else "healthy")
    assert fleet.get(f"/v1/admin/rollouts/{rollout['id']}")["state"] == "halted"
    status = fleet.get("/v1/admin/status")["devices"]
    assert status["out_of_sync"] == 10  # Git says 1.1.0; every device is served 1.0.0

    # An unrelated config commit: Git still names 1.1.0, so the release stays halted and
    # no device is offered 1.1.0 again.
    release(fleet, fleet_repo, "1.1.0", greeting="other")
    fleet.evaluate()
    rows = fleet.rollouts()
    assert [(r["id"], r["state"]) for r in rows] == [(rollout["id"], "halted")]
    assert set(on_version(fleet).values()) == {"1.0.0"}
    fleet.report_all()
    assert fleet.get(f"/v1/admin/rollouts/{rollout['id']}")["state"] == "halted"
    status = fleet.get("/v1/admin/status")["devices"]
    assert status["out_of_sync"] == 10
    behind = fleet.get("/v1/admin/devices?out_of_sync=true")["devices"]
    assert len(behind) == 10
    assert all(d["held_back"] and not d["deployment_pending"] for d in behind)
    holds = fleet.get("/v1/admin/audit?actor=rollouts&action=rollout.hold")["entries"]
    assert len(holds) == 1

    # Resuming it serves the newest state Git names (1.1.0 with the new config).
    fleet.post(f"/v1/admin/rollouts/{rollout['id']}/resume")
    resumed = fleet.manifests()
    assert resumed[canaries[0]].bundles[0].version == "1.1.0"
    assert resumed[canaries[0]].config["app"]["greeting"] == "other"
    fleet.post(f"/v1/admin/rollouts/{rollout['id']}/abort")

    # A commit that changes the bundle's version ends the hold: it supersedes the rollout.
    release(fleet, fleet_repo, "1.0.0", greeting="fixed")
    rows = {r["id"]: r for r in fleet.rollouts()}
    assert rows[rollout["id"]]["superseded_by"] == fleet_repo.head()
    assert len(rows) == 2
