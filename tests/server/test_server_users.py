"""Dashboard accounts: the admin API for users, argon2 hashes, lockout, the audit trail."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from kernex_server.accounts import LOCK_AFTER, LOCK_SECONDS, Accounts, LoginRefusedError
from kernex_server.models import User

PASSWORD = "correct horse battery"


def test_admin_adds_lists_disables_and_resets_users(server: Any) -> None:
    created = server.admin_post(
        "/v1/admin/users", json={"name": "alice", "role": "operator", "password": PASSWORD}
    )
    assert created["name"] == "alice"
    assert created["role"] == "operator"
    assert not created["disabled"]
    listed = server.admin_get("/v1/admin/users")["users"]
    assert [u["name"] for u in listed] == ["alice"]
    assert "password" not in json.dumps(listed)
    with server.kx.store.sessions() as s:
        stored = s.scalar(sa.select(User.password_hash).where(User.name == "alice"))
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored

    duplicate = server.client.post(
        "/v1/admin/users",
        headers=server.auth,
        json={"name": "alice", "role": "viewer", "password": PASSWORD},
    )
    assert duplicate.status_code == 409
    short = server.client.post(
        "/v1/admin/users", headers=server.auth, json={"name": "bob", "role": "viewer",
                                                       "password": "short"},
    )  # fmt: skip
    assert short.status_code == 400
    assert "shorter than" in short.json()["error"]
    bad_name = server.client.post(
        "/v1/admin/users", headers=server.auth, json={"name": "Bob <x>", "role": "viewer",
                                                       "password": PASSWORD},
    )  # fmt: skip
    assert bad_name.status_code == 400

    assert server.admin_post("/v1/admin/users/alice/disable")["disabled"] is True
    accounts = Accounts(server.kx.store.sessions)
    with pytest.raises(LoginRefusedError) as refused:
        accounts.login("alice", PASSWORD, now=1.0)
    assert refused.value.reason == "disabled"
    assert server.admin_post("/v1/admin/users/alice/enable")["disabled"] is False
    assert accounts.login("alice", PASSWORD, now=2.0).role == "operator"
    server.admin_post("/v1/admin/users/alice/password", json={"password": "another long one"})
    assert accounts.login("alice", "another long one", now=3.0).name == "alice"
    missing = server.client.post("/v1/admin/users/nobody/disable", headers=server.auth)
    assert missing.status_code == 404

    entries = server.admin_get("/v1/admin/audit?action=user.add")["entries"]
    assert {e["result"] for e in entries} == {"ok", "error"}
    assert all(e["actor"].startswith("test-") for e in entries)
    everything = json.dumps(server.admin_get("/v1/admin/audit?limit=1000"))
    assert PASSWORD not in everything
    assert "another long one" not in everything


def test_only_admins_manage_users(server: Any) -> None:
    viewer = server.kx.store.create_api_token("v", "operator", now=1.0)
    answer = server.client.get("/v1/admin/users", headers={"Authorization": f"Bearer {viewer}"})
    assert answer.status_code == 403


def test_wrong_passwords_lock_the_account_until_the_lock_ends(server: Any) -> None:
    accounts = Accounts(server.kx.store.sessions)
    accounts.add("carol", "viewer", PASSWORD, now=0.0)
    for attempt in range(LOCK_AFTER - 1):
        with pytest.raises(LoginRefusedError) as wrong:
            accounts.login("carol", "not the password", now=10.0 + attempt)
        assert wrong.value.reason == "wrong password"
    assert accounts.login("carol", PASSWORD, now=20.0).name == "carol"  # the count resets
    for attempt in range(LOCK_AFTER):
        with pytest.raises(LoginRefusedError):
            accounts.login("carol", "not the password", now=30.0 + attempt)
    with pytest.raises(LoginRefusedError) as locked:
        accounts.login("carol", PASSWORD, now=40.0)  # the right password, but locked
    assert locked.value.reason == "locked"
    assert "locked" in locked.value.message
    assert accounts.login("carol", PASSWORD, now=34.0 + LOCK_SECONDS + 1).name == "carol"


def test_a_new_password_lifts_a_lock_and_unknown_names_say_the_same(server: Any) -> None:
    accounts = Accounts(server.kx.store.sessions)
    accounts.add("dave", "admin", PASSWORD, now=0.0)
    for attempt in range(LOCK_AFTER):
        with pytest.raises(LoginRefusedError):
            accounts.login("dave", "nope nope nope", now=1.0 + attempt)
    accounts.set_password("dave", "a brand new password", now=10.0)
    assert accounts.login("dave", "a brand new password", now=11.0).role == "admin"
    with pytest.raises(LoginRefusedError) as unknown:
        accounts.login("nobody", PASSWORD, now=12.0)
    with pytest.raises(LoginRefusedError) as wrong:
        accounts.login("dave", PASSWORD, now=13.0)
    assert unknown.value.message == wrong.value.message
