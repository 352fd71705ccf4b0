"""Every `kernex` command, given bad input, fails with one `error:` line and a hint, exit 1
or 2, and never a traceback (docs/cli.md).

The commands are enumerated from the Typer app, so a new command is walked too; its
arguments come from ``VALUES`` by parameter name (a new name fails
``test_every_parameter_has_a_walk_value`` until it is added). Four kinds of bad input:

- a bad path: every path parameter in turn names a path under a regular file, which can be
  neither read nor created;
- a missing file: every path parameter in turn names a path that does not exist; a command
  that writes there may succeed, else it must fail cleanly;
- an unreachable server: ``--server`` is a loopback port nobody listens on;
- a bad token: one real server, a token it never issued;
- a failing server: every request is answered 500 with a plain-text body, as a crashed
  handler or a proxy in front of the server answers.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
from kit.fleet import FleetRepo
from kit.server import RunningServer, running_server
from typer.testing import CliRunner

from kernex_cli.main import app
from kernex_cli.publish import build_to_file
from kernex_core import keys

TEMPLATE_BUNDLE = Path(__file__).resolve().parents[2] / "fleet-repo-template" / "hello"

# Never run for real: they serve or loop until stopped, or run the whole demo.
LONG_RUNNING = {("server", "run"), ("agent", "run"), ("demo",)}

# Values for arguments and options, by parameter name ("<repo>" and friends are paths made
# for the walk). Options are given when required, or always when named in ALWAYS.
VALUES: dict[str, str] = {
    "ref": "app@1.1.0",
    "assignment": "app.greeting=hi",
    "key": "app.canary",
    "group": "canary",
    "device_id": "edge-1",
    "rollout_id": "1",
    "token_id": "1",
    "name": "walk",
    "role": "viewer",
    "enroll_token": "kx_not_a_token",
    "duration": "1",
    "token": "kx_not_a_token",
    "server": "<server>",
    # paths
    "directory": "<new>",
    "repo": "<repo>",
    "out": "<new>",
    "archive": "<archive>",
    "src": "<bundle-src>",
    "data_dir": "<new>",
    "root": "<new>",
    "inventory": "<inventory>",
    "sign_key": "<release-key>",
    "signature": "<new>",
    "release_key": "<new>",
    "new_key": "<release-pub>",
    "workspace": "<new>",
}
ALWAYS = {"group", "server", "token", "enroll_token", "duration", "repo"}  # given when present
# Commands that reach the server only with a flag.
SERVER_FLAGS: dict[tuple[str, ...], list[str]] = {
    ("deploy",): ["--wait"],
    ("rollback",): ["--wait"],
    ("config", "set"): ["--wait"],
    ("config", "unset"): ["--wait"],
}


@dataclass(frozen=True)
class Param:
    name: str
    is_path: bool
    required: bool
    is_argument: bool
    flag: str  # the option's long name; "" for an argument


def commands() -> dict[tuple[str, ...], list[Param]]:
    root = typer.main.get_command(app)
    found: dict[tuple[str, ...], list[Param]] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
            return
        params = []
        for p in command.params:
            if p.name in ("help",):
                continue
            annotation = str(getattr(p, "type_descriptor", None) and p.type_descriptor.annotation)
            longs = [o for o in p.opts if o.startswith("--")]
            params.append(
                Param(
                    p.name,
                    "Path" in annotation,
                    p.required,
                    p.param_type_name == "argument",
                    longs[0] if longs else "",
                )
            )
        found[path] = params

    walk(root, ())
    return found


COMMANDS = commands()
WALKED = sorted(path for path in COMMANDS if path not in LONG_RUNNING)


@dataclass
class Paths:
    repo: Path
    archive: Path
    bundle_src: Path
    inventory: Path
    release_key: Path
    base: Path
    counter: int = 0

    def new(self) -> str:
        self.counter += 1
        return str(self.base / f"new-{self.counter}")


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    base = tmp_path_factory.mktemp("walk")
    repo = FleetRepo(base / "fleet")
    built = build_to_file(TEMPLATE_BUNDLE, base / "hello-1.0.0.tar.gz")
    inventory = base / "inventory.json"
    inventory.write_text("{}\n")
    key = keys.generate_ed25519()
    release_key = base / "release.key"
    release_key.write_bytes(keys.private_key_to_pem(key))
    release_key.with_name("release.key.pub").write_text(keys.public_key_to_pem(key.public_key()))
    return Paths(repo.path, built.path, TEMPLATE_BUNDLE, inventory, release_key, base)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, paths: Paths) -> Iterator[RunningServer]:
    work = tmp_path_factory.mktemp("walk-server")
    with running_server(work, FleetRepo(work / "fleet"), str(work / "fleet"), {}) as server:
        yield server


@pytest.fixture(scope="module")
def closed_port() -> Iterator[str]:
    """A loopback URL whose port refuses connections (bound, never listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERNEX_SERVER", raising=False)
    monkeypatch.delenv("KERNEX_TOKEN", raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def argv(
    path: tuple[str, ...],
    paths: Paths,
    *,
    server: str,
    override: dict[str, str] | None = None,
) -> list[str]:
    """The command with a value for every argument and required option; ``override`` maps a
    parameter name to the value to use instead."""
    override = override or {}
    out = list(path)
    for p in COMMANDS[path]:
        if not (p.required or p.is_argument or p.name in ALWAYS or p.name in override):
            continue
        value = override.get(p.name) or {
            "<server>": server,
            "<repo>": str(paths.repo),
            "<archive>": str(paths.archive),
            "<bundle-src>": str(paths.bundle_src),
            "<inventory>": str(paths.inventory),
            "<release-key>": str(paths.release_key),
            "<release-pub>": str(paths.release_key) + ".pub",
        }.get(VALUES[p.name], VALUES[p.name])
        if value == "<new>":
            value = paths.new()
        out += [value] if p.is_argument else [p.flag, value]
    return out


def assert_clean_failure(args: list[str], result: Any, *, may_succeed: bool = False) -> None:
    shown = f"`kernex {' '.join(args)}` gave exit {result.exit_code}:\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{shown}\nexception: {result.exception!r}"
    )
    assert "Traceback" not in result.output, shown
    if may_succeed and result.exit_code == 0:
        return
    assert result.exit_code in (1, 2), shown
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.lower().startswith("error:")]
    assert errors, f"no `error:` line on stderr; {shown}"
    hinted = any(line.startswith("hint:") or line.startswith("Try '") for line in lines)
    assert hinted, f"no hint on stderr; {shown}"


