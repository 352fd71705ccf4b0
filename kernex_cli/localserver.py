"""A Kernex server as a child process on 127.0.0.1, for the demo, benchmarks and tests.

It runs exactly what an operator runs (``kernex server init`` then ``kernex server run``,
SQLite in the data directory unless ``database_url`` names another database) on a free
loopback port::

    with LocalServer(data_dir, repo=fleet_dir) as server:
        server.base_url, server.admin_token
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

from kernex_core.errors import KernexError

KERNEX = (sys.executable, "-m", "kernex_cli")


class LocalServerError(KernexError):
    """The local server could not be set up or did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    def __init__(
        self,
        data_dir: Path,
        *,
        repo: Path,
        settings: Mapping[str, float | str] | None = None,
        log_level: str = "warning",
        start_timeout: float = 60.0,  # seconds for init + first /healthz
        port: int = 0,  # 0: a free one, chosen at the first start
        database_url: str = "",  # empty: SQLite in the data directory
        admin_token: str = "",  # set: the data directory is ready, `init` is not run
    ) -> None:
        self.data_dir = Path(data_dir)
        self.repo = Path(repo)
        self.settings = dict(settings or {})
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.port = port
        self.database_url = database_url
        self.admin_token = admin_token
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "KERNEX_DATA_DIR": str(self.data_dir)}
        env.pop("KERNEX_DATABASE_URL", None)  # SQLite unless told otherwise
        if self.database_url:
            env["KERNEX_DATABASE_URL"] = self.database_url
        return env

    def init(self) -> None:
        if self.database_url and "database_schema" in self.settings:
            # the schema must be known before `init` migrates and makes the first token
            self.data_dir.mkdir(parents=True, exist_ok=True)
            schema = _toml(self.settings["database_schema"])
            (self.data_dir / "server.toml").write_text(
                f"repo = {_toml(str(self.repo))}\ndatabase_schema = {schema}\n"
            )
        done = subprocess.run(
            [*KERNEX, "server", "init", "--repo", str(self.repo), "--json"],
            env=self._env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise LocalServerError(f"`kernex server init` failed: {done.stderr.strip()}")
        self.admin_token = json.loads(done.stdout)["admin_token"] or ""
        written = {"database_schema"} if self.database_url else set()
        rest = {k: v for k, v in self.settings.items() if k not in written}
        if rest:
            lines = "".join(f"{k} = {_toml(v)}\n" for k, v in sorted(rest.items()))
            with (self.data_dir / "server.toml").open("a") as fh:
                fh.write(lines)

    def start(self) -> None:
        if not self.admin_token:
            self.init()
        self.port = self.port or free_port()
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *KERNEX,
                "server",
                "run",
                "--port",
                str(self.port),
                "--log-level",
                self.log_level,
            ],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise LocalServerError(f"the server did not start:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _toml(value: float | str) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return str(value)
