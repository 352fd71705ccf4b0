"""`kernex init`, `validate` and `plan` against real Git repositories in temporary dirs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernex_cli.fleet_source import template_dir
from kernex_cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def fleet_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "fleet"
    result = runner.invoke(app, ["init", str(repo)])
    assert result.exit_code == 0, result.output
    return repo


def edit(repo: Path, path: str, old: str, new: str) -> None:
    file = repo / path
    text = file.read_text()
    assert old in text, f"{old!r} not in {path}"
    file.write_text(text.replace(old, new, 1))


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "--all")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_init_makes_a_committed_valid_fleet(fleet_repo: Path) -> None:
    assert (fleet_repo / "kernex.yaml").is_file()
    assert (fleet_repo / ".github/workflows/kernex.yml").is_file()
    assert git(fleet_repo, "status", "--porcelain") == ""
    assert git(fleet_repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    result = runner.invoke(app, ["validate", "--repo", str(fleet_repo)])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output
    result = runner.invoke(app, ["validate", "--repo", str(fleet_repo), "--rev", "HEAD", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["valid"] is True
    assert data["revision"] == git(fleet_repo, "rev-parse", "HEAD")


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert "not an empty directory" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


BREAKAGES = [
    # (file, old, new, expected "file:line:col", expected message part)
    ("groups/canary.yaml", "priority: 10", "priorty: 10", "groups/canary.yaml:6:1",
     "unknown key 'priorty'"),
    ("groups/canary.yaml", "hello: 1.1.0", "hello: 9.9.9", "groups/canary.yaml:8:10",
     "version '9.9.9' of bundle 'hello' is not in the catalog"),
    ("groups/lab.yaml", "site=lab, !retired", "site=lab, !", "groups/lab.yaml:2:22",
     "selector syntax error"),
    ("bundles/hello.yaml", "sha256: ebf105d4", "sha256: XYZ", "bundles/hello.yaml:7:13",
     "sha256 must be 64 lowercase hex digits"),
    ("kernex.yaml", "offline_after: 5m", "offline_after: soon", "kernex.yaml:8:18",
     "expected a duration"),
    ("devices/edge-001.yaml", "ring: canary", "ring: [canary]", "devices/edge-001.yaml:5:9",
     "expected a string, found list"),
    ("groups/canary.yaml", "waves: [10%, 50%, 100%]", "waves: [10%, 50%]",
     "groups/canary.yaml:13:16", "the last wave must be 100%"),
    ("kernex.yaml", "apiVersion: kernex/v1", "apiVersion: kernex/v2", "kernex.yaml:3:13",
     "apiVersion must be kernex/v1"),
    ("groups/all.yaml", "priority: 0", "priority: [0", "groups/all.yaml:6:1",
     "YAML syntax error"),
    ("devices/lab-bench-1.yaml", "hello: 1.0.0", "helo: 1.0.0", "devices/lab-bench-1.yaml:5:3",
     "bundle 'helo' is not in the catalog"),
    ("bundles/agent-tools.yaml", "name: agent-tools", "name: tools",
     "bundles/agent-tools.yaml:1:7", "name is 'tools' but the file is bundles/agent-tools.yaml"),
    ("devices/edge-001.yaml", "key_fingerprint: SHA256:", "key_fingerprint: MD5:",
     "devices/edge-001.yaml:8:18", "is not a valid key fingerprint"),
]  # fmt: skip


def test_twelve_breakages_give_twelve_located_errors(fleet_repo: Path) -> None:
    for file, old, new, _, _ in BREAKAGES:
        edit(fleet_repo, file, old, new)
    result = runner.invoke(app, ["validate", "--repo", str(fleet_repo)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if re.match(r"^\S+\.yaml:\d+", line)]
    assert len(lines) == len(BREAKAGES), result.output
    for _, _, _, where, message in BREAKAGES:
        assert any(line.startswith(f"{where}: ") and message in line for line in lines), (
            where,
            result.output,
        )
    assert f"{len(BREAKAGES)} errors" in result.output
    assert "hint: Did you mean 'priority'?" in result.output
    # The committed revision is still valid: --rev reads Git objects, not the working tree.
    result = runner.invoke(app, ["validate", "--repo", str(fleet_repo), "--rev", "HEAD"])
    assert result.exit_code == 0, result.output


def test_validate_json_lists_issues(fleet_repo: Path) -> None:
    edit(fleet_repo, "groups/canary.yaml", "priority: 10", "priorty: 10")
    result = runner.invoke(app, ["validate", "--repo", str(fleet_repo), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["valid"] is False
    assert data["issues"] == [
        {
            "file": "groups/canary.yaml",
            "line": 6,
            "column": 1,
            "key_path": "groups.canary.priorty",
            "message": "unknown key 'priorty'",
            "hint": "Did you mean 'priority'?",
        }
    ]


def test_validate_errors_for_missing_repo_and_unknown_rev(tmp_path: Path, fleet_repo: Path) -> None:
    result = runner.invoke(app, ["validate", "--repo", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    result = runner.invoke(app, ["validate", "--repo", str(fleet_repo), "--rev", "nope"])
    assert result.exit_code == 1
    assert "unknown revision 'nope'" in result.output
    plain = tmp_path / "plain"
    plain.mkdir()
    result = runner.invoke(app, ["plan", "--repo", str(plain)])
    assert result.exit_code == 1
    assert "is not a Git repository" in result.output


def test_plan_between_two_commits_in_every_format(fleet_repo: Path) -> None:
    base = git(fleet_repo, "rev-parse", "HEAD")
    edit(fleet_repo, "groups/canary.yaml", "hello: 1.1.0", "hello: 1.0.0")
    edit(fleet_repo, "groups/canary.yaml", "log_level: debug", "log_level: trace")
    edit(fleet_repo, "groups/lab.yaml", "agent-tools: 0.9.2", "agent-tools: null")
    edit(fleet_repo, "devices/edge-001.yaml", "ring: canary", "ring: stable")
    edit(fleet_repo, "devices/lab-bench-1.yaml", "hello: 1.0.0", "hello: 1.1.0")
    head = commit(fleet_repo, "Change the fleet")

    result = runner.invoke(app, ["plan", "--repo", str(fleet_repo), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["base"], data["head"]) == (base, head)
    devices = {d["device_id"]: d for d in data["devices"]}
    edge = devices["edge-001"]
    assert edge["groups_left"] == ["canary"]
    assert edge["bundles"] == [
        {"name": "hello", "kind": "downgraded", "old": "1.1.0", "new": "1.0.0", "warning": True}
    ]
    assert {c["path"] for c in edge["config"]} == {"hello.log_level"}
    bench = devices["lab-bench-1"]
    assert [(b["name"], b["kind"]) for b in bench["bundles"]] == [
        ("agent-tools", "removed"),
        ("hello", "upgraded"),
    ]
    assert data["summary"]["bundles_downgraded"] == 1

    result = runner.invoke(app, ["plan", "--repo", str(fleet_repo)])
    assert result.exit_code == 0, result.output
    assert "⚠ hello 1.1.0 → 1.0.0 (DOWNGRADE)" in result.output
    assert "⚠ agent-tools 0.9.2 (REMOVE)" in result.output
    assert "leaves group canary" in result.output

    result = runner.invoke(
        app, ["plan", "--repo", str(fleet_repo), "--base", base, "--head", head, "-f", "markdown"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("## Kernex plan")
    assert "| ⚠ bundles downgraded | 1 |" in result.output
    assert "### ⚠ `edge-001`" in result.output


def test_plan_of_the_root_commit_compares_with_an_empty_fleet(fleet_repo: Path) -> None:
    result = runner.invoke(app, ["plan", "--repo", str(fleet_repo), "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["base"] is None
    assert data["summary"]["devices_added"] == 2


def test_plan_detailed_exitcode(fleet_repo: Path) -> None:
    args = ["plan", "--repo", str(fleet_repo), "--detailed-exitcode"]
    assert runner.invoke(app, args).exit_code == 2  # root commit: everything is new
    head = git(fleet_repo, "rev-parse", "HEAD")
    same = [*args, "--base", head, "--head", head]
    result = runner.invoke(app, same)
    assert result.exit_code == 0, result.output
    assert "No changes" in result.output
    edit(fleet_repo, "groups/canary.yaml", "hello: 1.1.0", "hello: 7.0.0")
    commit(fleet_repo, "Name a version that is not in the catalog")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "groups/canary.yaml:8:10: version '7.0.0' of bundle 'hello'" in result.output
    assert "the head revision" in result.output


def test_plan_includes_inventory_devices(fleet_repo: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"rpi-7": {"ring": "canary"}}))
    result = runner.invoke(
        app, ["plan", "--repo", str(fleet_repo), "-f", "json", "--inventory", str(inventory)]
    )
    assert result.exit_code == 0, result.output
    ids = [d["device_id"] for d in json.loads(result.output)["devices"]]
    assert ids == ["edge-001", "lab-bench-1", "rpi-7"]


def test_template_is_found_in_both_layouts(tmp_path: Path) -> None:
    assert template_dir() == ROOT / "fleet-repo-template"
    installed = tmp_path / "site-packages" / "kernex_cli"
    (installed / "fleet-repo-template").mkdir(parents=True)
    (installed / "fleet-repo-template" / "kernex.yaml").write_text("apiVersion: kernex/v1\n")
    assert template_dir(installed) == installed / "fleet-repo-template"


@pytest.mark.slow
def test_wheel_ships_the_template_and_init_works_from_it(tmp_path: Path) -> None:
    if not (ROOT / "migrations").is_dir():
        pytest.skip("the wheel build needs migrations/ (the server's)")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("kernex_fleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kernex_cli/fleet-repo-template/kernex.yaml" in names
    assert "kernex_cli/fleet-repo-template/.github/workflows/kernex.yml" in names
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    fleet = tmp_path / "from-wheel"
    code = (
        "import kernex_cli, sys; from kernex_cli.main import app; "
        "assert kernex_cli.__file__.startswith(sys.argv[1]), kernex_cli.__file__; "
        "app(['init', sys.argv[2]])"
    )
    # -S skips site, so the editable install's path hook cannot shadow the unpacked wheel;
    # the dependencies still come from this environment's site-packages.
    path = f"{target}:{sysconfig.get_paths()['purelib']}:{sysconfig.get_paths()['platlib']}"
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, str(target), str(fleet)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (fleet / "groups" / "canary.yaml").is_file()
    assert git(fleet, "log", "--format=%s") == "Start the fleet from the Kernex example"
