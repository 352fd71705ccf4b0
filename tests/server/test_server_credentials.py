"""A token in the fleet repository URL never leaves the server: not in /readyz (public),
not in the admin status (viewers), not in logs, metrics or error answers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kernex_server.errors import ServerSetupError
from kernex_server.setup import init_data_dir

SECRET = "ghp_s3cretT0kenForTheFleet"


class _Refuse(BaseHTTPRequestHandler):
    """A Git host that refuses the credentials (git echoes the URL in its error)."""

    def do_GET(self) -> None:
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def git_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("userinfo", [f"deploy:{SECRET}", SECRET])
def test_a_token_in_the_repo_url_reaches_no_response_and_no_log(
    start_server: Any, git_host: str, userinfo: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://{userinfo}@{git_host}/fleet.git"
    server = start_server(repo=url)
    viewer = server.kx.store.create_api_token("viewer-1", "viewer", now=time.time())

    ready = server.client.get("/readyz")
    assert ready.status_code == 503
    assert "git" in ready.json()["failing"]
    assert "http://***@" in ready.json()["checks"]["git"]

    status = server.client.get("/v1/admin/status", headers={"Authorization": f"Bearer {viewer}"})
    assert status.status_code == 200
    assert status.json()["revision"]["last_result"] == "error"

    forced = server.client.post("/v1/admin/reconcile", headers=server.auth)
    assert forced.status_code >= 500
    assert "cannot fetch http://***@" in forced.json()["error"]

    metrics = server.client.get("/metrics")
    for text in (ready.text, status.text, forced.text, metrics.text, caplog.text):
        assert SECRET not in text
    assert "cannot fetch" in caplog.text  # the failure is logged, without the token


def test_server_init_names_a_credentialed_repo_without_its_token(tmp_path: Path) -> None:
    url = f"https://deploy:{SECRET}@git.example/fleet.git"
    init_data_dir(tmp_path / "data", repo=url, branch="main", env={})
    with pytest.raises(ServerSetupError) as caught:
        init_data_dir(tmp_path / "data", repo="/srv/other", branch="main", env={})
    assert "https://***@git.example/fleet.git" in caught.value.message
    assert SECRET not in caught.value.message
