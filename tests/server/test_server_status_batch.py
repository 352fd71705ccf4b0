"""Status reports are queued at once and written in batches, and none is lost or reordered."""

from __future__ import annotations

from typing import Any

import pytest
from serverkit import SimDevice

from kernex_core.protocol import StatusReport
from kernex_server.status import StatusRecorder


def enrolled(server: Any, *names: str) -> list[SimDevice]:
    token = server.enrollment_token()
    devices = [SimDevice(name) for name in names]
    for device in devices:
        assert device.enroll(server.client, token=token).status_code in {200, 201}
    return devices


def report(phase: str, serial: int = 1, **extra: Any) -> StatusReport:
    return StatusReport.from_dict({"phase": phase, "serial": serial, **extra})


def test_report_is_queued_then_admin_views_flush_it(start_server: Any) -> None:
    server = start_server(status_history=3)
    (device,) = enrolled(server, "dev-1")
    for phase in ("downloading", "installing", "healthy"):
        assert device.status(server.client, {"phase": phase, "serial": 1}).status_code == 204
    assert server.kx.statuses.pending() == 3  # accepted, not yet written
    assert server.kx.store.current_status("dev-1") is None

    listed = server.admin_get("/v1/admin/devices")["devices"]
    assert [d["status"]["phase"] for d in listed] == ["healthy"]
    assert server.kx.statuses.pending() == 0
    assert server.kx.store.current_status("dev-1")["phase"] == "healthy"

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


def test_failed_write_keeps_the_batch_in_order(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server()
    enrolled(server, "dev-1")
    statuses = server.kx.statuses
    statuses.accept("dev-1", report("downloading"), now=1.0)
    statuses.accept("dev-1", report("installing"), now=2.0)
    real = server.kx.store.record_statuses

    def down(*args: Any, **kwargs: Any) -> None:
        statuses.accept("dev-1", report("healthy"), now=3.0)  # arrives during the write
        raise RuntimeError("database is down")

    monkeypatch.setattr(server.kx.store, "record_statuses", down)
    with pytest.raises(RuntimeError):
        statuses.flush()
    assert statuses.pending() == 3
    monkeypatch.setattr(server.kx.store, "record_statuses", real)
    assert statuses.flush() == 3
    history = server.kx.store.status_history("dev-1")
    assert [h["phase"] for h in history] == ["healthy", "installing", "downloading"]


def test_shutdown_writes_queued_reports(start_server: Any) -> None:
    server = start_server()
    (device,) = enrolled(server, "dev-1")
    assert device.status(server.client, {"phase": "healthy", "serial": 1}).status_code == 204
    assert server.kx.store.current_status("dev-1") is None
    server.client.__exit__(None, None, None)  # lifespan exit
    try:
        assert server.kx.store.current_status("dev-1")["phase"] == "healthy"
    finally:
        server.kx.engine.dispose()  # the read above opened a connection after shutdown


def test_full_queue_drops_the_oldest(start_server: Any) -> None:
    server = start_server()
    enrolled(server, "dev-1")
    recorder = StatusRecorder(server.kx.store, keep=10, max_queued=2)
    for n, phase in enumerate(("downloading", "installing", "healthy")):
        recorder.accept("dev-1", report(phase), now=float(n))
    assert recorder.dropped == 1
    assert recorder.flush() == 2
    history = server.kx.store.status_history("dev-1")
    assert [h["phase"] for h in history] == ["healthy", "installing"]
