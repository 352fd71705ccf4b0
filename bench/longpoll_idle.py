"""Idle long polls cost no CPU; a commit reaches every waiting device quickly.

Starts a real server (`kernex server run`, SQLite) on loopback, enrolls N devices, opens
N long polls (wait=60), measures the server's CPU time while they idle, then commits a
change and measures how long until every poll has answered 200.

    python bench/longpoll_idle.py [--devices N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kit.device import SimDevice
from kit.fleet import FleetRepo, kernex_yaml

KERNEX = [sys.executable, "-c", "from kernex_cli.main import main; main()"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(count: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kernex-bench-"))
    repo = FleetRepo(tmp / "fleet")
    env = {**os.environ, "KERNEX_DATA_DIR": str(tmp / "data")}
    env.pop("KERNEX_DATABASE_URL", None)
    out = subprocess.run(
        [*KERNEX, "server", "init", "--repo", str(repo.path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(out.stdout)["admin_token"]
    with (tmp / "data" / "server.toml").open("a") as fh:
        fh.write("poll_interval = 0.5\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [*KERNEX, "server", "run", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base) as client:
            enroll_token = client.post("/v1/admin/enrollment-tokens", json={}, headers=auth).json()[
                "token"
            ]
            devices = [SimDevice(f"dev-{i:05d}") for i in range(count)]
            for device in devices:
                device.enroll(client, token=enroll_token).raise_for_status()
            etags = [device.manifest(client).headers["etag"] for device in devices]
        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
        async with httpx.AsyncClient(base_url=base, timeout=90, limits=limits) as aclient:

            async def poll(device: SimDevice, etag: str) -> tuple[int, float]:
                path = f"/v1/devices/{device.device_id}/manifest"
                headers = {**device.headers("GET", path), "If-None-Match": etag}
                response = await aclient.get(path, params={"wait": "60"}, headers=headers)
                return response.status_code, time.monotonic()

            tasks = [asyncio.create_task(poll(d, e)) for d, e in zip(devices, etags, strict=True)]
            await asyncio.sleep(3)  # all polls open and parked
            before = cpu_seconds(proc.pid)
            await asyncio.sleep(10)
            idle = cpu_seconds(proc.pid) - before
            committed = time.monotonic()
            busy_before = cpu_seconds(proc.pid)
            repo.write("kernex.yaml", kernex_yaml(greeting="bench"))
            repo.commit("bench change")
            results = await asyncio.gather(*tasks)
            busy = cpu_seconds(proc.pid) - busy_before
        codes = {code for code, _ in results}
        times = sorted(t - committed for _, t in results)
        last = times[-1]
        print(
            f"server CPU from commit to last answer: {busy:.2f} s (the rest of the wall "
            "time is this one-process httpx client reading a thousand answers)"
        )
        print(f"first answer {times[0]:.2f} s, median {times[len(times) // 2]:.2f} s")
        print(
            f"{count} idle long polls: server CPU {idle:.3f} s over 10 s "
            f"({idle / 10 * 100:.1f}% of one core)"
        )
        print(
            f"commit -> all {count} polls answered {sorted(codes)} in {last:.2f} s "
            f"(poll_interval 0.5 s; limit named in issue 3: 1 s)"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=500, help="long polls to open")
    asyncio.run(main(parser.parse_args().devices))
