"""`kernex devices` and `kernex enroll-tokens` against a real server on loopback."""

from __future__ import annotations

import json

import httpx
from kit.cli import Kernex
from kit.server import RunningServer


def test_devices_list_shows_enrolled_devices_with_filters(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    berlin = kx_server.enroll("edge-berlin", site="berlin", ring="canary")
    kx_server.enroll("edge-paris", site="paris")
    kx_server.enroll_pending("edge-unknown")
    kx_server.report(berlin, phase="failed", serial=1, error="health check failed")

    table = kernex("devices", "list")
    assert table.exit_code == 0, table.output
    for name in ("edge-berlin", "edge-paris", "edge-unknown"):
        assert name in table.output
    assert "failed" in table.output

    as_json = kernex("devices", "list", "--json", "--label", "site=berlin")
    assert as_json.exit_code == 0, as_json.output
    ids = [d["id"] for d in json.loads(as_json.stdout)["devices"]]
    assert ids == ["edge-berlin"]

    pending = kernex("devices", "list", "--state", "pending", "--json")
    assert [d["id"] for d in json.loads(pending.stdout)["devices"]] == ["edge-unknown"]

    failed = kernex("devices", "list", "--phase", "failed", "--json")
    assert [d["id"] for d in json.loads(failed.stdout)["devices"]] == ["edge-berlin"]

    online = kernex("devices", "list", "--online", "--json")
    assert "edge-berlin" in [d["id"] for d in json.loads(online.stdout)["devices"]]
    offline = kernex("devices", "list", "--offline", "--state", "accepted", "--json")
    assert json.loads(offline.stdout)["devices"] == []


def test_devices_list_rejects_bad_filters_as_usage_errors(kernex: Kernex) -> None:
    assert kernex("devices", "list", "--state", "happy").exit_code == 2
    bad_label = kernex("devices", "list", "--label", "nolabel")
    assert bad_label.exit_code == 2
    assert "key=value" in bad_label.output


def test_devices_show_has_history_and_deployments(kernex: Kernex, kx_server: RunningServer) -> None:
    device = kx_server.enroll("edge-1", ring="canary")
    kx_server.report(device, phase="installing", serial=1)
    kx_server.report(device, phase="healthy", serial=1, bundles={"app": "1.0.0"})
    shown = kernex("devices", "show", "edge-1")
    assert shown.exit_code == 0, shown.output
    assert "status history" in shown.output
    assert "deployments" in shown.output
    assert "installing" in shown.output
    assert "healthy" in shown.output
    data = json.loads(kernex("devices", "show", "edge-1", "--json").stdout)
    assert [s["phase"] for s in data["status_history"]] == ["healthy", "installing"]
    assert data["deployments"][0]["serial"] == 1


def test_devices_show_unknown_device_fails(kernex: Kernex) -> None:
    result = kernex("devices", "show", "nope")
    assert result.exit_code == 1
    assert "no device nope" in result.output


def test_devices_accept_reject_revoke(kernex: Kernex, kx_server: RunningServer) -> None:
    kx_server.enroll_pending("edge-a")
    kx_server.enroll_pending("edge-b")
    accepted = kernex("devices", "accept", "edge-a")
    assert accepted.exit_code == 0, accepted.output
    assert "edge-a is now accepted" in accepted.output
    rejected = kernex("devices", "reject", "edge-b", "--json")
    assert json.loads(rejected.stdout) == {"id": "edge-b", "state": "rejected"}
    revoked = kernex("devices", "revoke", "edge-a")
    assert revoked.exit_code == 0, revoked.output
    assert kx_server.admin("GET", "/v1/admin/devices/edge-a")["state"] == "revoked"
    # a revoked device stays revoked: the server's 409 and hint reach the user
    again = kernex("devices", "accept", "edge-a")
    assert again.exit_code == 1
    assert "cannot become accepted" in again.output
    assert "new id" in again.output


def test_enroll_tokens_create_list_revoke(kernex: Kernex, kx_server: RunningServer) -> None:
    created = kernex(
        "enroll-tokens", "create", "--name", "berlin", "--expires-in", "2h", "--uses", "1", "--json"
    )
    assert created.exit_code == 0, created.output
    token = json.loads(created.stdout)
    assert token["max_uses"] == 1
    assert token["token"]

    listed = kernex("enroll-tokens", "list")
    assert listed.exit_code == 0, listed.output
    assert "berlin" in listed.output
    assert token["token"] not in listed.output  # secrets are shown once

    revoked = kernex("enroll-tokens", "revoke", str(token["id"]))
    assert revoked.exit_code == 0, revoked.output
    # the revoked token no longer admits a device
    from kit.device import SimDevice

    with httpx.Client(base_url=kx_server.base) as client:
        answer = SimDevice("edge-late").enroll(client, token=token["token"])
    assert answer.status_code in (401, 403), answer.text
    assert "revoked" in answer.json()["error"]


def test_enroll_tokens_create_plain_prints_the_secret(kernex: Kernex) -> None:
    result = kernex("enroll-tokens", "create")
    assert result.exit_code == 0, result.output
    assert "shown once" in result.output
    assert result.stdout.strip().splitlines()[-1].startswith("kx")


def test_enroll_tokens_bad_duration_and_unknown_id(kernex: Kernex) -> None:
    bad = kernex("enroll-tokens", "create", "--expires-in", "soon")
    assert bad.exit_code == 2
    assert "duration" in bad.output
    missing = kernex("enroll-tokens", "revoke", "999")
    assert missing.exit_code == 1
    assert "no enrollment token 999" in missing.output


def test_devices_labels_accept_settles_what_a_device_proposed(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    device = kx_server.enroll("edge-1", ring="stable")
    device.labels = {"ring": "canary"}
    with kx_server.http() as client:
        assert device.enroll(client).status_code == 200  # re-enrollment: a proposal only
    shown = kernex("devices", "show", "edge-1")
    assert shown.exit_code == 0, shown.output
    assert "ring=stable" in shown.output
    assert "proposed" in shown.output
    assert "ring=canary" in shown.output
    accepted = kernex("devices", "labels", "accept", "edge-1")
    assert accepted.exit_code == 0, accepted.output
    assert "ring=canary" in accepted.output
    data = json.loads(kernex("devices", "show", "edge-1", "--json").stdout)
    assert (data["labels"], data["proposed_labels"]) == ({"ring": "canary"}, None)
    again = kernex("devices", "labels", "reject", "edge-1")
    assert again.exit_code == 1
    assert "no proposed labels" in again.output


def test_devices_show_what_runs_and_the_hook_log(kernex: Kernex, kx_server: RunningServer) -> None:
    device = kx_server.enroll("edge-running")
    kx_server.report(
        device,
        phase="rolled_back",
        serial=1,
        bundles={"app": "1.0.0"},
        error="health hook exited 3",
        log_tail="starting app 1.1.0\nport 8080 already in use\n",
    )
    table = kernex("devices", "list")
    assert table.exit_code == 0, table.output
    assert "running" in table.output
    assert "app@1.0.0" in table.output

    shown = kernex("devices", "show", "edge-running")
    assert shown.exit_code == 0, shown.output
    assert "app@1.0.0" in shown.output
    assert "health hook exited 3" in shown.output
    assert "port 8080 already in use" in shown.output
