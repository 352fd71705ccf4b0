"""A fleet remote that accepts the connection and never answers must not stop the server
from serving: the real server process (`kernex server run`) on loopback, a `git://` remote
on a socket that holds every connection open in silence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit.admin import admin
from kit.device import SimDevice
from kit.fleet import FleetRepo
from kit.wait import wait_for

from kernex_core import keys
from kernex_core.trust import ManifestVerifier

pytestmark = pytest.mark.e2e
KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]
BOUND = 5.0  # seconds any request may take while the remote hangs


class SilentRemote:
    """A TCP listener on loopback that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.sock.getsockname()[1]}/fleet.git"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never answered

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentRemote]:
    remote = SilentRemote()
    yield remote
    remote.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, data: Path, log: Path) -> None:
        self.data = data
        self.env = {**os.environ, "KERNEX_DATA_DIR": str(data)}
        self.env.pop("KERNEX_DATABASE_URL", None)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [*KERNEX, "server", "run", "--port", str(self.port), "--log-level", "info"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = started + 60
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not answer /healthz: {log.read_text()}")
            time.sleep(0.05)
        answered = time.time()
        # From the server's own start-up (after Python's imports) to its first answer.
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        began = [x["time"] for x in lines if x["message"] == "Waiting for application startup."]
        self.start_seconds = answered - datetime.fromisoformat(began[-1]).timestamp()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
            pytest.fail("the server did not stop on SIGTERM within 15 s")
        finally:
            self._log.close()


def init(data: Path, repo: str, *extra: str) -> str:
    env = {**os.environ, "KERNEX_DATA_DIR": str(data)}
    env.pop("KERNEX_DATABASE_URL", None)
    done = subprocess.run(
        [*KERNEX, "server", "init", "--repo", repo, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    set_repo(data, repo, *extra)
    return str(json.loads(done.stdout)["admin_token"])


def set_repo(data: Path, repo: str, *extra: str) -> None:
    path = data / "server.toml"
    lines = [
        line
        for line in path.read_text().splitlines()
        if not line.startswith(("repo =", "poll_interval", "git_timeout", "reconcile_wait"))
    ]
    lines += [f'repo = "{repo}"', "poll_interval = 1.0", *extra]
    path.write_text("\n".join(lines) + "\n")


def enroll_within_bound(base: str, token: str, device_id: str) -> SimDevice:
    with httpx.Client(base_url=base, timeout=BOUND) as client:
        started = time.monotonic()
        made = client.post(
            "/v1/admin/enrollment-tokens", json={"max_uses": 1}, headers=admin(token)
        )
        assert made.status_code == 201, made.text
        device = SimDevice(device_id)
        answer = device.enroll(client, token=made.json()["token"])
        assert answer.status_code == 201, answer.text
        assert answer.json()["state"] == "accepted"
        assert time.monotonic() - started < BOUND
    return device


def reconcile_within_bound(base: str, token: str) -> dict[str, Any]:
    started = time.monotonic()
    answer = httpx.post(f"{base}/v1/admin/reconcile", headers=admin(token), timeout=BOUND * 3)
    assert time.monotonic() - started < BOUND * 2, "POST /v1/admin/reconcile waited on Git"
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    assert body["fetching"] is True
    assert body["git"]["running_since"] is not None
    return body


def kernex_status(proc: Proc, token: str) -> subprocess.CompletedProcess[str]:
    env = {**proc.env, "KERNEX_SERVER": proc.base, "KERNEX_TOKEN": token, "COLUMNS": "200"}
    return subprocess.run([*KERNEX, "status"], env=env, capture_output=True, text=True, timeout=60)


def test_a_silent_remote_with_nothing_deployed_blocks_nothing(
    tmp_path: Path, silent: SilentRemote
) -> None:
    data = tmp_path / "data"
    token = init(data, silent.url, "git_timeout = 8.0", "reconcile_wait = 0.5")
    proc = Proc(data, tmp_path / "server.log")
    try:
        assert proc.start_seconds < 1, f"/healthz answered {proc.start_seconds:.1f} s after start"
        started = time.monotonic()
        assert httpx.get(f"{proc.base}/healthz", timeout=1).status_code == 200
        assert time.monotonic() - started < 1
        ready = httpx.get(f"{proc.base}/readyz", timeout=BOUND)
        assert ready.status_code == 503
        assert "git" in ready.json()["failing"]
        assert "fetch" in ready.json()["checks"]["git"]

        device = enroll_within_bound(proc.base, token, "dev-1")
        with httpx.Client(base_url=proc.base, timeout=BOUND) as client:
            # Nothing is deployed yet: a clear answer now, not a hang.
            assert device.manifest(client).status_code == 404

        reconcile_within_bound(proc.base, token)
        shown = kernex_status(proc, token)
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert "fetch" in shown.stdout
        assert "ok," not in shown.stdout.split("reconcile", 1)[1].splitlines()[0]

        # After git_timeout the fetch is stopped and the failure is recorded.
        def server_status() -> Any:
            return httpx.get(
                f"{proc.base}/v1/admin/status", headers=admin(token), timeout=BOUND
            ).json()

        status = wait_for(
            "the fetch failure to be recorded",
            lambda: (s := server_status())["git"]["last_error"] and s,
            30,
        )
        assert "took over 8 s and was stopped" in status["git"]["last_error"]
        metrics = httpx.get(f"{proc.base}/metrics", timeout=BOUND).text
        assert "kernex_git_fetch_failures_total" in metrics
        failures = [
            line for line in metrics.splitlines()
            if line.startswith("kernex_git_fetch_failures_total ")
        ]  # fmt: skip
        assert failures
        assert float(failures[0].split()[1]) >= 1
    finally:
        proc.stop()


def test_a_silent_remote_after_a_good_fetch_keeps_serving_the_deployed_fleet(
    tmp_path: Path, silent: SilentRemote
) -> None:
    origin = FleetRepo(tmp_path / "origin")
    data = tmp_path / "data"
    token = init(data, f"file://{origin.path}")
    first = Proc(data, tmp_path / "server.log")
    try:
        deployed = httpx.get(f"{first.base}/v1/admin/status", headers=admin(token)).json()
        assert deployed["revision"]["deployed"] == origin.head()
        assert deployed["git"]["last_success_at"] is not None
    finally:
        first.stop()

    set_repo(data, silent.url, "reconcile_wait = 0.5")  # the Git host now hangs
    proc = Proc(data, tmp_path / "server.log")
    try:
        assert proc.start_seconds < 1, f"/healthz answered {proc.start_seconds:.1f} s after start"
        device = enroll_within_bound(proc.base, token, "dev-2")
        key = keys.load_private_key_pem((data / "keys" / "manifest.key").read_bytes())
        public = key.public_key()
        with httpx.Client(base_url=proc.base, timeout=BOUND) as client:
            got = device.manifest(client)
            assert got.status_code == 200, got.text
        verifier = ManifestVerifier("dev-2", {keys.fingerprint(public): public})
        assert verifier.verify(got.content, time.time()).revision == origin.head()

        reconcile_within_bound(proc.base, token)
        shown = kernex_status(proc, token)
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert "fetch" in shown.stdout
        status = httpx.get(f"{proc.base}/v1/admin/status", headers=admin(token)).json()
        assert status["git"]["running_since"] is not None
        assert status["revision"]["deployed"] == origin.head()
    finally:
        proc.stop()
