"""The CI script of docs/ci.md, run for real: a real server (uvicorn on loopback) that
fetches the fleet repository from its remote, a real agent process enrolled with
`kernex agent enroll`, and the script's `kernex` lines run one by one in the checkout."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit.bundles import bundle_bytes
from kit.cli import Kernex
from kit.fleet import FleetRepo, kernex_yaml, sha
from kit.server import RunningServer

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ci.md"
OK_HOOK = "#!/bin/sh\nexit 0\n"


def script_lines() -> list[str]:
    """The `kernex` lines of the fenced block after the kernex-ci-script marker."""
    text = DOCS.read_text()
    block = text.split("<!-- kernex-ci-script", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip().startswith("kernex ")]


def make_bundle(root: Path, version: str) -> bytes:
    return bundle_bytes(root, "app", version, install=OK_HOOK, health=OK_HOOK)


def catalog(bundles: dict[str, bytes]) -> str:
    lines = ["name: app", "versions:"]
    for version, data in bundles.items():
        lines += [f"  {version}:", f"    sha256: {sha(data)}", f"    size: {len(data)}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def bundles(tmp_path: Path) -> dict[str, bytes]:
    return {v: make_bundle(tmp_path / "src", v) for v in ("1.0.0", "1.1.0")}


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


@pytest.fixture
def fleet_repo(tmp_path: Path, origin: Path, bundles: dict[str, bytes]) -> FleetRepo:
    """The CI checkout: a clone-like working repository whose `origin` the server fetches."""
    repo = FleetRepo(tmp_path / "checkout")
    repo.write("kernex.yaml", kernex_yaml("1.0.0"))
    repo.write("bundles/app.yaml", catalog({"1.0.0": bundles["1.0.0"]}))
    repo.commit("app 1.0.0 everywhere")
    repo.git("remote", "add", "origin", str(origin))
    repo.git("push", "-q", "origin", "main")
    return repo


@pytest.fixture
def server_repo(origin: Path) -> str:
    return f"file://{origin}"  # a URL: the server clones and fetches, as from GitHub


@pytest.fixture
def agent(
    tmp_path: Path, kernex: Kernex, kx_server: RunningServer, bundles: dict[str, bytes]
) -> Iterator[Path]:
    kx_server.admin("PUT", f"/v1/admin/bundles/{sha(bundles['1.0.0'])}", content=bundles["1.0.0"])
    created = kernex("enroll-tokens", "create", "--uses", "1", "--json")
    assert created.exit_code == 0, created.output
    data_dir = tmp_path / "agent"
    enrolled = kernex(
        "agent",
        "enroll",
        "--server",
        kx_server.base,
        "--token",
        json.loads(created.stdout)["token"],
        "--device-id",
        "edge-ci",
        "--label",
        "ring=canary",
        "--data-dir",
        str(data_dir),
        connect=False,
    )
    assert enrolled.exit_code == 0, enrolled.output
    env = {**os.environ, "KERNEX_LOG_LEVEL": "WARNING"}
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernex_agent", "run", "--data-dir", str(data_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            shown = kx_server.admin("GET", "/v1/admin/devices/edge-ci")
            status = shown.get("status") or {}
            if status.get("phase") == "healthy" and status.get("serial") == shown["desired_serial"]:
                break
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, f"agent never got healthy: {shown}"
            time.sleep(0.2)
        yield data_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # stuck in a long poll: the test already failed
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def test_the_ci_script_runs_for_real(
    kernex: Kernex,
    kx_server: RunningServer,
    agent: Path,
    bundles: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    repo = kx_server.repo
    base_rev = repo.head()
    lines = script_lines()
    assert [ln.split()[1] for ln in lines] == ["validate", "plan", "bundle", "bundle", "deploy"]

    # What the pipeline has beside the fleet checkout: the app's source (./app, version
    # 1.1.0) and the release key from CI's secrets.
    source = repo.path / "app"
    built = make_bundle(tmp_path / "src-ci", "1.1.0")
    assert built == bundles["1.1.0"]  # reproducible: the same source, the same bytes
    (tmp_path / "src-ci" / "src-app-1.1.0").rename(source)  # kit.bundles names it so
    (repo.path / ".git" / "info" / "exclude").write_text("app/\ndist/\n")
    release_key = tmp_path / "release.key"
    made = kernex("keys", "create-release-key", str(release_key), connect=False)
    assert made.exit_code == 0, made.output
    monkeypatch.setenv("RELEASE_KEY_FILE", str(release_key))

    operator = kx_server.token_for("operator")  # what CI holds: KERNEX_SERVER, KERNEX_TOKEN
    monkeypatch.setenv("KERNEX_SERVER", kx_server.base)
    monkeypatch.setenv("KERNEX_TOKEN", operator)
    monkeypatch.setenv("BASE_REV", base_rev)
    monkeypatch.setenv("APP_VERSION", "1.1.0")
    monkeypatch.chdir(repo.path)
    outputs = {}
    for line in lines:
        args = [os.path.expandvars(a) for a in shlex.split(line, comments=True)][1:]
        result = kernex(*args, connect=False)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        outputs[args[0]] = result.output

    assert base_rev[:12] in outputs["plan"]  # the plan compared against BASE_REV
    # bundle push uploaded the bytes and recorded them, with the release signature
    uploaded = kx_server.admin("GET", "/v1/admin/bundles")
    assert sha(bundles["1.1.0"]) in json.dumps(uploaded)
    catalog_text = (repo.path / "bundles" / "app.yaml").read_text()
    assert sha(bundles["1.1.0"]) in catalog_text
    assert "release_signatures" in catalog_text
    assert "all 1 device(s) healthy" in outputs["deploy"]
    head = repo.head()
    assert repo.git("ls-remote", "origin", "main").split()[0] == head  # --push pushed
    status = kernex("agent", "status", "--data-dir", str(agent), "--json", connect=False)
    installed = json.loads(status.stdout)["installed"]
    assert installed["app"]["version"] == "1.1.0"
    assert json.loads(status.stdout)["last_manifest"]["revision"] == head
