"""Status report throughput of a real server: reports acknowledged (204) per second.

Starts a real server (`kernex server init` + `kernex server run`, SQLite) on a free
127.0.0.1 port, enrolls ``--devices`` devices, then each device posts signed status
reports back to back for ``--seconds`` (all devices at once, one connection each).
Prints acknowledged reports per second, the latency of a report (request -> 204) at
p50/p99, and the server's CPU seconds. A 204 means the report is committed (group
commit, docs/server.md), so this is the rate at which reports reach the database.

    python bench/status_reports.py [--devices 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from kernex_agent.simulate import percentile
from kernex_cli.demo import prepare_fleet_repo
from kernex_cli.localserver import LocalServer
from kernex_core import httpsig, keys
from kernex_core.protocol import ENROLL_PATH, STATUS_PATH


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Device:
    def __init__(self, n: int) -> None:
        self.id = f"bench-{n:04d}"
        self.key = keys.generate_ed25519()

    def signed(self, method: str, path: str, body: bytes) -> dict[str, str]:
        headers = httpsig.sign_request(
            method, path, body, self.key, self.id, created=int(time.time())
        )
        return {**headers, "Content-Type": "application/json"}


async def enroll(client: httpx.AsyncClient, device: Device, token: str) -> None:
    body = json.dumps(
        {
            "device_id": device.id,
            "public_key": keys.public_key_to_pem(device.key.public_key()),
            "labels": {},
            "agent_version": "bench",
            "enrollment_token": token,
        }
    ).encode()
    answer = await client.post(
        ENROLL_PATH, content=body, headers=device.signed("POST", ENROLL_PATH, body)
    )
    answer.raise_for_status()


async def report_loop(
    client: httpx.AsyncClient,
    device: Device,
    until: float,
    latencies: list[float],
    failures: list[int],
) -> None:
    path = STATUS_PATH.format(device_id=device.id)
    n = 0
    while time.monotonic() < until:
        n += 1
        body = json.dumps({"phase": "healthy", "serial": 1, "log_tail": str(n)}).encode()
        started = time.monotonic()
        answer = await client.post(path, content=body, headers=device.signed("POST", path, body))
        if answer.status_code == 204:
            latencies.append(time.monotonic() - started)
        else:
            failures.append(answer.status_code)


async def main(devices: int, seconds: float, flush_interval: float | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="kernex-status-bench-"))
    prepare_fleet_repo(root / "fleet")
    settings = {"device_rate": 0.0, "enroll_rate": 0.0, "poll_interval": 3600.0}
    if flush_interval is not None:
        settings["status_flush_interval"] = flush_interval
    server = LocalServer(root / "server", repo=root / "fleet", settings=settings)
    await asyncio.to_thread(server.start)
    try:
        assert server.proc is not None
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        fleet = [Device(n) for n in range(devices)]
        limits = httpx.Limits(max_connections=devices, max_keepalive_connections=devices)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
            made = await client.post(
                "/v1/admin/enrollment-tokens", json={"max_uses": devices}, headers=admin
            )
            made.raise_for_status()
            for device in fleet:
                await enroll(client, device, made.json()["token"])
            latencies: list[float] = []
            failures: list[int] = []
            cpu_before = cpu_seconds(server.proc.pid)
            started = time.monotonic()
            until = started + seconds
            await asyncio.gather(
                *(report_loop(client, d, until, latencies, failures) for d in fleet)
            )
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(server.proc.pid) - cpu_before
        p50, p99 = (percentile(latencies, p) for p in (50, 99))
        print(
            f"status  devices={devices}  acknowledged={len(latencies)}  "
            f"rate={len(latencies) / elapsed:.0f}/s  p50={p50 * 1000:.1f}ms  "
            f"p99={p99 * 1000:.1f}ms  failed={len(failures)}  server_cpu={cpu:.1f}s  "
            f"cpu_per_report={cpu / max(1, len(latencies)) * 1e6:.0f}us",
            flush=True,
        )
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--status-flush-interval", type=float, default=None, help="server setting to try"
    )
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.seconds, args.status_flush_interval))
