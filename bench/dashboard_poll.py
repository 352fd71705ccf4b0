"""What open dashboards cost the server: N browsers polling /ui/ live data at F devices.

Each open dashboard page polls one small JSON endpoint every 3 s (``ui.js``): the
overview ``/ui/api/status``, the devices page ``/ui/api/devices``. This seeds a SQLite
server with ``--devices`` accepted devices that have reported, logs in as a dashboard
user, and times ticks of ``--dashboards`` polls of each endpoint (the app in-process:
handler, database and JSON, no network). The live data is shared for 2 s, so within a
tick the first poll computes it and the others are served from memory. Cost = time of
one tick / 3 s: the share of one core the open dashboards keep busy.

    python bench/dashboard_poll.py [--devices 1000] [--dashboards 10] [--rounds 50]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

from kernex_core import keys
from kernex_server.accounts import Accounts
from kernex_server.app import create_app
from kernex_server.models import Device, DeviceStatus
from kernex_server.settings import Settings

POLL_SECONDS = 3.0
PASSWORD = "bench password 1"  # noqa: S105 - a throwaway user in a temp database


def seed(app: object, devices: int) -> None:
    kx = app.state.kx  # type: ignore[attr-defined]
    now = time.time()
    with kx.store.sessions.begin() as s:
        for i in range(devices):
            device_id = f"edge-{i:05d}"
            s.add(
                Device(
                    id=device_id, public_key="-", fingerprint=f"fp-{i}", algorithm="ed25519",
                    labels={"ring": "stable" if i % 10 else "canary", "site": f"s{i % 7}"},
                    state="accepted", agent_version="1", enrolled_at=now, updated_at=now,
                    last_seen=now,
                )
            )  # fmt: skip
            s.add(
                DeviceStatus(
                    device_id=device_id, phase="healthy" if i % 50 else "failed", serial=1,
                    bundles={"hello": "1.0.0"}, error=None if i % 50 else "health check failed",
                    agent_version="1", received_at=now,
                )
            )  # fmt: skip
    Accounts(kx.store.sessions).add("bench", "viewer", PASSWORD, now=now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--dashboards", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_mapping(
            {
                "data_dir": Path(tmp) / "data",
                "database_url": f"sqlite:///{tmp}/bench.db",
                "token_rate": 0,
            }
        )
        app = create_app(settings, manifest_key=keys.generate_ed25519(), background=False)
        with TestClient(app) as client:
            seed(app, args.devices)
            form = client.get("/ui/login").text
            token = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
            client.post("/ui/login", data={"name": "bench", "password": PASSWORD, "csrf": token})
            print(f"{args.devices} devices, {args.dashboards} dashboards polling every "
                  f"{POLL_SECONDS:.0f} s")  # fmt: skip
            ui = app.state.ui
            for path in ("/ui/api/status", "/ui/api/devices"):
                assert client.get(path).status_code == 200, path
                ticks, polls = [], []
                for _ in range(args.rounds):  # one tick: every dashboard polls once
                    ui.live.clear()  # ticks are 3 s apart: older live data has expired
                    started = time.perf_counter()
                    for _ in range(args.dashboards):
                        begun = time.perf_counter()
                        client.get(path)
                        polls.append(time.perf_counter() - begun)
                    ticks.append(time.perf_counter() - started)
                share = statistics.mean(ticks) / POLL_SECONDS
                print(f"  {path:<18} first poll of a tick {max(polls) * 1000:6.1f} ms, "
                      f"median poll {statistics.median(polls) * 1000:6.1f} ms, a tick of "
                      f"{args.dashboards} {statistics.mean(ticks) * 1000:7.1f} ms "
                      f"-> {share * 100:5.1f}% of one core")  # fmt: skip


if __name__ == "__main__":
    main()
