"""Commit -> every device healthy, for a config change and for a 1 MB bundle change.

Starts a real server (`kernex server init` + `kernex server run`, SQLite) on a free
127.0.0.1 port, N simulated devices (the real agent code, in-process
hooks) spread over one worker process per core (``--workers``), then:

1. commits a config-only change (kernex.yaml defaults), asks the server to reconcile (as
   a push webhook would) and measures, per device, commit -> healthy report on that commit;
2. pushes a 1 MB bundle (`kernex bundle push`), deploys it to every device as a commit and
   measures the same.

Goals on a 2-core machine with 1,000 devices: config p100 <= 2 s, bundle p100 <= 5 s. The
figures are printed even when they miss, with the ratio to the goal.

It also prints the CPU seconds each change cost the server, the device processes and the
bench itself: with every part on the same cores, total / cores bounds p100 from below.

With ``--servers N`` it measures the config change on PostgreSQL (``--database-url``,
default ``$KERNEX_TEST_DATABASE_URL``; a schema of its own per run, dropped after), first
with one server and then with N server processes on the same schema, the devices dealt
over them in turn; the server that deploys is the first, the others learn of it through
the database (docs/server.md, "Several servers"). Both runs print side by side, with
each server's CPU seconds.

    python bench/converge.py [--devices 1000] [--workers N]
    python bench/converge.py --servers 2 [--devices 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from kernex_agent.simulate import percentile
from kernex_cli.demo import HEALTH_OK, SERVER_SETTINGS, Stage, prepare_fleet_repo, write_bundle_dir
from kernex_cli.fleet_edit import set_value
from kernex_cli.localserver import LocalServer

GOALS = {"config": 2.0, "bundle": 5.0}  # seconds, p100 for 1,000 devices


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of the server, the device processes and this one, over one change."""

    def __init__(self, stage: Stage) -> None:
        assert stage.server is not None
        assert stage.server.proc is not None
        assert stage.fleet is not None
        self.parts = {
            "server": [stage.server.proc.pid],
            "devices": [p for p in stage.fleet.pids() if p != os.getpid()],
            "bench": [os.getpid()],
        }
        self.start = self.read()

    def read(self) -> dict[str, float]:
        return {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.parts.items()}

    def report(self, goal: float) -> None:
        used = {k: v - self.start[k] for k, v in self.read().items()}
        cores = os.cpu_count() or 1
        total = sum(used.values())
        print(
            "         cpu  " + "  ".join(f"{k}={v:.1f}s" for k, v in used.items())
            + f"  total={total:.1f}s  vs {cores} cores x goal={cores * goal:g}s"
            f"  -> p100 >= {total / cores:.1f}s on this machine",
            flush=True,
        )  # fmt: skip


def report(what: str, times: list[float], goal: float) -> None:
    p50, p90, p100 = (percentile(times, p) for p in (50, 90, 100))
    print(
        f"{what:<8} devices={len(times)}  p50={p50:.2f}s  p90={p90:.2f}s  p100={p100:.2f}s"
        f"  goal p100<={goal:g}s  ratio={p100 / goal:.2f}  {'OK' if p100 <= goal else 'MISS'}",
        flush=True,
    )


async def commit_and_measure(stage: Stage, paths: list[str], message: str) -> list[float]:
    assert stage.repo is not None
    assert stage.fleet is not None
    commit = stage.repo.commit(paths, message)
    committed = time.time()
    await stage.reconcile()
    await stage.wait_for(
        lambda r: r.healthy_at(commit) is not None,
        since=committed,
        timeout=120,
        what=f"report healthy on {commit[:12]}",
    )
    return [(r.healthy_at(commit) or 0.0) - committed for r in stage.fleet.records.values()]


async def main(devices: int, workers: int) -> None:
    logging.getLogger("kernex.agent").addHandler(logging.NullHandler())
    logging.getLogger("kernex.agent").propagate = False
    root = Path(tempfile.mkdtemp(prefix="kernex-converge-"))
    stage = Stage(root, devices=devices, fleet_settings={"behaviour": "ok", "workers": workers})
    try:
        server = await asyncio.to_thread(stage.start_server)
        print(f"server {server.base_url} pid {server.proc.pid if server.proc else '?'}")
        t0 = time.time()
        await stage.start_fleet()
        print(f"enrolled {devices} devices ({workers} worker processes) in "
              f"{time.time() - t0:.1f}s", flush=True)  # fmt: skip
        await stage.wait_for(
            lambda r: r.phase == "healthy", since=t0, timeout=300, what="become healthy"
        )
        print(f"all healthy {time.time() - t0:.1f}s after the start", flush=True)
        await asyncio.sleep(2)  # let the first reports and heartbeats settle

        path = stage.repo_path / "kernex.yaml"
        path.write_text(
            set_value(path.read_text(), ["defaults", "config", "bench", "run"], time.time(),
                      source="kernex.yaml")
        )  # fmt: skip
        meter = CpuMeter(stage)
        times = await commit_and_measure(stage, ["kernex.yaml"], "bench: config change")
        report("config", times, GOALS["config"])
        meter.report(GOALS["config"])
        await asyncio.sleep(2)

        src = write_bundle_dir(root / "build", "2.0.0", HEALTH_OK, payload=os.urandom(1 << 20))
        archive = root / "build" / "hello-2.0.0.tar.gz"
        await stage.kernex("bundle", "build", str(src), "-o", str(archive))
        await stage.kernex(
            "bundle", "push", str(archive), "--repo", str(stage.repo_path),
            "--server", server.base_url, "--token", server.admin_token,
        )  # fmt: skip
        await stage.reconcile()
        group = stage.repo_path / "groups" / "all.yaml"
        group.write_text(
            set_value(group.read_text(), ["bundles", "hello"], "2.0.0", source="groups/all.yaml")
        )
        meter = CpuMeter(stage)
        times = await commit_and_measure(
            stage, ["groups/all.yaml"], f"bench: hello 2.0.0 ({archive.stat().st_size} bytes)"
        )
        report("bundle", times, GOALS["bundle"])
        meter.report(GOALS["bundle"])
    finally:
        await stage.close()


