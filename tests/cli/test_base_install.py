"""The small device install, for real: the wheel built from this checkout, installed into
fresh virtual environments with only the base install (the agent) or with the ``[cli]``
extra, each command run as a process from outside the checkout.

pip takes the dependencies from the sources this machine is configured with (its index,
local mirrors and wheel cache), as a user's install would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kit.bundles import bundle_bytes
from kit.fleet import FleetRepo, kernex_yaml, sha
from kit.server import RunningServer

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
AGENT_NEEDS = ("kernex_agent", "kernex_core", "httpx", "yaml", "cryptography")
NOT_ON_A_DEVICE = (
    "sqlalchemy",
    "starlette",
    "alembic",
    "uvicorn",
    "psycopg",
    "prometheus_client",
    "typer",
    "rich",
    "ruamel",
)
OK_HOOK = "#!/bin/sh\nexit 0\n"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-deps", "-w", str(out), str(ROOT))
    [built] = out.glob("kernex_fleet-*.whl")
    return built


def pip(*args: str, python: Path | None = None) -> None:
    target = ["--python", str(python)] if python else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", *target, *args, "-q", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def make_venv(where: Path, requirement: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    pip("install", requirement, python=where / "bin" / "python")
    return where / "bin"


@pytest.fixture(scope="module")
def base(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a venv holding only `pip install kernex-fleet` (from the built wheel)."""
    return make_venv(tmp_path_factory.mktemp("base") / "venv", str(wheel))


def run(
    bin_dir: Path, *args: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(cwd),
        "KERNEX_LOG_LEVEL": "WARNING",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        cwd=cwd,  # outside the checkout: nothing is imported from the source tree
        env=env,
        check=False,
        timeout=timeout,
    )


def importable(bin_dir: Path, names: tuple[str, ...], cwd: Path) -> dict[str, bool]:
    code = (
        "import importlib.util, json, sys\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in sys.argv[1:]}))"
    )
    done = run(bin_dir, "python", "-c", code, *names, cwd=cwd)
    assert done.returncode == 0, done.stderr
    found: dict[str, bool] = json.loads(done.stdout)
    return found


def make_bundle(root: Path, version: str) -> bytes:
    return bundle_bytes(root, "app", version, install=OK_HOOK, health=OK_HOOK)


@pytest.fixture
def bundle(tmp_path: Path) -> bytes:
    return make_bundle(tmp_path / "src", "1.0.0")


@pytest.fixture
def fleet_repo(tmp_path: Path, bundle: bytes) -> FleetRepo:
    """A fleet every device can install: app 1.0.0, a real bundle the server holds."""
    repo = FleetRepo(tmp_path / "fleet")
    repo.write("kernex.yaml", kernex_yaml("1.0.0"))
    repo.write(
        "bundles/app.yaml",
        f"name: app\nversions:\n  1.0.0:\n    sha256: {sha(bundle)}\n    size: {len(bundle)}\n",
    )
    repo.commit("app 1.0.0, a real bundle")
    return repo


def test_the_base_install_is_the_agent_alone(base: Path, tmp_path: Path) -> None:
    found = importable(base, AGENT_NEEDS + NOT_ON_A_DEVICE, tmp_path)
    assert [n for n in AGENT_NEEDS if not found[n]] == []
    assert [n for n in NOT_ON_A_DEVICE if found[n]] == []

    helped = run(base, "kernex-agent", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert all(verb in helped.stdout for verb in ("enroll", "run", "status"))

    # The full command line is an extra: `kernex` says which, in one line.
    for args in (["--help"], ["status"], ["server", "run"]):
        refused = run(base, "kernex", *args, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "pip install 'kernex-fleet[cli]'" in refused.stderr
        assert "Traceback" not in refused.stderr

    # An agent command with nothing enrolled: the error and the next step, no traceback.
    status = run(base, "kernex-agent", "status", "--data-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert status.returncode == 1
    assert status.stderr.startswith("error: ")
    assert "hint: Run `kernex-agent enroll" in status.stderr
    assert "Traceback" not in status.stderr


def test_the_base_install_enrolls_and_converges_a_device(
    base: Path, kx_server: RunningServer, bundle: bytes, tmp_path: Path
) -> None:
    kx_server.admin("PUT", f"/v1/admin/bundles/{sha(bundle)}", content=bundle)
    token = kx_server.admin("POST", "/v1/admin/enrollment-tokens", json={"max_uses": 1})["token"]
    data_dir = tmp_path / "device"
    # fmt: off
    enrolled = run(
        base, "kernex-agent", "enroll", "--server", kx_server.base, "--token", token,
        "--device-id", "edge-small", "--label", "ring=canary", "--data-dir", str(data_dir),
        cwd=tmp_path,
    )
    # fmt: on
    assert enrolled.returncode == 0, enrolled.stderr
    assert enrolled.stdout.startswith(f"enrolled edge-small (accepted) in {data_dir}")

    once = run(base, "kernex-agent", "run", "--once", "--data-dir", str(data_dir), cwd=tmp_path)
    assert once.returncode == 0, once.stderr

    status = run(base, "kernex-agent", "status", "--data-dir", str(data_dir), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["installed"]["app"]["version"] == "1.0.0"
    assert state["last_manifest"]["revision"] == kx_server.repo.head()
    shown = kx_server.admin("GET", "/v1/admin/devices/edge-small")
    assert shown["status"]["phase"] == "healthy"
    assert shown["labels"]["ring"] == "canary"


def test_the_cli_extra_runs_without_the_server_extra(wheel: Path, tmp_path: Path) -> None:
    cli = make_venv(tmp_path / "venv", f"{wheel}[cli]")
    found = importable(cli, ("typer", "rich", "ruamel", "sqlalchemy", "starlette"), tmp_path)
    assert found == {
        "typer": True,
        "rich": True,
        "ruamel": True,
        "sqlalchemy": False,
        "starlette": False,
    }

    # Fleet commands work: init writes and commits the example fleet, validate reads Git.
    (tmp_path / ".gitconfig").write_text("[user]\n\tname = Ops\n\temail = ops@example.com\n")
    made = run(cli, "kernex", "init", "fleet", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    checked = run(cli, "kernex", "validate", "--repo", "fleet", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # The server is the other extra: named in one line; its help still shows.
    for args in (["server", "run"], ["demo"]):
        refused = run(cli, "kernex", *args, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "pip install 'kernex-fleet[server]'" in refused.stderr
        assert "Traceback" not in refused.stderr
    helped = run(cli, "kernex", "server", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "run" in helped.stdout


def test_the_full_install_runs_the_demo_from_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    """What a new user does first: `pip install 'kernex-fleet[all]'` into a fresh venv, then
    `kernex demo`, in a directory of their own, with no Git identity configured."""
    full = make_venv(tmp_path / "venv", f"{wheel}[all]")
    home = tmp_path / "home"
    home.mkdir()
    where = run(full, "python", "-c", "import kernex_cli; print(kernex_cli.__file__)", cwd=home)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv")  # not the checkout

    shown = run(
        full, "kernex", "demo", "--devices", "3", "--workspace", str(home / "ws"),
        cwd=home, timeout=300,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "Traceback" not in shown.stdout + shown.stderr
    assert "All 3 devices run hello 1.0.0" in shown.stdout
    assert "The story ran as told" in shown.stdout
