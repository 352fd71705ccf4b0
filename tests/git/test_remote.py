"""Fetching in the server's locked-down environment: mirrors, config, prompts, time limits."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kit.git import git, make_repo, quiet_home  # noqa: F401 - autouse

from kernex_git import (
    GitCommandError,
    GitEnv,
    GitError,
    GitTimeoutError,
    NetworkLimits,
    fetch_branch,
    is_remote,
)

SECRET = "ghp_s3cretT0ken"


def test_is_remote() -> None:
    assert is_remote("https://host/fleet.git")
    assert is_remote("git@host:fleet.git")
    assert is_remote("file:///srv/fleet")
    assert not is_remote("/srv/fleet")
    assert not is_remote("./fleet")


def test_a_mirror_follows_the_branch_and_never_stores_the_url(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    first = make_repo(origin, {"kernex.yaml": "name: one\n"})
    mirror = tmp_path / "data" / "fleet.git"
    url = f"file://{origin}"
    repo = fetch_branch(url, "main", mirror, env=GitEnv.server())
    assert repo.resolve("refs/heads/main") == first
    second = make_repo(origin, {"kernex.yaml": "name: two\n"})
    fetch_branch(url, "main", mirror, env=GitEnv.server())
    assert repo.resolve("refs/heads/main") == second
    git(origin, "reset", "-q", "--hard", first)  # a force-push on the remote
    rewritten = make_repo(origin, {"kernex.yaml": "name: rewritten\n"})
    fetch_branch(url, "main", mirror, env=GitEnv.server())
    assert repo.resolve("refs/heads/main") == rewritten
    assert not repo.is_ancestor(second, rewritten)
    assert str(origin) not in (mirror / "config").read_text()


def test_the_server_ignores_the_users_git_config_and_reads_its_own(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    sha = make_repo(origin, {"kernex.yaml": "name: one\n"})
    # The server user's ~/.gitconfig (HOME is tmp_path/home, see kit.git.quiet_home) would
    # send every file:// fetch elsewhere.
    (tmp_path / "home" / ".gitconfig").write_text(
        f'[url "file://{tmp_path}/elsewhere/"]\n\tinsteadOf = file://{tmp_path}/\n'
    )
    repo = fetch_branch(f"file://{origin}", "main", tmp_path / "m1", env=GitEnv.server())
    assert repo.resolve("main") == sha
    # Kernex's own gitconfig (in the data directory) is read: here it maps a URL.
    own = tmp_path / "gitconfig"
    own.write_text(f'[url "file://{origin}"]\n\tinsteadOf = https://fleet.example/fleet.git\n')
    repo = fetch_branch(
        "https://fleet.example/fleet.git", "main", tmp_path / "m2", env=GitEnv.server(own)
    )
    assert repo.resolve("main") == sha


def test_transports_that_run_commands_stay_off(tmp_path: Path) -> None:
    own = tmp_path / "gitconfig"
    own.write_text('[protocol "ext"]\n\tallow = always\n')
    marker = tmp_path / "pwned"
    with pytest.raises(GitError):
        fetch_branch(f"ext::sh -c touch% {marker}", "main", tmp_path / "m", env=GitEnv.server(own))
    assert not marker.exists()


class _AskForPassword(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="fleet"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def password_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AskForPassword)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("userinfo", ["", "deploy:" + SECRET + "@", SECRET + "@"])
def test_a_refused_fetch_never_prompts_and_never_shows_the_token(
    tmp_path: Path, password_server: str, userinfo: str
) -> None:
    url = f"http://{userinfo}{password_server}/fleet.git"
    started = time.monotonic()
    with pytest.raises(GitCommandError) as caught:
        fetch_branch(url, "main", tmp_path / "m", env=GitEnv.server())
    assert time.monotonic() - started < 30  # no prompt waited for an answer
    exc = caught.value
    texts = [exc.message, str(exc), exc.stderr, exc.hint or "", repr(exc.args)]
    assert all(SECRET not in text for text in texts)
    assert exc.message.startswith(f"cannot fetch http://{'***@' if userinfo else ''}")
    assert "credential" in (exc.hint or "")
    assert not any(
        SECRET in p.read_text("latin-1") for p in (tmp_path / "m").rglob("*") if p.is_file()
    )


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_stalled_fetch_hits_the_low_speed_limit(tmp_path: Path, silent_server: str) -> None:
    limits = NetworkLimits(timeout=60, low_speed_limit=1000, low_speed_time=2)
    started = time.monotonic()
    with pytest.raises(GitCommandError) as caught:
        fetch_branch(
            f"http://{silent_server}/fleet.git",
            "main",
            tmp_path / "m",
            env=GitEnv.server(limits=limits),
        )
    assert time.monotonic() - started < 30
    assert "too slow" in caught.value.message.lower()


def test_a_fetch_past_its_time_limit_is_killed_with_its_helpers(
    tmp_path: Path, silent_server: str
) -> None:
    limits = NetworkLimits(timeout=1.5, low_speed_limit=1, low_speed_time=600)
    started = time.monotonic()
    with pytest.raises(GitTimeoutError) as caught:
        fetch_branch(
            f"http://u:{SECRET}@{silent_server}/fleet.git",
            "main",
            tmp_path / "m",
            env=GitEnv.server(limits=limits),
        )
    assert time.monotonic() - started < 15
    assert "took over 1.5 s" in caught.value.message
    assert SECRET not in caught.value.message
    assert _processes_naming(SECRET) == []  # git-remote-http (given the URL) is gone too


def _processes_naming(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if text in argv:
            found.append(argv.replace("\0", " "))
    return found


def test_a_mirror_made_by_git_clone_forgets_the_stored_url(tmp_path: Path) -> None:
    """Older servers cloned the mirror, which wrote the URL (token included) to its config."""
    origin = tmp_path / "origin"
    sha = make_repo(origin, {"kernex.yaml": "name: one\n"})
    url = f"file://{origin}"
    mirror = tmp_path / "fleet.git"
    git(tmp_path, "clone", "-q", "--bare", url, str(mirror))
    assert str(origin) in (mirror / "config").read_text()
    repo = fetch_branch(url, "main", mirror, env=GitEnv.server())
    assert repo.resolve("refs/heads/main") == sha
    assert str(origin) not in (mirror / "config").read_text()
