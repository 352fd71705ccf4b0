"""A fetch that does not end holds nothing else: start-up, enrollment, admin reconcile,
/readyz, /metrics and the admin status go on, and say that the fetch runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit.apicheck import check_answers
from kit.device import SimDevice
from kit.fleet import FleetRepo
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from kernex_core import keys
from kernex_server.app import create_app
from kernex_server.git_source import GitFleetSource


class StuckSource(GitFleetSource):
    """The fleet repository read in place, whose fetch hangs until released."""

    def __init__(self, path: Path, clone_dir: Path) -> None:
        super().__init__(str(path), "main", clone_dir=clone_dir)
        self.release = threading.Event()

    def sync(self) -> None:
        assert self.release.wait(60), "the test never released the fetch"
        super().sync()


def metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no {name} in /metrics")


@pytest.fixture
def stuck(
    tmp_path: Path, make_settings: Any, fleet_repo: FleetRepo, manifest_key: keys.PrivateKey
) -> Iterator[tuple[TestClient, StuckSource, dict[str, str]]]:
    source = StuckSource(fleet_repo.path, tmp_path / "clone")
    settings = make_settings(reconcile_wait=0.2, poll_interval=0.5)
    app = create_app(settings, manifest_key=manifest_key, source=source, background=False)
    client = TestClient(app)
    check_answers(client)
    started = time.monotonic()
    with client:
        assert time.monotonic() - started < 5  # start-up did not wait for the fetch
        token = app.state.kx.store.create_api_token("t", "admin", now=time.time())
        yield client, source, {"Authorization": f"Bearer {token}"}
        source.release.set()


def test_a_hanging_fetch_holds_nothing_and_shows_everywhere(
    stuck: tuple[TestClient, StuckSource, dict[str, str]], fleet_repo: FleetRepo
) -> None:
    client, source, auth = stuck
    # The repository read in place was deployed at start, without the fetch.
    status = client.get("/v1/admin/status", headers=auth).json()
    assert status["revision"]["deployed"] == fleet_repo.head()

    answer = client.post("/v1/admin/reconcile", headers=auth)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["fetching"] is True
    assert body["git"]["running_since"] is not None
    assert "background" in body["hint"]

    made = client.post("/v1/admin/enrollment-tokens", json={"max_uses": 1}, headers=auth)
    device = SimDevice("dev-1")
    enrolled = device.enroll(client, token=made.json()["token"])
    assert enrolled.status_code == 201, enrolled.text
    assert device.manifest(client).status_code == 200

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["git"]
    assert "a fetch has been running for" in ready.json()["checks"]["git"]
    status = client.get("/v1/admin/status", headers=auth).json()
    assert status["revision"]["last_result"] == "error"
    assert "a fetch has been running" in status["revision"]["last_error"]
    assert status["git"]["problem"] == status["revision"]["last_error"]
    assert status["git"]["last_success_at"] is None
    metrics = client.get("/metrics").text
    assert metric(metrics, "kernex_git_fetch_running_seconds") > 0
    assert metric(metrics, "kernex_git_fetch_last_success_timestamp_seconds") == 0

    source.release.set()
    done = client.post("/v1/admin/reconcile", headers=auth)
    assert done.status_code == 200, done.text
    assert done.json()["fetching"] is False
    assert client.get("/readyz").status_code == 200
    status = client.get("/v1/admin/status", headers=auth).json()
    assert status["revision"]["last_result"] == "ok"
    assert status["git"]["problem"] is None
    assert status["git"]["last_success_at"] is not None
    metrics = client.get("/metrics").text
    assert metric(metrics, "kernex_git_fetch_running_seconds") == 0
    assert metric(metrics, "kernex_git_fetch_seconds_count") >= 1
    assert metric(metrics, "kernex_git_fetch_last_success_timestamp_seconds") > 0
