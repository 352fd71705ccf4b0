"""`kernex bundle build|push|list` against a real server process and a real fleet repo."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit.bundles import OK, bundle_source
from typer.testing import CliRunner

from kernex_cli.client import AdminClient, Connection
from kernex_cli.localserver import LocalServer
from kernex_cli.main import app
from kernex_cli.publish import inspect_archive, upload_bundle
from kernex_core import keys
from kernex_core.envelope import Signature
from kernex_core.release import verify_release

runner = CliRunner()
pytestmark = pytest.mark.e2e


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def make_bundle_dir(root: Path, version: str = "1.1.0") -> Path:
    files = {"payload.txt": f"hello {version}\n"}
    return bundle_source(root, "hello", version, install=OK, health=OK, files=files)


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    repo = tmp_path / "fleet"
    result = runner.invoke(app, ["init", str(repo)])
    assert result.exit_code == 0, result.output
    return repo


@pytest.fixture
def server_proc(tmp_path: Path, fleet: Path) -> Iterator[LocalServer]:
    with LocalServer(tmp_path / "server", repo=fleet) as running:
        yield running


def test_build_is_reproducible_and_signs(tmp_path: Path) -> None:
    src = make_bundle_dir(tmp_path)
    key = keys.generate_ed25519()
    key_file = tmp_path / "release.key"
    key_file.write_bytes(keys.private_key_to_pem(key))
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    result = runner.invoke(
        app, ["bundle", "build", str(src), "-o", str(first), "--sign-key", str(key_file)]
    )
    assert result.exit_code == 0, result.output
    (src / "payload.txt").touch()  # a newer mtime must not change the bytes
    again = runner.invoke(app, ["bundle", "build", str(src), "-o", str(second), "--json"])
    assert again.exit_code == 0, again.output
    assert first.read_bytes() == second.read_bytes()
    out = json.loads(again.output)
    assert out["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert (out["name"], out["version"], out["size"]) == ("hello", "1.1.0", first.stat().st_size)
    assert out["sha256"] in result.output
    sig_doc = json.loads((tmp_path / "a.tar.gz.sig.json").read_text())
    good = verify_release(
        [Signature.from_dict(s) for s in sig_doc["signatures"]],
        {keys.fingerprint(key.public_key()): key.public_key()},
        name="hello",
        version="1.1.0",
        sha256=out["sha256"],
        size=out["size"],
    )
    assert good == {keys.fingerprint(key.public_key())}


def test_build_without_metadata_fails_with_hint(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bundle", "build", str(tmp_path)])
    assert result.exit_code == 1
    assert "kernex-bundle.yaml" in result.output
    assert "hint" in result.output


def test_push_uploads_records_commits_and_is_idempotent(
    tmp_path: Path, fleet: Path, server_proc: LocalServer
) -> None:
    src = make_bundle_dir(tmp_path, "1.2.0")  # a version the catalog does not pin yet
    key_file = tmp_path / "release.key"
    key_file.write_bytes(keys.private_key_to_pem(keys.generate_ed25519()))
    archive = tmp_path / "hello-1.2.0.tar.gz"
    built = runner.invoke(
        app, ["bundle", "build", str(src), "-o", str(archive), "--sign-key", str(key_file)]
    )
    assert built.exit_code == 0, built.output
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    before = (fleet / "bundles/hello.yaml").read_text()
    conn = ["--server", server_proc.base_url, "--token", server_proc.admin_token]
    pushed = runner.invoke(
        app, ["bundle", "push", str(archive), "--repo", str(fleet), *conn, "--json"]
    )
    assert pushed.exit_code == 0, pushed.output
    out = json.loads(pushed.output)
    assert out["uploaded"] is True
    assert out["release_signatures"] == 1
    assert git(fleet, "log", "-1", "--format=%s").strip() == "bundle hello 1.2.0"
    after = (fleet / "bundles/hello.yaml").read_text()
    assert f"sha256: {sha}" in after
    assert f"size: {archive.stat().st_size}" in after
    assert "keyid: SHA256:" in after
    # the comments of the catalog file survive, and 1.0.0 is untouched
    assert [ln for ln in before.splitlines() if "#" in ln] == [
        ln for ln in after.splitlines() if "#" in ln
    ]
    assert "ebf105d4e81c494b153339fcb9ec089af1fab5add989162db036ccf3b936d3d4" in after
    # the server has exactly these bytes
    stored = httpx.get(
        f"{server_proc.base_url}/v1/admin/bundles",
        headers={"Authorization": f"Bearer {server_proc.admin_token}"},
    ).json()["bundles"]
    assert [(b["sha256"], b["size"]) for b in stored] == [(sha, archive.stat().st_size)]

    head = git(fleet, "rev-parse", "HEAD")
    again = runner.invoke(app, ["bundle", "push", str(archive), "--repo", str(fleet), *conn])
    assert again.exit_code == 0, again.output
    assert "no commit made" in again.output
    assert git(fleet, "rev-parse", "HEAD") == head

    listed = runner.invoke(app, ["bundle", "list", "--repo", str(fleet), *conn, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["bundles"]
    assert rows[0]["sha256"] == sha
    assert rows[0]["bundles"] == ["hello@1.2.0"]


def test_push_with_a_bad_token_commits_nothing(
    tmp_path: Path, fleet: Path, server_proc: LocalServer
) -> None:
    archive = tmp_path / "hello.tar.gz"
    built = runner.invoke(
        app, ["bundle", "build", str(make_bundle_dir(tmp_path, "1.2.0")), "-o", str(archive)]
    )
    assert built.exit_code == 0, built.output
    head = git(fleet, "rev-parse", "HEAD")
    result = runner.invoke(
        app,
        [
            "bundle",
            "push",
            str(archive),
            "-C",
            str(fleet),
            "--server",
            server_proc.base_url,
            "--token",
            "kx_wrong",
        ],
    )
    assert result.exit_code == 1
    assert "token" in result.output
    assert git(fleet, "rev-parse", "HEAD") == head


def test_build_refuses_a_bad_bundle_name(tmp_path: Path) -> None:
    src = make_bundle_dir(tmp_path)
    (src / "kernex-bundle.yaml").write_text(
        "name: Bad_Name\nversion: '1'\nhooks: {install: hooks/install, health: hooks/health}\n"
    )
    result = runner.invoke(app, ["bundle", "build", str(src), "-o", str(tmp_path / "x.tar.gz")])
    assert result.exit_code == 1
    assert "not a valid bundle name" in result.output


def _build_refused(tmp_path: Path, src: Path) -> str:
    out = tmp_path / "x.tar.gz"
    result = runner.invoke(app, ["bundle", "build", str(src), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    return result.output


def test_build_refuses_an_unquoted_number_as_version(tmp_path: Path) -> None:
    """`version: 1.10` is the float 1.1 to YAML: refused, with a hint to quote it."""
    src = make_bundle_dir(tmp_path)
    (src / "kernex-bundle.yaml").write_text(
        "name: hello\nversion: 1.10\nhooks: {install: hooks/install, health: hooks/health}\n"
    )
    output = _build_refused(tmp_path, src)
    assert "version is the number 1.1, not a string" in output
    assert 'version: "1.10"' in output


@pytest.mark.parametrize(
    ("body", "mode", "fragment", "hint"),
    [
        ("echo installing\n", 0o755, "does not start with '#!'", "#!/bin/sh"),
        ("#!/bin/sh\nexit 0\n", 0o644, "is not executable", "chmod +x"),
    ],
    ids=["no-shebang", "not-executable"],
)
def test_build_refuses_hooks_a_device_could_not_run(
    tmp_path: Path, body: str, mode: int, fragment: str, hint: str
) -> None:
    src = make_bundle_dir(tmp_path)
    (src / "hooks" / "install").write_text(body)
    (src / "hooks" / "install").chmod(mode)
    output = _build_refused(tmp_path, src)
    assert f"install hook file 'hooks/install' {fragment}" in output
    assert hint in output


def test_build_accepts_a_binary_hook(tmp_path: Path) -> None:
    src = make_bundle_dir(tmp_path)
    (src / "hooks" / "health").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 57)
    result = runner.invoke(app, ["bundle", "build", str(src), "-o", str(tmp_path / "b.tar.gz")])
    assert result.exit_code == 0, result.output


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_upload_cut_off_by_a_crash_is_cleaned_up_and_pushed_again(
    tmp_path: Path, fleet: Path, server_proc: LocalServer
) -> None:
    src = make_bundle_dir(tmp_path, "2.0.0")
    (src / "payload.bin").write_bytes(os.urandom(2 << 20))  # several upload chunks
    archive = tmp_path / "hello-2.0.0.tar.gz"
    built = runner.invoke(app, ["bundle", "build", str(src), "-o", str(archive)])
    assert built.exit_code == 0, built.output
    data = archive.read_bytes()
    info = inspect_archive(archive)
    tmp_dir = server_proc.data_dir / "blobs" / "tmp"
    auth = {"Authorization": f"Bearer {server_proc.admin_token}"}

    # an upload the server dies in the middle of leaves its half-written file behind
    halfway = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        halfway.wait(30)
        yield data[len(data) // 2 :]

    def upload() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.put(
                f"{server_proc.base_url}/v1/admin/bundles/{info.sha256}",
                content=body(),
                headers={**auth, "Content-Length": str(len(data))},
                timeout=30,
            )

    uploader = threading.Thread(target=upload)
    uploader.start()
    wait_for(lambda: any(p.stat().st_size > 0 for p in tmp_dir.glob("upload.*")))
    assert server_proc.proc is not None
    server_proc.proc.kill()
    server_proc.proc.wait()
    halfway.set()
    uploader.join(30)
    (left,) = tmp_dir.glob("upload.*")
    hour_ago = time.time() - 3601
    os.utime(left, (hour_ago, hour_ago))
    young = tmp_dir / "upload.young"  # not an hour old: could still be written to
    young.write_bytes(b"partial")

    # the upload finds the server down, starts again once it is back (its start removed
    # the stale file), and stores the bundle
    restarts: list[Exception] = []
    with AdminClient(Connection(server_proc.base_url, server_proc.admin_token)) as client:
        answer = upload_bundle(
            client, archive, info, on_restart=restarts.append, sleep=lambda _: server_proc.start()
        )
    assert len(restarts) == 1
    assert answer["sha256"] == info.sha256
    assert answer["created"] is True
    assert not left.exists()
    assert young.exists()
    assert [p.name for p in tmp_dir.iterdir()] == ["upload.young"]

    conn = ["--server", server_proc.base_url, "--token", server_proc.admin_token]
    pushed = runner.invoke(app, ["bundle", "push", str(archive), "--repo", str(fleet), *conn])
    assert pushed.exit_code == 0, pushed.output
    assert "already on the server" in pushed.output
    stored = httpx.get(f"{server_proc.base_url}/v1/admin/bundles", headers=auth).json()["bundles"]
    assert [(b["sha256"], b["size"]) for b in stored] == [(info.sha256, len(data))]
