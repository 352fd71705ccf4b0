"""Enrollment holds what docs/security.md promises: one key is one device, a device never
relabels itself, and strangers cannot flood the database. Real app, real SQLite and
PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from kit.device import SimDevice, verify_manifest

from kernex_core import keys
from kernex_server.database import alembic_config, make_engine, migrate
from kernex_server.models import AuditEntry, Device


def _audit(server: Any, action: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = server.admin_get(f"/v1/admin/audit?action={action}")["entries"]
    return rows


# -- one device key, one device (issue 11.3) ----------------------------------------------


def test_a_device_key_enrolls_under_one_device_id_only(server: Any) -> None:
    first = SimDevice("dev-1")
    assert first.enroll(server.client, token=server.enrollment_token()).status_code == 201
    token = server.enrollment_token(max_uses=1)
    clone = SimDevice("dev-2", key=first.key)  # dev-1's key under another id
    response = clone.enroll(server.client, token=token)
    assert response.status_code == 409, response.text
    assert "already enrolled" in response.json()["error"]
    assert server.kx.store.get_device("dev-2") is None
    # the refused attempt spent nothing: the single-use token still admits a real device
    assert SimDevice("dev-3").enroll(server.client, token=token).json()["state"] == "accepted"
    assert clone.manifest(server.client).status_code == 401
    denied = [e for e in _audit(server, "device.enroll") if e["result"] == "denied"]
    assert [e["target"] for e in denied] == ["dev-2"]
    # without a token too: no pending device under the borrowed key
    assert SimDevice("dev-4", key=first.key).enroll(server.client).status_code == 409
    assert server.kx.store.get_device("dev-4") is None


def test_the_database_refuses_a_second_device_with_the_same_key(server: Any) -> None:
    key = keys.generate_ed25519().public_key()
    now = time.time()

    def row(device_id: str) -> Device:
        return Device(
            id=device_id,
            public_key=keys.public_key_to_pem(key),
            fingerprint=keys.fingerprint(key),
            algorithm="ed25519",
            labels={},
            state="pending",
            agent_version="",
            enrolled_at=now,
            updated_at=now,
        )

    sessions = server.kx.store.sessions
    with sessions.begin() as s:
        s.add(row("a-1"))
    with pytest.raises(sa.exc.IntegrityError), sessions.begin() as s:
        s.add(row("a-2"))


def test_migration_revokes_later_devices_sharing_a_key(database: dict[str, str]) -> None:
    """A database enrolled before the rule: the first device keeps the key, later ones
    sharing it are revoked (and keep their key for the record), so the unique index holds."""
    schema = database.get("database_schema", "")
    engine = make_engine(database["database_url"], schema=schema)
    try:
        command.upgrade(alembic_config(engine), "0003")
        pem = keys.public_key_to_pem(keys.generate_ed25519().public_key())
        with engine.begin() as conn:
            for device_id, at in (("owner", 1.0), ("ghost", 2.0), ("alone", 3.0)):
                fp = "SHA256:shared" if device_id != "alone" else "SHA256:alone"
                conn.execute(
                    sa.text(
                        "INSERT INTO devices (id, public_key, fingerprint, algorithm, labels,"
                        " state, agent_version, enrolled_at, updated_at)"
                        " VALUES (:id, :pem, :fp, 'ed25519', '{}', 'accepted', '', :at, :at)"
                    ),
                    {"id": device_id, "pem": pem, "fp": fp, "at": at},
                )
        migrate(engine, schema=schema)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, fingerprint, state, admitted_by FROM devices ORDER BY id")
            ).all()
        by_id = {r[0]: r for r in rows}
        assert by_id["owner"][1:3] == ("SHA256:shared", "accepted")
        assert by_id["alone"][1:3] == ("SHA256:alone", "accepted")
        assert by_id["ghost"][2] == "revoked"
        assert by_id["ghost"][1] != "SHA256:shared"
        assert "SHA256:shared" in by_id["ghost"][1]
    finally:
        engine.dispose()


# -- a device never relabels itself (issue 11.4) ------------------------------------------


def _config(server: Any, device: SimDevice) -> dict[str, Any]:
    response = device.manifest(server.client)
    assert response.status_code == 200, response.text
    return dict(verify_manifest(response.content, device.device_id, server.key).config)


def _device(server: Any, device_id: str) -> dict[str, Any]:
    found: dict[str, Any] = server.admin_get(f"/v1/admin/devices/{device_id}")
    return found


def test_an_admitted_device_cannot_relabel_itself(server: Any) -> None:
    device = SimDevice("dev-1", labels={"ring": "stable"})
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    assert _config(server, device) == {"app": {"greeting": "hello"}}
    # the device asks to join the canary group, whose config it must not get by itself
    device.labels = {"ring": "canary"}
    again = device.enroll(server.client)
    assert again.status_code == 200, again.text
    shown = _device(server, "dev-1")
    assert shown["labels"] == {"ring": "stable"}
    assert shown["proposed_labels"] == {"ring": "canary"}
    assert _config(server, device) == {"app": {"greeting": "hello"}}
    assert server.admin_get("/v1/admin/devices?label=ring=canary")["devices"] == []
    enrolls = _audit(server, "device.enroll")
    assert enrolls[0]["detail"]["proposed_labels"] == {"ring": "canary"}
    # the same request again changes nothing and adds no audit entry
    assert device.enroll(server.client).status_code == 200
    assert len(_audit(server, "device.enroll")) == len(enrolls)
    # an admin accepts the proposal: the labels move and the manifest follows
    accepted = server.admin_post("/v1/admin/devices/dev-1/labels/accept")
    assert accepted["labels"] == {"ring": "canary"}
    shown = _device(server, "dev-1")
    assert (shown["labels"], shown["proposed_labels"]) == ({"ring": "canary"}, None)
    assert _config(server, device) == {"app": {"greeting": "hello", "canary": True}}
    entry = _audit(server, "device.labels.accept")[0]
    assert (entry["target"], entry["result"]) == ("dev-1", "ok")
    assert entry["detail"]["from"] == {"ring": "stable"}
    assert entry["detail"]["to"] == {"ring": "canary"}
    # nothing left to accept
    nothing = server.client.post("/v1/admin/devices/dev-1/labels/accept", headers=server.auth)
    assert nothing.status_code == 409


def test_a_proposal_can_be_rejected_and_needs_an_admin(server: Any) -> None:
    device = SimDevice("dev-1", labels={"ring": "stable"})
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    device.labels = {"ring": "canary"}
    assert device.enroll(server.client).status_code == 200
    operator = server.kx.store.create_api_token("op", "operator", now=time.time())
    refused = server.client.post(
        "/v1/admin/devices/dev-1/labels/accept", headers={"Authorization": f"Bearer {operator}"}
    )
    assert refused.status_code == 403
    server.admin_post("/v1/admin/devices/dev-1/labels/reject")
    shown = _device(server, "dev-1")
    assert (shown["labels"], shown["proposed_labels"]) == ({"ring": "stable"}, None)
    assert _audit(server, "device.labels.reject")[0]["detail"]["proposed"] == {"ring": "canary"}
    missing = server.client.post("/v1/admin/devices/nobody/labels/accept", headers=server.auth)
    assert missing.status_code == 404


@pytest.mark.parametrize("verb", ["revoke", "reject"])
def test_a_refused_device_cannot_relabel_itself(server: Any, verb: str) -> None:
    device = SimDevice("dev-1", labels={"ring": "stable"})
    assert device.enroll(server.client).status_code == 201
    server.admin_post(f"/v1/admin/devices/dev-1/{verb}")
    device.labels = {"ring": "canary"}
    device.enroll(server.client)
    shown = _device(server, "dev-1")
    assert shown["labels"] == {"ring": "stable"}
    assert shown["proposed_labels"] == {"ring": "canary"}


def test_every_reenrollment_that_changes_something_is_audited(server: Any) -> None:
    device = SimDevice("dev-1", labels={"ring": "stable"})
    assert device.enroll(server.client).status_code == 201  # pending
    device.labels = {"ring": "beta"}  # a pending device's labels are still its own to set
    assert device.enroll(server.client).status_code == 200
    assert _device(server, "dev-1")["labels"] == {"ring": "beta"}
    changed = _audit(server, "device.enroll")[0]
    assert changed["detail"]["labels"] == {"from": {"ring": "stable"}, "to": {"ring": "beta"}}


# -- strangers cannot flood the database (issue 11.8) -------------------------------------


def _rows(server: Any, model: Any) -> int:
    with server.kx.store.sessions() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(model)))


def test_enrollment_is_limited_per_address_before_anything_is_written(start_server: Any) -> None:
    server = start_server(enroll_rate=0.01, enroll_burst=3)
    devices = [SimDevice(f"dev-{n}") for n in range(3)]
    for device in devices:
        assert device.enroll(server.client).status_code == 201
    audit_rows = _rows(server, AuditEntry)
    refused = SimDevice("dev-flood").enroll(server.client)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert "enroll_rate" in refused.json()["hint"]
    assert server.kx.store.get_device("dev-flood") is None
    assert _rows(server, Device) == 3
    assert _rows(server, AuditEntry) == audit_rows  # nothing written for the refused one
    assert 'reason="rate_limited"' in server.client.get("/metrics").text
    # an admitted device's own requests are not enrollments: it keeps working
    assert server.admin_post("/v1/admin/devices/dev-0/accept")["state"] == "accepted"
    assert devices[0].manifest(server.client).status_code == 200


def test_unauthenticated_admin_requests_are_limited_per_address(start_server: Any) -> None:
    server = start_server(auth_failure_rate=0.01, auth_failure_burst=2)
    bad = {"Authorization": "Bearer kx_not-a-token"}
    assert server.client.get("/v1/admin/devices", headers=bad).status_code == 401
    assert server.client.get("/v1/admin/devices").status_code == 401  # no token at all
    audit_rows = _rows(server, AuditEntry)
    refused = server.client.get("/v1/admin/devices", headers=bad)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert "auth_failure_rate" in refused.json()["hint"]
    assert _rows(server, AuditEntry) == audit_rows
    # a valid token from the same address still gets in: only failures are limited
    assert server.client.get("/v1/admin/devices", headers=server.auth).status_code == 200


def test_rate_limits_are_settings_and_zero_turns_them_off(start_server: Any) -> None:
    server = start_server(enroll_rate=0.0, enroll_burst=1)
    for n in range(5):
        assert SimDevice(f"dev-{n}").enroll(server.client).status_code == 201
