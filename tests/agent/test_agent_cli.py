"""`kernex agent enroll|run|status` through Typer's CliRunner, against the simulator on
127.0.0.1 (the commands build their own httpx client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit.bundles import OK, bundle_bytes
from kit.simulator import TOKEN, LoopbackServer, ServerSimulator
from typer.testing import CliRunner

from kernex_cli.main import app
from kernex_core import keys

runner = CliRunner()


@pytest.fixture
def simulator() -> Iterator[ServerSimulator]:
    sim = ServerSimulator()
    with LoopbackServer(sim):
        yield sim


def test_enroll_run_status(tmp_path: Path, simulator: ServerSimulator) -> None:
    sim = simulator
    data = tmp_path / "agent"
    release = keys.generate_ed25519()
    release_file = tmp_path / "release.pub"
    release_file.write_text(keys.public_key_to_pem(release.public_key()))
    result = runner.invoke(
        app,
        [
            "agent",
            "enroll",
            "--server",
            sim.base_url,
            "--token",
            TOKEN,
            "--device-id",
            "cli-dev",
            "--label",
            "site=lab",
            "--data-dir",
            str(data),
            "--server-key-fingerprint",
            sim.manifest_key_id,
            "--release-key",
            str(release_file),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["manifest_key_id"] == sim.manifest_key_id
    assert out["trust_mode"] == "manifest+release"
    assert (data / "device.key").stat().st_mode & 0o777 == 0o600
    assert "cli-dev" in sim.devices

    sim.release_key = release
    blob = sim.add_bundle(bundle_bytes(tmp_path, "app", "1.0.0", install=OK), "app", "1.0.0")
    sim.publish("cli-dev", [sim.entry(blob)])
    config = json.loads((data / "agent.json").read_text())
    config["poll_wait"] = 0
    (data / "agent.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["agent", "run", "--once", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["agent", "status", "--json", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["installed"]["app"]["version"] == "1.0.0"
    assert status["trust_mode"] == "manifest+release"
    assert status["journal"]["step"] == "committed"
    result = runner.invoke(app, ["agent", "status", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "app" in result.output
    assert "1.0.0" in result.output


def test_enroll_refuses_an_unexpected_server_key(
    tmp_path: Path, simulator: ServerSimulator
) -> None:
    other = keys.fingerprint(keys.generate_ed25519().public_key())
    result = runner.invoke(
        app,
        [
            "agent",
            "enroll",
            "--server",
            simulator.base_url,
            "--token",
            TOKEN,
            "--device-id",
            "dev-x",
            "--data-dir",
            str(tmp_path / "a"),
            "--server-key-fingerprint",
            other,
        ],
    )
    assert result.exit_code == 1
    assert "not the expected" in result.output
    assert not (tmp_path / "a" / "agent.json").exists()


def test_enroll_with_a_bad_token_and_usage_errors(
    tmp_path: Path, simulator: ServerSimulator
) -> None:
    base = ["agent", "enroll", "--server", simulator.base_url, "--data-dir", str(tmp_path / "a")]
    bad = runner.invoke(app, [*base, "--token", "nope", "--device-id", "dev-y"])
    assert bad.exit_code == 1
    assert "enrollment refused (403)" in bad.output
    neither = runner.invoke(app, base)
    assert neither.exit_code == 2


def test_run_without_enrollment_explains(tmp_path: Path) -> None:
    result = runner.invoke(app, ["agent", "run", "--once", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "kernex-agent enroll" in result.output


def test_enroll_on_503_does_not_blame_the_token(
    tmp_path: Path, simulator: ServerSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose database is down answers 503: enrollment waits it out (here: no
    patience at all), and then says the server is unavailable, not that the token is bad."""
    from kernex_agent import enroll as enroll_module

    monkeypatch.setattr(enroll_module, "RATE_LIMIT_PATIENCE", 0.0)
    simulator.status_code = 503
    result = runner.invoke(
        app,
        [
            "agent",
            "enroll",
            "--server",
            simulator.base_url,
            "--data-dir",
            str(tmp_path / "a"),
            "--token",
            TOKEN,
            "--device-id",
            "dev-z",
        ],
    )
    assert result.exit_code == 1
    assert "the server is unavailable (503)" in result.output
    assert "token was not checked" in result.output
    assert "Check the enrollment token" not in result.output
