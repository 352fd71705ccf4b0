"""Status reports are written in batches (group commit): a 204 means the report is in the
database, a batch that cannot be written is answered 503, none is lost or reordered."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kit.device import SimDevice
from sqlalchemy.exc import OperationalError

from kernex_core.protocol import StatusReport
from kernex_server.status import StatusNotRecorded, StatusRecorder


def enrolled(server: Any, *names: str) -> list[SimDevice]:
    token = server.enrollment_token()
    devices = [SimDevice(name) for name in names]
    for device in devices:
        assert device.enroll(server.client, token=token).status_code in {200, 201}
    return devices


def report(phase: str, serial: int = 1, **extra: Any) -> StatusReport:
    return StatusReport.from_dict({"phase": phase, "serial": serial, **extra})


def test_204_means_the_report_is_in_the_database(start_server: Any) -> None:
    server = start_server(status_history=3)
    (device,) = enrolled(server, "dev-1")
    for phase in ("downloading", "installing", "healthy"):
        assert device.status(server.client, {"phase": phase, "serial": 1}).status_code == 204
        assert server.kx.store.current_status("dev-1")["phase"] == phase  # committed
    assert server.kx.statuses.pending() == 0

    listed = server.admin_get("/v1/admin/devices")["devices"]
    assert [d["status"]["phase"] for d in listed] == ["healthy"]

    device.status(server.client, {"phase": "failed", "serial": 2, "error": "boom"})
    detail = server.admin_get("/v1/admin/devices/dev-1")
    assert detail["status"]["phase"] == "failed"
    assert [h["phase"] for h in detail["status_history"]] == ["failed", "healthy", "installing"]
    status = server.admin_get("/v1/admin/status")
    assert status["devices"]["by_phase"] == {"failed": 1}


def test_batch_keeps_order_per_device_and_trims_history(start_server: Any) -> None:
    server = start_server()
    enrolled(server, "dev-a", "dev-b")
    store = server.kx.store
    batch = [
        ("dev-a", report("downloading"), 1.0),
        ("dev-b", report("downloading"), 1.1),
        ("dev-a", report("installing"), 2.0),
        ("dev-a", report("healthy", agent_version="9.9.9"), 3.0),
        ("dev-b", report("failed", error="health exited 1"), 3.1),
        ("ghost", report("healthy"), 3.2),  # no such device: dropped, not an error
    ]
    store.record_statuses(batch, keep=2)
    assert store.current_status("dev-a")["phase"] == "healthy"
    assert store.current_status("dev-a")["received_at"] == 3.0
    assert store.current_status("dev-b")["error"] == "health exited 1"
    assert [h["phase"] for h in store.status_history("dev-a")] == ["healthy", "installing"]
    assert [h["phase"] for h in store.status_history("dev-b")] == ["failed", "downloading"]
    assert store.get_device("dev-a").agent_version == "9.9.9"
    assert store.current_status("ghost") is None

    store.record_statuses([("dev-b", report("healthy", serial=2), 4.0)], keep=2)
    assert [h["phase"] for h in store.status_history("dev-b")] == ["healthy", "failed"]
    assert store.current_status("dev-b")["serial"] == 2
    assert [h["phase"] for h in store.status_history("dev-a")] == ["healthy", "installing"]


def test_failed_write_answers_503_and_keeps_nothing_half_done(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server()
    (device,) = enrolled(server, "dev-1")
    real = server.kx.store.record_statuses

    def down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(server.kx.store, "record_statuses", down)
    answer = device.status(server.client, {"phase": "installing", "serial": 1})
    assert answer.status_code == 503
    assert answer.headers["retry-after"].isdigit()
    assert "database is unavailable" in answer.json()["error"]
    assert "database" in answer.json()["hint"]
    assert server.kx.statuses.pending() == 0  # not queued again: the agent resends it
    assert server.kx.database.down

    monkeypatch.setattr(server.kx.store, "record_statuses", real)
    assert device.status(server.client, {"phase": "healthy", "serial": 1}).status_code == 204
    assert [h["phase"] for h in server.kx.store.status_history("dev-1")] == ["healthy"]
    assert not server.kx.database.down


def test_concurrent_reports_share_commits(start_server: Any) -> None:
    server = start_server()
    devices = enrolled(server, *(f"dev-{n}" for n in range(12)))
    store = server.kx.store
    commits = 0
    real = store.record_statuses

    def counted(*args: Any, **kwargs: Any) -> None:
        nonlocal commits
        commits += 1
        real(*args, **kwargs)

    store.record_statuses = counted  # type: ignore[method-assign]
    with ThreadPoolExecutor(len(devices)) as pool:
        answers = list(
            pool.map(
                lambda d: [
                    d.status(server.client, {"phase": p, "serial": 1}).status_code
                    for p in ("downloading", "installing", "healthy")
                ],
                devices,
            )
        )
    assert all(codes == [204, 204, 204] for codes in answers)
    for d in devices:
        history = [h["phase"] for h in store.status_history(d.device_id)]
        assert history == ["healthy", "installing", "downloading"]
    assert commits < 3 * len(devices)  # reports arriving during a commit share the next


def test_full_queue_refuses_new_reports(start_server: Any) -> None:
    server = start_server()
    enrolled(server, "dev-1")
    recorder = StatusRecorder(server.kx.store, keep=10, max_queued=2)
    recorder.accept("dev-1", report("downloading"), now=0.0)
    recorder.accept("dev-1", report("installing"), now=1.0)
    with pytest.raises(StatusNotRecorded):
        recorder.accept("dev-1", report("healthy"), now=2.0)
    assert recorder.refused == 1
    assert recorder.flush() == 2
    history = server.kx.store.status_history("dev-1")
    assert [h["phase"] for h in history] == ["installing", "downloading"]


def test_shutdown_writes_queued_reports(start_server: Any) -> None:
    server = start_server()
    enrolled(server, "dev-1")
    server.kx.statuses.accept("dev-1", report("healthy"), now=1.0)  # queued, not written
    assert server.kx.store.current_status("dev-1") is None
    server.client.__exit__(None, None, None)  # lifespan exit
    try:
        assert server.kx.store.current_status("dev-1")["phase"] == "healthy"
    finally:
        server.kx.engine.dispose()  # the read above opened a connection after shutdown
