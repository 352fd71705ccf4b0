"""Two `kernex server run` processes on one PostgreSQL schema, with real agents: every
process serves the same, newest state (docs/server.md, "Several servers").

Server A reconciles; server B only learns of it through the database. A device enrolled
on A is served by B, a device long-polling on B takes A's commit within 2 s, and no
deployment ever carries a revision older than the one deployed when it was written.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from kit.device import SimDevice
from kit.fleet import FleetRepo
from kit.wait import wait_for

from kernex_cli.localserver import LocalServer
from kernex_server.database import make_engine

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]


def fleet_yaml(greeting: str) -> str:
    return (
        "apiVersion: kernex/v1\nname: test-fleet\n"
        f"defaults:\n  config:\n    app:\n      greeting: {greeting}\n"
    )


@dataclass
class Pair:
    a: LocalServer
    b: LocalServer
    repo: FleetRepo
    engine: sa.Engine
    schema: str
    token: str

    def client(self, server: LocalServer) -> httpx.Client:
        return httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[Pair]:
    """Servers A and B on one schema of their own; both reconcile only when told to."""
    schema = f"kx_test_{secrets.token_hex(6)}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    repo = FleetRepo(tmp_path / "fleet")
    repo.git("rm", "-q", "-r", "bundles", "groups")
    repo.write("kernex.yaml", fleet_yaml("one"))
    repo.commit("config only: greeting one")
    settings: dict[str, float | str] = {
        "database_schema": schema,
        "poll_interval": 3600.0,  # no pass of its own: A reconciles when the test asks
        "heartbeat_flush_interval": 0.2,
        "enroll_rate": 0.0,
    }
    a = LocalServer(tmp_path / "a", repo=repo.path, settings=settings, database_url=postgres_url)
    b: LocalServer | None = None
    try:
        a.init()
        shutil.copytree(a.data_dir, tmp_path / "b")  # the same manifest key and settings
        b = LocalServer(
            tmp_path / "b",
            repo=repo.path,
            database_url=postgres_url,
            admin_token=a.admin_token,
        )
        a.start()
        b.start()
        in_schema = make_engine(postgres_url, schema=schema)
        yield Pair(a, b, repo, in_schema, schema, a.admin_token)
        in_schema.dispose()
    finally:
        for server in (b, a):
            if server is not None:
                server.stop()
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


class Agent:
    """`kernex agent enroll` on one server, `kernex agent run` against another."""

    def __init__(self, root: Path, device_id: str) -> None:
        self.device_id = device_id
        self.data = root / device_id
        self.log_path = root / f"{device_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def enroll(self, server: LocalServer, token: str) -> None:
        done = subprocess.run(
            [*KERNEX, "agent", "enroll", "--server", server.base_url, "--token", token,
             "--device-id", self.device_id, "--data-dir", str(self.data)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    def run(self, server: LocalServer) -> None:
        config = self.data / "agent.json"
        doc = json.loads(config.read_text())
        doc["server_url"] = server.base_url
        config.write_text(json.dumps(doc))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*KERNEX, "agent", "run", "--data-dir", str(self.data)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def greeting(self) -> str | None:
        try:
            doc = json.loads((self.data / "config.json").read_text())
        except (OSError, ValueError):
            return None
        value = doc.get("app", {}).get("greeting")
        return str(value) if value is not None else None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=45)  # an agent in a long poll exits when the poll ends
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


def long_polls(server: LocalServer) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("kernex_manifest_long_polls_open "):
            return float(line.split()[1])
    return 0.0


def deployments(pair: Pair) -> list[dict[str, Any]]:
    with pair.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT device_id, serial, revision, created_at FROM deployments ORDER BY id")
        )
        return [dict(r._mapping) for r in rows]


def deployed_revisions(pair: Pair) -> list[dict[str, Any]]:
    with pair.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT commit, created_at FROM revisions WHERE state = 'deployed' ORDER BY id")
        )
        return [dict(r._mapping) for r in rows]


def assert_serials_monotonic(pair: Pair) -> None:
    """Per device, serials only go up and never carry an older revision than the one
    before; every row written after a revision was deployed carries it or a newer one."""
    revisions = deployed_revisions(pair)
    order = {r["commit"]: i for i, r in enumerate(revisions)}
    last: dict[str, tuple[int, int]] = {}
    for row in deployments(pair):
        rank = order[row["revision"]]
        newest_then = max(
            (i for i, r in enumerate(revisions) if r["created_at"] <= row["created_at"]),
            default=0,
        )
        assert rank >= newest_then, f"{row} carries a revision older than the deployed one"
        if row["device_id"] in last:
            serial, previous_rank = last[row["device_id"]]
            assert row["serial"] > serial, f"serial went down: {row}"
            assert rank >= previous_rank, f"older revision under a higher serial: {row}"
        last[row["device_id"]] = (row["serial"], rank)


def test_every_server_serves_the_newest_state(pair: Pair, tmp_path: Path) -> None:
    a_client, b_client = pair.client(pair.a), pair.client(pair.b)
    token = a_client.post("/v1/admin/enrollment-tokens", json={"max_uses": 5}).json()["token"]
    on_b = Agent(tmp_path, "edge-1")
    late = Agent(tmp_path, "edge-2")
    try:
        # enrolled through A, served by B
        on_b.enroll(pair.a, token)
        on_b.run(pair.b)
        wait_for("B to serve the device A enrolled", lambda: on_b.greeting() == "one", 30)

        # A reconciles a commit; the device long-polling on B takes it within 2 s
        pair.repo.write("kernex.yaml", fleet_yaml("two"))
        commit = pair.repo.commit("greeting two")
        wait_for("the device's long poll on B", lambda: long_polls(pair.b) >= 1, 30)
        done = a_client.post("/v1/admin/reconcile")
        started = time.monotonic()
        assert done.status_code == 200, done.text
        assert (done.json()["state"], done.json()["commit"]) == ("deployed", commit)
        wait_for("the device on B to converge", lambda: on_b.greeting() == "two", 10)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"B's device converged {elapsed:.2f} s after A deployed"

        # a device enrolled on B after A deployed gets A's commit, not B's older one
        late.enroll(pair.b, token)
        late.run(pair.a)
        wait_for("the device enrolled on B", lambda: late.greeting() == "two", 30)
        shown = b_client.get("/v1/admin/devices/edge-2").json()
        assert shown["desired_revision"] == commit

        pair.repo.write("kernex.yaml", fleet_yaml("three"))
        pair.repo.commit("greeting three")
        assert a_client.post("/v1/admin/reconcile").json()["state"] == "deployed"
        wait_for("both devices on three", lambda: on_b.greeting() == late.greeting() == "three")
        assert_serials_monotonic(pair)
        assert {r["device_id"] for r in deployments(pair)} == {"edge-1", "edge-2"}
    finally:
        on_b.stop()
        late.stop()
        a_client.close()
        b_client.close()


def test_replays_and_revocations_hold_across_servers(pair: Pair) -> None:
    """A signed request A accepted is refused when replayed to B; a device revoked on A
    is refused by B within 1 s."""
    a_client, b_client = pair.client(pair.a), pair.client(pair.b)
    token = a_client.post("/v1/admin/enrollment-tokens", json={"max_uses": 1}).json()["token"]
    device = SimDevice("sim-1")
    try:
        assert device.enroll(a_client, token).status_code == 201
        # a captured status report: the same bytes and signature, sent again
        path = "/v1/devices/sim-1/status"
        body = json.dumps({"phase": "healthy", "serial": 1}).encode()
        headers = device.headers("POST", path, body)
        assert a_client.post(path, content=body, headers=headers).status_code == 204
        for server_client in (b_client, a_client):
            replayed = server_client.post(path, content=body, headers=headers)
            assert replayed.status_code == 401, replayed.text
            assert "replay" in replayed.json()["error"]
        assert device.manifest(b_client).status_code == 200  # fresh requests still pass

        assert a_client.post("/v1/admin/devices/sim-1/revoke").status_code == 200
        revoked_at = time.monotonic()

        def refused_by_b() -> bool:
            return device.manifest(b_client).status_code in (401, 403)

        wait_for("B to refuse the revoked device", refused_by_b, 10)
        elapsed = time.monotonic() - revoked_at
        assert elapsed < 1.0, f"B served a device revoked on A for {elapsed:.2f} s"
        refused = device.status(b_client, {"phase": "healthy", "serial": 1})
        assert refused.status_code == 403, refused.text
    finally:
        a_client.close()
        b_client.close()