def start_servers(stage: Stage, count: int, url: str, schema: str) -> list[LocalServer]:
    """``count`` servers on one PostgreSQL schema, from one data directory's copies."""
    stage.repo = prepare_fleet_repo(stage.repo_path)
    settings = {**SERVER_SETTINGS, "database_schema": schema}
    first = LocalServer(
        stage.root / "server-0", repo=stage.repo_path, settings=settings, database_url=url
    )
    first.init()
    servers = [first]
    for n in range(1, count):
        shutil.copytree(first.data_dir, stage.root / f"server-{n}")
        servers.append(
            LocalServer(
                stage.root / f"server-{n}",
                repo=stage.repo_path,
                database_url=url,
                admin_token=first.admin_token,
            )
        )
    for server in servers:
        server.start()
    stage.server = first
    return servers


async def shared_run(
    count: int, devices: int, workers: int, url: str
) -> tuple[int, list[float], list[float]]:
    """One config change with ``count`` servers on a fresh schema; what it measured."""
    root = Path(tempfile.mkdtemp(prefix=f"kernex-converge-{count}-"))
    more: list[str] = []
    fleet = {"behaviour": "ok", "workers": workers, "more_servers": more}
    stage = Stage(root, devices=devices, fleet_settings=fleet)
    schema = f"kx_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    servers: list[LocalServer] = []
    try:
        servers = await asyncio.to_thread(start_servers, stage, count, url, schema)
        more.extend(s.base_url for s in servers[1:])
        t0 = time.time()
        await stage.start_fleet()
        await stage.wait_for(
            lambda r: r.phase == "healthy", since=t0, timeout=600, what="become healthy"
        )
        print(f"{count} server(s): {devices} devices healthy {time.time() - t0:.1f}s after "
              "the start", flush=True)  # fmt: skip
        await asyncio.sleep(2)
        path = stage.repo_path / "kernex.yaml"
        path.write_text(
            set_value(path.read_text(), ["defaults", "config", "bench", "run"], time.time(),
                      source="kernex.yaml")
        )  # fmt: skip
        pids = [s.proc.pid for s in servers if s.proc is not None]
        before = [cpu_seconds(p) for p in pids]
        times = await commit_and_measure(stage, ["kernex.yaml"], "bench: config change")
        used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
        return count, times, used
    finally:
        await stage.close()
        for server in servers[1:]:
            server.stop()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


async def compare(count: int, devices: int, workers: int, url: str) -> None:
    logging.getLogger("kernex.agent").addHandler(logging.NullHandler())
    logging.getLogger("kernex.agent").propagate = False
    runs = [await shared_run(n, devices, workers, url) for n in sorted({1, count})]
    goal = GOALS["config"]
    print(f"config change, {devices} devices on PostgreSQL, goal p100 <= {goal:g}s")
    for count_, times, cpu in runs:
        p50, p100 = percentile(times, 50), percentile(times, 100)
        per_server = "  ".join(f"server{i}={c:.1f}s" for i, c in enumerate(cpu))
        print(
            f"  servers={count_}  p50={p50:.2f}s  p100={p100:.2f}s  ratio={p100 / goal:.2f}"
            f"  cpu {per_server}  total={sum(cpu):.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="simulator processes (default: one per core)",
    )  # fmt: skip
    parser.add_argument("--servers", type=int, default=0,
                        help="compare 1 and N servers on PostgreSQL")  # fmt: skip
    parser.add_argument("--database-url", default=os.environ.get("KERNEX_TEST_DATABASE_URL"))
    args = parser.parse_args()
    if args.servers:
        if not args.database_url:
            sys.exit("error: --servers needs PostgreSQL\n"
                     "hint: set KERNEX_TEST_DATABASE_URL or --database-url")  # fmt: skip
        asyncio.run(compare(args.servers, args.devices, args.workers, args.database_url))
    else:
        asyncio.run(main(args.devices, args.workers))
