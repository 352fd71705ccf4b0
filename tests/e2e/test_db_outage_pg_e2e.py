"""PostgreSQL goes down under a real server process and comes back.

A throwaway PostgreSQL cluster of the test's own (initdb + pg_ctl on a free port in a temp
dir; never the shared one) serves a real `kernex server run`. While it is stopped: the
device gets 503 with Retry-After for a status report and its manifest from the cache, the
CLI says the server's database is unavailable (not "answered 500", not a token problem),
and the server logs one line for the outage, no traceback per request. After a restart
everything works again and the server logs that the database is back.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kit.admin import admin
from kit.device import SimDevice
from kit.fleet import FleetRepo
from kit.wait import wait_for

pytestmark = pytest.mark.e2e
KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """A PostgreSQL cluster in a temp dir; as root it runs as the `postgres` user."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.dir = root / "pg"
        self.bindir = bindir
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start a cluster")
            shutil.chown(root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.run("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync")

    def run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.dir.parent,
        )
        if done.returncode != 0:
            pytest.fail(f"{tool} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.dir.parent / "pg.log")
        self.run("pg_ctl", "-D", str(self.dir), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.dir), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("initdb is not installed")
    # pytest's tmp dirs are private to root; the postgres user needs a dir of its own
    root = Path(tempfile.mkdtemp(prefix="kernex-pg-"))
    try:
        pg = Cluster(root, bindir)
        pg.start()
        try:
            yield pg
        finally:
            subprocess.run(
                [*pg.as_user, str(bindir / "pg_ctl"), "-D", str(pg.dir), "-m", "immediate", "stop"],
                capture_output=True,
                check=False,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_outage_answers_503_and_logs_once(cluster: Cluster, tmp_path: Path) -> None:
    repo = FleetRepo(tmp_path / "fleet")
    data = tmp_path / "data"
    env = {**os.environ, "KERNEX_DATA_DIR": str(data), "KERNEX_DATABASE_URL": cluster.url}
    init = subprocess.run(
        [*KERNEX, "server", "init", "--repo", str(repo.path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(init.stdout)["admin_token"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*KERNEX, "server", "run", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for("the server to answer", lambda: _answers(f"{base}/healthz"), timeout=20)
        device = SimDevice("dev-1")
        with httpx.Client(base_url=base, timeout=30) as client:
            made = client.post("/v1/admin/enrollment-tokens", json={}, headers=admin(token))
            assert made.status_code == 201, made.text
            assert device.enroll(client, token=made.json()["token"]).status_code == 201
            assert device.manifest(client).status_code == 200
            assert device.status(client, {"phase": "healthy", "serial": 1}).status_code == 204

            cluster.stop()
            for _ in range(5):
                answer = device.status(client, {"phase": "healthy", "serial": 1})
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"].isdigit()
                assert "database" in answer.json()["hint"]
                assert device.manifest(client).status_code == 200  # from the cache
            cli = subprocess.run(
                [*KERNEX, "devices", "list", "--server", base, "--token", token],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert cli.returncode == 1
            shown = " ".join((cli.stdout + cli.stderr).split())
            assert "the server's database is unavailable" in shown
            assert "answered 500" not in shown
            assert "nothing is wrong with your token" in shown

            cluster.start()
            wait_for(
                "a report accepted after the outage",
                lambda: device.status(client, {"phase": "healthy", "serial": 1}).status_code == 204,
                timeout=20,
            )
            listed = client.get("/v1/admin/devices", headers=admin(token))
            assert listed.status_code == 200
            assert listed.json()["devices"][0]["status"]["phase"] == "healthy"
            wait_for(
                "the recovery log line",
                lambda: "database available again" in log_path.read_text(),
                timeout=20,
            )
    finally:
        server.terminate()
        server.wait(timeout=15)
    text = log_path.read_text()
    assert text.count("database unavailable") == 1, text
    assert text.count("database available again") == 1, text
    assert "Traceback" not in text, text


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False
