"""The README's Quickstart, run for real, line by line: `kernex init`, a real server process
(`kernex server run`), `kernex login` with the admin token it printed, the example bundle
built from the fleet's own `hello/` and pushed, an enrollment token, a real agent process
(`kernex-agent`), and the device healthy on the version the example fleet pins."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
DOC_PORT = "8443"


def script_lines() -> list[str]:
    """The command lines of the fenced block after the kernex-quickstart-script marker."""
    text = README.read_text()
    block = text.split("<!-- kernex-quickstart-script", 1)[1].split("```sh\n", 1)[1]
    lines = block.split("```", 1)[0].splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in reversed(procs):  # the agent first, then the server
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_every_line_of_the_quickstart_runs(
    tmp_path: Path, background: list[subprocess.Popen[bytes]]
) -> None:
    assert (BIN / "kernex").exists()
    assert (BIN / "kernex-agent").exists()
    lines = script_lines()
    assert lines[0].startswith("kernex init fleet")
    (tmp_path / ".gitconfig").write_text("[user]\n\tname = Ops\n\temail = ops@example.com\n")
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "KERNEX_LOG_LEVEL": "WARNING",
        "LANG": "C.UTF-8",
        "COLUMNS": "200",
    }
    port = free_port()
    cwd = tmp_path
    outputs: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.replace(DOC_PORT, port)
        command = shlex.split(line, comments=True)
        where = f"line {number}: {raw}"
        if command[-1] == "&":  # a long-running process: started, checked, stopped at the end
            with (tmp_path / f"bg{number}.log").open("wb") as log:  # the child keeps its copy
                background.append(
                    subprocess.Popen(command[:-1], cwd=cwd, env=env, stdout=log, stderr=log)
                )
            continue
        marker = tmp_path / "cwd"
        done = subprocess.run(
            ["bash", "-c", f'set -eo pipefail\n{line}\npwd > "{marker}"'],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        for proc in background:
            assert proc.poll() is None, f"{where}: a background process exited: {proc.args}"
        assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}"
        cwd = Path(marker.read_text().strip())
        outputs[command[0] + " " + command[1]] = done.stdout
        # What the reader copies from the output into the next lines.
        if line.startswith("kernex server init"):
            env["ADMIN_TOKEN"] = re.findall(r"^kx_[\w-]+$", done.stdout, re.MULTILINE)[0]
        if line.startswith("kernex enroll-tokens create"):
            env["ENROLL_TOKEN"] = re.findall(r"^kxe_[\w-]+$", done.stdout, re.MULTILINE)[0]

    assert cwd == tmp_path / "fleet"
    assert (cwd / "hello" / "kernex-bundle.yaml").is_file()  # where ./hello comes from
    status = subprocess.run(
        [str(BIN / "kernex-agent"), "status", "--data-dir", str(tmp_path / "device")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    state = json.loads(status.stdout)
    assert state["installed"]["hello"]["version"] == "1.0.0"
    assert state["last_report"]["phase"] == "healthy"
    assert state["last_error"] is None
    listed = outputs["kernex devices"]
    assert state["device_id"] in listed
    assert "healthy" in listed
    assert os.access(cwd / "hello" / "hooks" / "install", os.X_OK)


def test_the_example_fleet_pins_the_bytes_of_its_own_bundle_source() -> None:
    """`kernex init` gives a fleet that is deployable: the hello 1.0.0 its defaults pin is
    exactly what `kernex bundle build hello` makes from the template's source."""
    import hashlib

    import yaml

    from kernex_cli.bundle_build import build_bundle

    template = ROOT / "fleet-repo-template"
    data = build_bundle(template / "hello")
    catalog = yaml.safe_load((template / "bundles" / "hello.yaml").read_text())
    pinned = catalog["versions"]["1.0.0"]
    assert pinned["sha256"] == hashlib.sha256(data).hexdigest()
    assert pinned["size"] == len(data)
    defaults = yaml.safe_load((template / "kernex.yaml").read_text())["defaults"]
    assert defaults["bundles"] == {"hello": "1.0.0"}
