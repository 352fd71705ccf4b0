"""Repository against real repositories: reading objects, resolving, committing, pushing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kit.git import git, make_repo, quiet_home, write  # noqa: F401 - autouse

from kernex_core.fleet import MAX_FILE_BYTES
from kernex_git import (
    GitCommandError,
    NotARepositoryError,
    Repository,
    UnknownRevisionError,
    init_repository,
    read_fleet_files,
)


def test_fleet_files_come_from_objects_in_one_batch(tmp_path: Path) -> None:
    repo_dir = tmp_path / "fleet"
    groups = {f"groups/g{i:03}.yaml": f"priority: {i}\n" for i in range(300)}
    sha = make_repo(
        repo_dir,
        {
            "kernex.yaml": "name: fleet\n",
            "devices/d1.yaml": "labels: {}\n",
            "devices/d2.yaml": "labels: {}\n",  # the same blob as d1
            "README.md": "not a fleet file\n",
            "groups/notes.txt": "not yaml\n",
            "bundles/big.yaml": b"x" * (MAX_FILE_BYTES + 500),
            **groups,
        },
    )
    os.symlink("g000.yaml", repo_dir / "groups/link.yaml")
    git(repo_dir, "add", "-A")
    git(repo_dir, "commit", "-q", "-m", "a symlink")
    write(repo_dir, {"kernex.yaml": "name: edited but not committed\n"})

    files = read_fleet_files(repo_dir, "HEAD")
    assert files["kernex.yaml"] == b"name: fleet\n"  # the commit, not the work tree
    assert files["devices/d1.yaml"] == files["devices/d2.yaml"] == b"labels: {}\n"
    assert files["groups/g299.yaml"] == b"priority: 299\n"
    assert len(files["bundles/big.yaml"]) == MAX_FILE_BYTES + 1  # cut, not read whole
    assert "README.md" not in files
    assert "groups/notes.txt" not in files
    assert "groups/link.yaml" not in files  # symlinks are not fleet files
    assert len(files) == 3 + 1 + 300
    assert read_fleet_files(repo_dir, sha) == files


def test_resolve_parent_ancestry_and_show(tmp_path: Path) -> None:
    repo_dir = tmp_path / "r"
    first = make_repo(repo_dir, {"a.txt": "one\n"})
    second = make_repo(repo_dir, {"a.txt": "two\n"})
    repo = Repository(repo_dir)
    assert repo.resolve("main") == second
    assert repo.resolve(first[:10]) == first
    assert repo.resolve("HEAD~1") == first
    assert repo.parent(second) == first
    assert repo.parent(first) is None
    assert repo.is_ancestor(first, second)
    assert not repo.is_ancestor(second, first)
    assert not repo.is_ancestor("0" * 40, second)
    assert repo.show(first, "a.txt") == b"one\n"
    assert repo.show(second, "missing.txt") is None


@pytest.mark.parametrize("rev", ["nope", "--output=/tmp/x", "HEAD~5"])
def test_unknown_revision_is_one_clear_error(tmp_path: Path, rev: str) -> None:
    make_repo(tmp_path / "r", {"a.txt": "one\n"})
    with pytest.raises(UnknownRevisionError) as caught:
        Repository(tmp_path / "r").resolve(rev)
    assert f"unknown revision '{rev}'" in caught.value.message
    assert caught.value.hint
    assert "git log" in caught.value.hint


def test_a_path_that_is_no_repository_says_so(tmp_path: Path) -> None:
    with pytest.raises(NotARepositoryError, match="does not exist"):
        Repository.open(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotARepositoryError, match="is not a Git repository") as caught:
        Repository.open(tmp_path / "plain")
    assert caught.value.hint
    assert "kernex init" in caught.value.hint


def test_open_finds_the_top_of_the_work_tree(tmp_path: Path) -> None:
    make_repo(tmp_path / "r", {"groups/a.yaml": "priority: 1\n"})
    assert Repository.open(tmp_path / "r" / "groups").path == (tmp_path / "r").resolve()


def test_a_hook_environment_does_not_redirect_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a Git hook GIT_DIR names the hook's repository; Kernex reads the one asked."""
    ours = make_repo(tmp_path / "ours", {"kernex.yaml": "name: ours\n"})
    make_repo(tmp_path / "theirs", {"kernex.yaml": "name: theirs\n"})
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "theirs" / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "theirs" / ".git" / "index"))
    repo = Repository.open(tmp_path / "ours")
    assert repo.head() == ours
    assert read_fleet_files(repo, "HEAD")["kernex.yaml"] == b"name: ours\n"


def test_commit_takes_only_the_named_paths_and_push_sends_them(tmp_path: Path) -> None:
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    work = tmp_path / "work"
    make_repo(work, {"groups/a.yaml": "priority: 1\n", "kernex.yaml": "name: f\n"})
    git(work, "remote", "add", "origin", str(origin))
    git(work, "push", "-q", "origin", "main")

    write(work, {"groups/a.yaml": "priority: 2\n", "kernex.yaml": "name: unrelated edit\n"})
    (work / "groups" / "new.yaml").write_text("priority: 3\n")
    repo = Repository.open(work)
    sha = repo.commit(["groups/a.yaml", "groups/new.yaml"], "change a, add new")
    assert repo.show(sha, "groups/a.yaml") == b"priority: 2\n"
    assert repo.show(sha, "groups/new.yaml") == b"priority: 3\n"
    assert repo.show(sha, "kernex.yaml") == b"name: f\n"
    assert repo.is_dirty("kernex.yaml")
    assert not repo.is_dirty("groups/a.yaml")
    assert repo.last_change("groups/a.yaml") == sha
    repo.push()
    assert Repository(origin).resolve("main") == sha


def test_a_rejected_push_is_a_git_error_with_a_hint(tmp_path: Path) -> None:
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    for name in ("a", "b"):
        make_repo(tmp_path / name, {"f.txt": f"{name}\n"})
        git(tmp_path / name, "remote", "add", "origin", str(origin))
    git(tmp_path / "a", "push", "-q", "origin", "main")
    with pytest.raises(GitCommandError) as caught:
        Repository.open(tmp_path / "b").push()
    assert caught.value.message.startswith("git push to origin failed: ")
    assert "rejected" in caught.value.message
    assert caught.value.hint
    assert "rebase" in caught.value.hint


def test_init_commits_with_a_fallback_identity_when_none_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ):
        monkeypatch.delenv(name)
    directory = tmp_path / "new"
    write(directory, {"kernex.yaml": "name: new\n"})
    repo = init_repository(directory, "first")
    assert repo.show("HEAD", "kernex.yaml") == b"name: new\n"
    assert git(directory, "log", "-1", "--format=%an <%ae> %s") == "Kernex <kernex@localhost> first"
