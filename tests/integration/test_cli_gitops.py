"""deploy, rollback and config set/unset against real Git repositories made by `kernex init`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernex_cli.main import app

runner = CliRunner()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    repo = tmp_path / "fleet"
    result = runner.invoke(app, ["init", str(repo)])
    assert result.exit_code == 0, result.output
    return repo


def commits(repo: Path) -> list[str]:
    return git(repo, "log", "--format=%s").splitlines()


def test_deploy_commits_one_line_change_and_keeps_comments(fleet: Path) -> None:
    before = (fleet / "groups/canary.yaml").read_text()
    assert "hello: 1.1.0" in before
    result = runner.invoke(
        app, ["deploy", "hello@1.0.0", "--group", "canary", "--repo", str(fleet)]
    )
    assert result.exit_code == 0, result.output
    after = (fleet / "groups/canary.yaml").read_text()
    assert commits(fleet)[0] == "deploy hello@1.0.0 to group canary"
    diff = git(fleet, "diff", "HEAD~1", "--unified=0", "--", "groups/canary.yaml")
    changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    assert changed == ["-  hello: 1.1.0", "+  hello: 1.0.0"]
    # every comment line of the file survived the edit
    assert [ln for ln in before.splitlines() if "#" in ln] == [
        ln for ln in after.splitlines() if "#" in ln
    ]
    assert "hello" in result.output  # the plan names what changes


def test_deploy_json_reports_the_commit_and_plan(fleet: Path) -> None:
    result = runner.invoke(
        app, ["deploy", "hello@1.0.0", "-g", "canary", "-C", str(fleet), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["commit"] == git(fleet, "rev-parse", "HEAD").strip()
    assert out["plan"]


def test_deploy_dry_run_writes_nothing(fleet: Path) -> None:
    head = git(fleet, "rev-parse", "HEAD")
    result = runner.invoke(
        app, ["deploy", "hello@1.0.0", "-g", "canary", "-C", str(fleet), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output
    assert git(fleet, "rev-parse", "HEAD") == head
    assert git(fleet, "status", "--porcelain") == ""


def test_deploy_refuses_a_version_missing_from_the_catalog(fleet: Path) -> None:
    head = git(fleet, "rev-parse", "HEAD")
    result = runner.invoke(app, ["deploy", "hello@9.9.9", "-g", "canary", "-C", str(fleet)])
    assert result.exit_code == 1
    assert "not in the catalog" in result.output
    assert "kernex bundle push" in result.output
    assert git(fleet, "rev-parse", "HEAD") == head


def test_deploy_usage_errors_exit_2(fleet: Path) -> None:
    both = runner.invoke(
        app, ["deploy", "hello@1.0.0", "-g", "canary", "-d", "x", "-C", str(fleet)]
    )
    assert both.exit_code == 2
    bad_ref = runner.invoke(app, ["deploy", "hello", "-g", "canary", "-C", str(fleet)])
    assert bad_ref.exit_code == 2


def test_deploy_to_an_unknown_group_fails_clearly(fleet: Path) -> None:
    result = runner.invoke(app, ["deploy", "hello@1.0.0", "-g", "nosuch", "-C", str(fleet)])
    assert result.exit_code == 1
    assert "groups/nosuch.yaml" in result.output


def test_deploy_to_a_device_creates_its_file_with_new(fleet: Path) -> None:
    refused = runner.invoke(app, ["deploy", "hello@1.0.0", "-d", "dev-new", "-C", str(fleet)])
    assert refused.exit_code == 1, refused.output
    assert not (fleet / "devices/dev-new.yaml").exists()
    result = runner.invoke(
        app, ["deploy", "hello@1.0.0", "-d", "dev-new", "--new", "-C", str(fleet)]
    )
    assert result.exit_code == 0, result.output
    assert "hello: 1.0.0" in (fleet / "devices/dev-new.yaml").read_text()
    assert commits(fleet)[0] == "deploy hello@1.0.0 to device dev-new"


def test_rollback_restores_the_state_before_the_last_change(fleet: Path) -> None:
    original = (fleet / "groups/canary.yaml").read_text()
    assert (
        runner.invoke(app, ["deploy", "hello@1.0.0", "-g", "canary", "-C", str(fleet)]).exit_code
        == 0
    )
    n = len(commits(fleet))
    result = runner.invoke(app, ["rollback", "-g", "canary", "-C", str(fleet)])
    assert result.exit_code == 0, result.output
    assert (fleet / "groups/canary.yaml").read_text() == original
    assert len(commits(fleet)) == n + 1  # a new commit; history is not rewritten
    assert commits(fleet)[0].startswith("rollback group canary to ")


def test_rollback_to_an_unknown_revision_fails(fleet: Path) -> None:
    result = runner.invoke(app, ["rollback", "-g", "canary", "--to", "nosuch", "-C", str(fleet)])
    assert result.exit_code == 1
    assert "unknown revision" in result.output


def test_config_set_and_unset(fleet: Path) -> None:
    result = runner.invoke(app, ["config", "set", "net.port=8080", "-g", "lab", "-C", str(fleet)])
    assert result.exit_code == 0, result.output
    text = (fleet / "groups/lab.yaml").read_text()
    assert "port: 8080" in text  # a number, not the string '8080'
    assert commits(fleet)[0] == "config set net.port=8080 for group lab"
    result = runner.invoke(app, ["config", "unset", "net.port", "-g", "lab", "-C", str(fleet)])
    assert result.exit_code == 0, result.output
    assert "net:" not in (fleet / "groups/lab.yaml").read_text()


def test_an_edit_that_would_make_the_fleet_invalid_writes_nothing(fleet: Path) -> None:
    # A second group at canary's priority, matching the same devices, harmless for now.
    (fleet / "groups/canary-extra.yaml").write_text("selector: ring=canary\npriority: 10\n")
    git(fleet, "add", "-A")
    git(fleet, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "extra group")
    head = git(fleet, "rev-parse", "HEAD")
    # Setting a key canary also sets, at equal priority, is a conflict: refused.
    result = runner.invoke(
        app, ["config", "set", "hello.log_level=info", "-g", "canary-extra", "-C", str(fleet)]
    )
    assert result.exit_code == 1, result.output
    assert "canary" in result.output
    assert git(fleet, "rev-parse", "HEAD") == head
    assert git(fleet, "status", "--porcelain") == ""


def test_edits_refuse_a_file_with_uncommitted_changes(fleet: Path) -> None:
    (fleet / "groups/canary.yaml").write_text(
        (fleet / "groups/canary.yaml").read_text() + "\n# local note\n"
    )
    result = runner.invoke(app, ["deploy", "hello@1.0.0", "-g", "canary", "-C", str(fleet)])
    assert result.exit_code == 1
    assert "uncommitted changes" in result.output


def test_create_release_key(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "release.key"
    result = runner.invoke(app, ["keys", "create-release-key", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert out.stat().st_mode & 0o777 == 0o600
    assert info["keyid"].startswith("SHA256:")
    again = runner.invoke(app, ["keys", "create-release-key", str(out)])
    assert again.exit_code == 1
    assert "--force" in again.output


@pytest.mark.parametrize(
    "command",
    [
        ["deploy", "hello@1.0.0", "--group", "all"],
        ["config", "set", "log.level=debug", "--group", "all"],
        ["rollback", "--group", "all"],
    ],
    ids=lambda c: c[0],
)
def test_an_edit_on_an_invalid_head_lists_its_errors(fleet: Path, command: list[str]) -> None:
    (fleet / "groups/lab.yaml").write_text("selector: [unclosed\n")
    git(fleet, "commit", "-qam", "break the lab group")
    head = git(fleet, "rev-parse", "HEAD")
    result = runner.invoke(app, [*command, "--repo", str(fleet)])
    assert result.exit_code == 1, result.output
    assert "groups/lab.yaml:2:1: YAML syntax error" in result.stderr
    assert "error: fleet repository is invalid: 1 error" in result.stderr
    assert result.stdout == ""
    assert git(fleet, "rev-parse", "HEAD") == head


def test_rollback_restores_a_deleted_device_file(fleet: Path) -> None:
    original = (fleet / "devices/edge-001.yaml").read_text()
    git(fleet, "rm", "-q", "devices/edge-001.yaml")
    git(fleet, "commit", "-qm", "drop edge-001's file")
    result = runner.invoke(app, ["rollback", "--device", "edge-001", "-C", str(fleet)])
    assert result.exit_code == 0, result.output
    assert (fleet / "devices/edge-001.yaml").read_text() == original