def test_every_parameter_has_a_walk_value() -> None:
    missing = {
        f"{' '.join(path)}: {p.name}"
        for path in WALKED
        for p in COMMANDS[path]
        if (p.required or p.is_argument) and p.name not in VALUES
    }
    assert not missing, "add walk values for: " + ", ".join(sorted(missing))


def bad_path_cases() -> list[tuple[tuple[str, ...], str]]:
    return [(path, p.name) for path in WALKED for p in COMMANDS[path] if p.is_path]


@pytest.mark.parametrize(("path", "param"), bad_path_cases(), ids=lambda v: str(v))
def test_a_path_under_a_regular_file(
    path: tuple[str, ...], param: str, paths: Paths, closed_port: str
) -> None:
    blocker = paths.base / "a-regular-file"
    blocker.write_text("not a directory\n")
    args = argv(path, paths, server=closed_port, override={param: str(blocker / "below")})
    assert_clean_failure(args, CliRunner().invoke(app, args))


@pytest.mark.parametrize(("path", "param"), bad_path_cases(), ids=lambda v: str(v))
def test_a_missing_path(path: tuple[str, ...], param: str, paths: Paths, closed_port: str) -> None:
    missing = Path(paths.new()) / "missing-file"
    args = argv(path, paths, server=closed_port, override={param: str(missing)})
    assert_clean_failure(args, CliRunner().invoke(app, args), may_succeed=True)


def server_commands() -> list[tuple[str, ...]]:
    return [path for path in WALKED if any(p.name == "server" for p in COMMANDS[path])]


@pytest.mark.parametrize("path", server_commands(), ids=" ".join)
def test_an_unreachable_server(path: tuple[str, ...], paths: Paths, closed_port: str) -> None:
    args = [*argv(path, paths, server=closed_port), *SERVER_FLAGS.get(path, [])]
    result = CliRunner().invoke(app, args)
    assert_clean_failure(args, result)
    assert "127.0.0.1" in result.stderr


def token_commands() -> list[tuple[str, ...]]:
    return [path for path in server_commands() if any(p.name == "token" for p in COMMANDS[path])]


@pytest.mark.parametrize("path", token_commands(), ids=" ".join)
def test_a_bad_token(path: tuple[str, ...], paths: Paths, live: RunningServer) -> None:
    args = [*argv(path, paths, server=live.base), *SERVER_FLAGS.get(path, [])]
    assert_clean_failure(args, CliRunner().invoke(app, args))


class _Failing(BaseHTTPRequestHandler):
    def _fail(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"Internal Server Error"
        self.send_response(500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _fail

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def failing_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("path", server_commands(), ids=" ".join)
def test_a_failing_server(path: tuple[str, ...], paths: Paths, failing_server: str) -> None:
    args = [*argv(path, paths, server=failing_server), *SERVER_FLAGS.get(path, [])]
    result = CliRunner().invoke(app, args)
    assert_clean_failure(args, result)
    assert "500" in result.stderr
