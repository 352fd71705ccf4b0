"""The dashboard under /ui/: login, sessions, CSRF, lockout, escaping, pages, rollout acts."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import test_server_rollouts as rollouts_kit
from kit.fleet import FleetRepo
from test_server_rollouts import release, staged_repo

from kernex_server.accounts import LOCK_AFTER, Accounts
from kernex_server.api import handlers
from kernex_server.auth import auth_kind
from kernex_server.ui.session import COOKIE, Session, sign_session, ui_state

PASSWORD = "correct horse battery"
start_fleet = rollouts_kit.start_fleet  # the staged-rollout fleet fixture
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def add_user(kx: Any, name: str, role: str) -> None:
    Accounts(kx.store.sessions).add(name, role, PASSWORD, now=kx.clock())


def login(client: Any, name: str, password: str = PASSWORD) -> httpx.Response:
    form = client.get("/ui/login")
    assert form.status_code == 200
    token = CSRF_RE.search(form.text).group(1)
    return client.post(
        "/ui/login",
        data={"name": name, "password": password, "csrf": token, "next": "/ui/"},
        follow_redirects=False,
    )


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_RE.search(page.text)
    assert found, page.text
    return found.group(1)


def test_no_page_is_reachable_without_login(server: Any) -> None:
    checked = 0
    for route in server.client.app.routes:
        if not route.path.startswith("/ui/"):
            continue
        for method, endpoint in handlers(route).items():
            kind = auth_kind(endpoint)
            if kind == "public":
                assert route.path in {"/ui/login", "/ui/static/ui.js", "/ui/static/ui.css"}
                continue
            assert kind is not None
            assert kind.startswith("session:"), route.path
            path = route.path.replace("{device_id}", "dev-1").replace("{rollout_id:int}", "1")
            path = path.replace("{verb}", "pause")
            answer = server.client.request(method, path, follow_redirects=False)
            if "/api/" in path:
                assert answer.status_code == 401, (method, path)
            else:
                assert answer.status_code == 303, (method, path, answer.text)
                assert answer.headers["location"].startswith("/ui/login?next=")
            checked += 1
    assert checked >= 9


def test_login_sets_a_strict_session_cookie_and_pages_have_a_strict_csp(server: Any) -> None:
    add_user(server.kx, "alice", "viewer")
    answer = login(server.client, "alice")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/"
    cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith(COOKIE))
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/ui" in cookie
    assert "Max-Age=" in cookie
    page = server.client.get("/ui/")
    assert page.status_code == 200
    assert "alice (viewer)" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text  # the only script is the static file
    assert '<script src="/ui/static/ui.js" defer></script>' in page.text
    js = server.client.get("/ui/static/ui.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text
    audit = server.admin_get("/v1/admin/audit?action=user.login")["entries"]
    assert audit[0]["actor"] == "user:alice"
    assert audit[0]["result"] == "ok"


def test_forms_without_the_csrf_token_are_refused(server: Any) -> None:
    add_user(server.kx, "olga", "operator")
    # the login form: its token must match the cookie (double submit)
    server.client.get("/ui/login")
    no_token = server.client.post(
        "/ui/login", data={"name": "olga", "password": PASSWORD}, follow_redirects=False
    )
    assert no_token.status_code == 403
    wrong = server.client.post(
        "/ui/login", data={"name": "olga", "password": PASSWORD, "csrf": "forged"}
    )
    assert wrong.status_code == 403
    assert COOKIE not in server.client.cookies
    assert login(server.client, "olga").status_code == 303
    # a session's forms: logout and rollout acts need the session's token
    logout = server.client.post("/ui/logout", data={}, follow_redirects=False)
    assert logout.status_code == 403
    act = server.client.post("/ui/rollouts/1/pause", data={"csrf": "nope", "confirm": "yes"})
    assert act.status_code == 403
    assert "CSRF" in act.text
    refusals = server.admin_get("/v1/admin/audit?action=ui.csrf")["entries"]
    assert {e["actor"] for e in refusals} == {"user:olga"}
    token = csrf_of(server.client.get("/ui/"))
    done = server.client.post("/ui/logout", data={"csrf": token}, follow_redirects=False)
    assert done.status_code == 303
    assert server.client.get("/ui/", follow_redirects=False).status_code == 303


def test_sessions_expire_and_end_with_a_new_password_or_a_disabled_user(server: Any) -> None:
    add_user(server.kx, "erin", "viewer")
    client = server.client
    assert login(client, "erin").status_code == 303
    assert client.get("/ui/", follow_redirects=False).status_code == 200
    key = ui_state_key(server)
    now = server.kx.clock()
    user_id = Accounts(server.kx.store.sessions).list()[0]["id"]
    expired = sign_session(key, Session(user_id, now - 9 * 3600, now - 3600, "t"))
    client.cookies.set(COOKIE, expired, path="/ui")
    assert client.get("/ui/", follow_redirects=False).status_code == 303
    forged = sign_session(b"x" * 32, Session(user_id, now, now + 3600, "t"))
    client.cookies.set(COOKIE, forged, path="/ui")
    assert client.get("/ui/", follow_redirects=False).status_code == 303
    valid = sign_session(key, Session(user_id, now, now + 3600, "t"))
    client.cookies.set(COOKIE, valid, path="/ui")
    assert client.get("/ui/", follow_redirects=False).status_code == 200
    server.admin_post("/v1/admin/users/erin/disable")
    assert client.get("/ui/", follow_redirects=False).status_code == 303
    server.admin_post("/v1/admin/users/erin/enable")
    assert client.get("/ui/", follow_redirects=False).status_code == 200
    server.admin_post("/v1/admin/users/erin/password", json={"password": "a new password"})
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def ui_state_key(server: Any) -> bytes:
    class _Req:
        app = server.client.app

    return ui_state(_Req()).key  # type: ignore[arg-type]


def test_wrong_passwords_lock_the_account(server: Any) -> None:
    add_user(server.kx, "carol", "viewer")
    for _ in range(LOCK_AFTER):
        answer = login(server.client, "carol", "wrong password!")
        assert answer.status_code == 401
        assert "Wrong name or password" in answer.text
    locked = login(server.client, "carol")
    assert locked.status_code == 401
    assert "locked" in locked.text
    assert COOKIE not in server.client.cookies
    entries = server.admin_get("/v1/admin/audit?action=user.login&actor=user:carol")["entries"]
    assert len(entries) == LOCK_AFTER + 1
    assert {e["result"] for e in entries} == {"denied"}
    assert entries[0]["detail"]["reason"] == "locked"


def test_login_attempts_are_rate_limited_per_address(start_server: Any) -> None:
    server = start_server(auth_failure_rate=0.001, auth_failure_burst=3)
    add_user(server.kx, "dan", "viewer")
    answers = [login(server.client, "dan", "wrong password!").status_code for _ in range(4)]
    assert answers == [401, 401, 401, 429]
    assert login(server.client, "dan").status_code == 429  # even the right password waits


def test_a_device_error_with_html_is_shown_as_text(start_fleet: Any, fleet_repo: FleetRepo) -> None:
    staged_repo(fleet_repo)
    fleet = start_fleet()
    fleet.enroll(1)
    add_user(fleet.kx, "vera", "viewer")
    [(device_id, manifest)] = fleet.manifests().items()
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    body = {"phase": "failed", "serial": manifest.serial, "error": evil, "log_tail": evil}
    assert fleet.devices[device_id].status(fleet.client, body).status_code == 204
    assert login(fleet.client, "vera").status_code == 303
    for path in (f"/ui/devices/{device_id}", "/ui/devices", "/ui/devices?q=alert"):
        page = fleet.client.get(path)
        assert page.status_code == 200, page.text
        assert "<script>alert" not in page.text
        assert "<img src=x" not in page.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    live = fleet.client.get(f"/ui/api/devices/{device_id}").json()
    assert live["status"]["error"] == evil  # JSON carries the string; ui.js sets it as text


def test_pages_show_the_fleet_and_operators_pause_and_resume(
    start_fleet: Any, fleet_repo: FleetRepo
) -> None:
    staged_repo(fleet_repo)
    fleet = start_fleet()
    fleet.enroll(5)
    fleet.report_all()
    commit = release(fleet, fleet_repo, "1.1.0")
    [rollout] = fleet.rollouts()
    fleet_repo.write("groups/bad.yaml", "selector: ''\nbundles:\n  app: 9.9.9\n")
    refused_commit = fleet_repo.commit("a version nobody published")
    assert fleet.post("/v1/admin/reconcile")["state"] == "invalid"
    add_user(fleet.kx, "olga", "operator")
    add_user(fleet.kx, "vic", "viewer")
    client = fleet.client

    assert login(client, "vic").status_code == 303
    overview = client.get("/ui/")
    assert 'id="online">5<' in overview.text
    assert 'id="active-rollouts">1<' in overview.text
    devices = client.get("/ui/devices?label=ring%3Dstable&phase=healthy")
    assert devices.text.count('<tr data-device="') == 5
    assert client.get("/ui/devices?q=stable-03").text.count('<tr data-device="') == 1
    assert "no device matches" in client.get("/ui/devices?label=ring%3Dnone").text
    bad = client.get("/ui/devices?label=nolabel")
    assert bad.status_code == 400
    assert "not key=value" in bad.text
    revisions = client.get("/ui/revisions")
    assert commit[:12] in revisions.text
    assert refused_commit[:12] in revisions.text
    assert "groups/bad.yaml" in revisions.text
    assert "Stored bundles" in client.get("/ui/bundles").text
    device = client.get("/ui/devices/stable-00")
    assert "ring=stable" in device.text
    assert client.get("/ui/devices/nope").status_code == 404
    assert "pause" not in client.get("/ui/rollouts").text.split("<table")[1].split("</tr>")[0]
    token = csrf_of(client.get("/ui/rollouts"))
    refused = client.post(
        f"/ui/rollouts/{rollout['id']}/pause", data={"csrf": token, "confirm": "yes"}
    )
    assert refused.status_code == 403
    assert fleet.rollouts()[0]["state"] == "running"
    client.post("/ui/logout", data={"csrf": token})

    assert login(client, "olga").status_code == 303
    page = client.get("/ui/rollouts")
    assert f'id="pause-{rollout["id"]}"' in page.text
    token = csrf_of(page)
    confirm = client.post(f"/ui/rollouts/{rollout['id']}/pause", data={"csrf": token})
    assert confirm.status_code == 200
    assert "Yes, pause" in confirm.text
    assert fleet.rollouts()[0]["state"] == "running"  # not before the confirmation
    done = client.post(
        f"/ui/rollouts/{rollout['id']}/pause",
        data={"csrf": token, "confirm": "yes"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert fleet.rollouts()[0]["state"] == "paused"
    again = client.post(
        f"/ui/rollouts/{rollout['id']}/pause", data={"csrf": token, "confirm": "yes"}
    )
    assert again.status_code == 409
    client.post(f"/ui/rollouts/{rollout['id']}/resume", data={"csrf": token, "confirm": "yes"})
    assert fleet.rollouts()[0]["state"] == "running"
    entries = fleet.get("/v1/admin/audit?actor=user:olga")["entries"]
    acts = [(e["action"], e["result"]) for e in entries]
    assert ("rollout.pause", "ok") in acts
    assert ("rollout.resume", "ok") in acts
    denied = fleet.get("/v1/admin/audit?actor=user:vic&action=auth")["entries"]
    assert denied
    audit_page = client.get("/ui/audit?actor=user%3Aolga")
    assert "rollout.resume" in audit_page.text
    live = client.get("/ui/api/status").json()
    assert live["devices"]["online"] == 5


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/v1/admin"])
def test_login_never_redirects_off_the_dashboard(server: Any, target: str) -> None:
    add_user(server.kx, "nina", "viewer")
    form = server.client.get("/ui/login")
    answer = server.client.post(
        "/ui/login",
        data={"name": "nina", "password": PASSWORD, "csrf": csrf_of(form), "next": target},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/ui/"


def test_server_init_makes_a_private_session_key(tmp_path: Any) -> None:
    from kernex_server.setup import init_data_dir

    data = init_data_dir(tmp_path / "data", repo="", branch="main").data_dir
    key = data / "ui-session.key"
    assert len(key.read_bytes()) == 32
    assert key.stat().st_mode & 0o777 == 0o600
    again = init_data_dir(tmp_path / "data", repo="", branch="main").data_dir
    assert (again / "ui-session.key").read_bytes() == key.read_bytes()  # kept, not replaced
