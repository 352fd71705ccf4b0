"""The fleet simulator: hook behaviours in process, and `kernex agent simulate` on a real
server process."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kernex_agent.simdevice import SimHookRunner
from kernex_agent.simulate import BehaviourRule, SimSettings, percentile
from kernex_cli.demo import prepare_fleet_repo
from kernex_cli.localserver import LocalServer
from kernex_cli.main import app


def run_hook(behaviour: str, kind: str, timeout: float = 5.0) -> tuple[int | None, bool]:
    hooks = SimHookRunner(behaviour, {}, random.Random(1), slow=0.01)
    result = asyncio.run(
        hooks.run(["x"], cwd=Path("/"), env={"KERNEX_HOOK": kind}, timeout=timeout)
    )
    return result.exit_code, result.timed_out


def test_behaviours_decide_each_hook() -> None:
    assert run_hook("ok", "install") == (0, False)
    assert run_hook("slow", "health") == (0, False)
    assert run_hook("fail-health", "install") == (0, False)
    assert run_hook("fail-health", "health") == (1, False)
    assert run_hook("fail-install", "install") == (1, False)
    assert run_hook("hang", "install", timeout=0.01) == (None, True)


def test_labels_are_dealt_and_rules_pick_behaviours(tmp_path: Path) -> None:
    s = SimSettings(
        server_url="http://127.0.0.1:1",
        enroll_token="t",
        devices=4,
        root=tmp_path,
        labels={"ring": ["canary", "stable"], "site": ["x"]},
        rules=[BehaviourRule("ring", "canary", "fail-health")],
    )
    assert [s.labels_for(i)["ring"] for i in range(4)] == ["canary", "stable"] * 2
    assert s.behaviour_for(s.labels_for(0)) == "fail-health"
    assert s.behaviour_for(s.labels_for(1)) == "ok"
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 100) == 4.0


@pytest.mark.e2e
def test_simulate_command_converges_devices_on_a_real_server(tmp_path: Path) -> None:
    prepare_fleet_repo(tmp_path / "fleet")
    with LocalServer(tmp_path / "server", repo=tmp_path / "fleet") as server:
        token = httpx.post(
            f"{server.base_url}/v1/admin/enrollment-tokens",
            json={"max_uses": 4},
            headers={"Authorization": f"Bearer {server.admin_token}"},
        ).json()["token"]
        result = CliRunner().invoke(
            app,
            [
                "agent", "simulate", "--server", server.base_url, "--enroll-token", token,
                "--devices", "4", "--label", "ring=canary,stable", "--duration", "3",
                "--root", str(tmp_path / "devices"), "--json",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["summary"]["phases"] == {"healthy": 4}
        assert out["summary"]["convergences"] == 4
        assert [d["device"] for d in out["devices"]] == [f"sim-{i:04d}" for i in range(4)]
        listed = httpx.get(
            f"{server.base_url}/v1/admin/devices",
            headers={"Authorization": f"Bearer {server.admin_token}"},
        ).json()["devices"]
        assert {d["id"]: d["labels"]["ring"] for d in listed} == {
            "sim-0000": "canary",
            "sim-0001": "stable",
            "sim-0002": "canary",
            "sim-0003": "stable",
        }
        assert {d["status"]["phase"] for d in listed} == {"healthy"}


@pytest.mark.e2e
def test_simulate_spreads_devices_over_worker_processes(tmp_path: Path) -> None:
    prepare_fleet_repo(tmp_path / "fleet")
    with LocalServer(tmp_path / "server", repo=tmp_path / "fleet") as server:
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        token = httpx.post(
            f"{server.base_url}/v1/admin/enrollment-tokens", json={"max_uses": 5}, headers=admin
        ).json()["token"]
        result = CliRunner().invoke(
            app,
            [
                "agent", "simulate", "--server", server.base_url, "--enroll-token", token,
                "--devices", "5", "--workers", "2", "--label", "ring=canary,stable",
                "--duration", "3", "--root", str(tmp_path / "devices"), "--json",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["summary"]["devices"] == 5
        assert out["summary"]["phases"] == {"healthy": 5}
        assert out["summary"]["convergences"] == 5  # every worker's times came back
        assert [d["device"] for d in out["devices"]] == [f"sim-{i:04d}" for i in range(5)]
        assert all(d["bundles"] == {} and len(d["convergences"]) == 1 for d in out["devices"])
        for worker in (0, 1):  # both processes ran devices: each wrote its own log
            assert (tmp_path / "devices" / f"worker-{worker}.log").exists()
        listed = httpx.get(f"{server.base_url}/v1/admin/devices", headers=admin).json()["devices"]
        assert {d["id"]: d["labels"]["ring"] for d in listed} == {
            f"sim-{i:04d}": ("canary", "stable")[i % 2] for i in range(5)
        }
        assert {d["status"]["phase"] for d in listed} == {"healthy"}


@pytest.mark.e2e
def test_a_worker_that_cannot_enroll_fails_the_simulation_clearly(tmp_path: Path) -> None:
    prepare_fleet_repo(tmp_path / "fleet")
    with LocalServer(tmp_path / "server", repo=tmp_path / "fleet") as server:
        result = CliRunner().invoke(
            app,
            [
                "agent", "simulate", "--server", server.base_url, "--enroll-token", "kxe_wrong",
                "--devices", "2", "--workers", "2", "--root", str(tmp_path / "devices"),
            ],
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert "enrollment refused (403)" in result.output
