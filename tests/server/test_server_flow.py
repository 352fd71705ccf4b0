"""The device plane end to end in process: real Git repository, real database, real app."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kit.device import SimDevice, verify_manifest
from kit.fleet import BUNDLE_V1, BUNDLE_V2, kernex_yaml, sha
from kit.wait import wait_for


def accept(server: Any, device: SimDevice) -> None:
    server.admin_post(f"/v1/admin/devices/{device.device_id}/accept")


def long_polls_open(kx: Any) -> float | None:
    value: float | None = kx.metrics.registry.get_sample_value("kernex_manifest_long_polls_open")
    return value


def test_enroll_accept_manifest_long_poll_status(server: Any, fleet_repo: Any) -> None:
    device = SimDevice("dev-1", labels={"ring": "stable"})
    enrolled = device.enroll(server.client)
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["state"] == "pending"
    assert enrolled.json()["manifest_key_id"].startswith("SHA256:")
    assert device.manifest(server.client).status_code == 403  # pending gets nothing

    accept(server, device)
    first = device.manifest(server.client)
    assert first.status_code == 200, first.text
    manifest = verify_manifest(first.content, "dev-1", server.key)
    assert manifest.serial == 1
    assert manifest.revision == fleet_repo.head()
    assert [(b.name, b.version, b.sha256) for b in manifest.bundles] == [
        ("app", "1.0.0", sha(BUNDLE_V1))
    ]
    assert manifest.bundles[0].url == f"/v1/bundles/{sha(BUNDLE_V1)}"
    assert manifest.config == {"app": {"greeting": "hello"}}
    etag = first.headers["etag"]

    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        poll = pool.submit(device.manifest, server.client, wait=30, etag=etag)
        wait_for("the long poll to be waiting", lambda: long_polls_open(server.kx) == 1, 10)
        fleet_repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
        commit = fleet_repo.commit("app 1.1.0 everywhere")
        assert server.reconcile()["state"] == "deployed"
        changed = poll.result(timeout=30)
        elapsed = time.monotonic() - started
    assert changed.status_code == 200  # a timeout would have been a 304
    newer = verify_manifest(changed.content, "dev-1", server.key, min_serial=2)
    assert newer.serial == 2
    assert newer.revision == commit
    assert newer.bundles[0].version == "1.1.0"
    assert newer.bundles[0].sha256 == sha(BUNDLE_V2)
    print(f"long poll answered {elapsed:.3f} s after it was opened")

    detail = server.admin_get("/v1/admin/devices/dev-1")
    assert detail["desired_serial"] == 2
    assert detail["deployment_pending"] is True

    report = {"phase": "healthy", "serial": 2, "revision": commit, "bundles": {"app": "1.1.0"}}
    assert device.status(server.client, report).status_code == 204
    detail = server.admin_get("/v1/admin/devices/dev-1")
    assert detail["status"]["phase"] == "healthy"
    assert detail["status"]["bundles"] == {"app": "1.1.0"}
    assert detail["reported_serial"] == 2
    assert detail["deployment_pending"] is False
    assert [d["serial"] for d in detail["deployments"]] == [2, 1]  # newest first
    assert [d["bundles"]["app"] for d in detail["deployments"]] == ["1.1.0", "1.0.0"]


def test_long_poll_times_out_with_304(server: Any) -> None:
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    first = device.manifest(server.client)
    assert first.status_code == 200
    again = device.manifest(server.client, wait=1, etag=first.headers["etag"])
    assert again.status_code == 304
    assert again.headers["etag"] == first.headers["etag"]
    assert device.manifest(server.client, wait=61).status_code == 400


def test_only_changed_devices_get_a_new_serial(server: Any, fleet_repo: Any) -> None:
    token = server.enrollment_token()
    canary = SimDevice("canary-1", labels={"ring": "canary"})
    stable = SimDevice("stable-1", labels={"ring": "stable"})
    for device in (canary, stable):
        assert device.enroll(server.client, token=token).json()["state"] == "accepted"
    stable_etag = stable.manifest(server.client).headers["etag"]
    fleet_repo.write(
        "groups/canary.yaml",
        "selector: ring=canary\npriority: 10\nconfig:\n  app:\n    canary: false\n",
    )
    fleet_repo.commit("canary config")
    result = server.reconcile()
    assert result["devices_changed"] == 1
    got = canary.manifest(server.client)
    assert verify_manifest(got.content, "canary-1", server.key).serial == 2
    unchanged = stable.manifest(server.client)
    assert unchanged.headers["etag"] == stable_etag
    assert verify_manifest(unchanged.content, "stable-1", server.key).serial == 1


def test_device_enrolled_later_is_resolved_at_once(server: Any) -> None:
    assert server.reconcile()["state"] == "unchanged"  # deployed at start
    device = SimDevice("late-1")
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    got = device.manifest(server.client)
    assert got.status_code == 200
    assert verify_manifest(got.content, "late-1", server.key).serial == 1


def test_invalid_commit_keeps_last_good(server: Any, fleet_repo: Any) -> None:
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    good = device.manifest(server.client)
    fleet_repo.write("kernex.yaml", kernex_yaml() + "no_such_setting: 1\n")
    bad = fleet_repo.commit("typo")
    result = server.reconcile()
    assert result["state"] == "invalid"
    assert result["errors"], result
    assert any("kernex.yaml" in e["file"] for e in result["errors"])
    same = device.manifest(server.client)
    assert same.content == good.content
    revisions = server.admin_get("/v1/admin/revisions")["revisions"]
    assert revisions[0]["commit"] == bad
    assert revisions[0]["state"] == "invalid"
    assert revisions[0]["errors"]
    assert revisions[1]["state"] == "deployed"
    # A later good commit deploys again.
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="hi"))
    fleet_repo.commit("fixed")
    assert server.reconcile()["state"] == "deployed"
    assert verify_manifest(device.manifest(server.client).content, "dev-1", server.key).serial == 2


def test_force_push_is_accepted_and_recorded(server: Any, fleet_repo: Any) -> None:
    base = fleet_repo.head()
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="one"))
    fleet_repo.commit("one")
    assert server.reconcile()["forced"] is False
    fleet_repo.git("reset", "-q", "--hard", base)
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="two"))
    fleet_repo.commit("rewritten history")
    result = server.reconcile()
    assert result["state"] == "deployed"
    assert result["forced"] is True
    assert server.admin_get("/v1/admin/revisions")["revisions"][0]["forced"] is True


def test_serials_survive_a_restart(start_server: Any, fleet_repo: Any) -> None:
    first = start_server()
    device = SimDevice("dev-1")
    device.enroll(first.client, token=first.enrollment_token())
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="again"))
    fleet_repo.commit("change")
    first.reconcile()
    before = device.manifest(first.client)
    assert verify_manifest(before.content, "dev-1", first.key).serial == 2
    first.client.__exit__(None, None, None)

    second = start_server()
    cached = device.manifest(second.client)  # served from the cache filled at start
    assert cached.content == before.content
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="third"))
    fleet_repo.commit("third")
    second.reconcile()
    after = device.manifest(second.client)
    assert verify_manifest(after.content, "dev-1", second.key, min_serial=3).serial == 3


def test_status_success_failure_history_and_invalid(start_server: Any) -> None:
    server = start_server(status_history=3)
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    ok = {"phase": "healthy", "serial": 1, "bundles": {"app": "1.0.0"}}
    failed = {"phase": "failed", "serial": 1, "error": "health check exited 3: port busy"}
    assert device.status(server.client, ok).status_code == 204
    assert device.status(server.client, failed).status_code == 204
    detail = server.admin_get("/v1/admin/devices/dev-1")
    assert detail["status"]["phase"] == "failed"
    assert detail["status"]["error"] == "health check exited 3: port busy"
    for phase in ("downloading", "installing", "rolled_back"):
        device.status(server.client, {"phase": phase, "serial": 1})
    history = server.admin_get("/v1/admin/devices/dev-1")["status_history"]
    assert [h["phase"] for h in history] == ["rolled_back", "installing", "downloading"]

    bad = device.status(server.client, {"phase": "exploded"})
    assert bad.status_code == 422
    assert "phase" in bad.json()["error"]
    assert device.status(server.client, {"phase": "healthy", "serial": "x"}).status_code == 422
    assert server.admin_get("/v1/admin/devices/dev-1")["status"]["phase"] == "rolled_back"


def test_heartbeat_updates_last_seen(server: Any) -> None:
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    row = server.kx.store.get_device("dev-1")
    enrolled_seen = row.last_seen
    time.sleep(1.1)  # about time itself: last_seen must move on by a whole second
    assert device.manifest(server.client).status_code == 200
    server.client.portal.call(server.kx.flush_heartbeats)
    later = server.kx.store.get_device("dev-1").last_seen
    assert later > enrolled_seen
    listed = server.admin_get("/v1/admin/devices")["devices"]
    assert listed[0]["id"] == "dev-1"
    assert listed[0]["online"] is True
    assert listed[0]["last_seen"] is not None


def test_remote_repository_is_cloned_and_fetched(start_server: Any, fleet_repo: Any) -> None:
    server = start_server(repo=f"file://{fleet_repo.path}")
    assert (server.kx.settings.clone_dir / "HEAD").is_file()
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="fetched"))
    commit = fleet_repo.commit("remote change")
    result = server.reconcile()
    assert result["commit"] == commit
    got = verify_manifest(device.manifest(server.client).content, "dev-1", server.key)
    assert got.config["app"]["greeting"] == "fetched"
