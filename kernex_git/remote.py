"""Fetching a remote fleet repository into a local bare mirror the server reads.

The URL is given to git on each fetch and never written to the mirror's config, so a
token in it is not stored on disk by Kernex; every message shows it through
``redact_url``. Fetches run in the locked-down environment with network limits
(``GitEnv.server``); the ``--`` before the URL keeps it from being read as an option.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kernex_git.command import GitEnv, run_git
from kernex_git.errors import GitCommandError, GitTimeoutError
from kernex_git.redact import redact_url
from kernex_git.repo import Repository

log = logging.getLogger("kernex.git")

FETCH_HINT = (
    "Check the repository URL, the branch and the server's Git credentials "
    "(a credential helper or an SSH deploy key, see docs/security.md)."
)


def is_remote(repo: str) -> bool:
    """Whether ``repo`` is a URL or an scp-like address (else it is a local path)."""
    return "://" in repo or (repo.count(":") == 1 and "@" in repo.split(":")[0])


def fetch_branch(url: str, branch: str, mirror: Path, *, env: GitEnv) -> Repository:
    """Bring ``branch`` of ``url`` into the bare repository ``mirror`` (made on first use)
    as ``refs/heads/<branch>``; a forced push on the remote is followed."""
    repo = Repository(mirror, env=env)
    shown = redact_url(url)
    if not (mirror / "HEAD").is_file():
        log.info("starting a mirror of %s in %s", shown, mirror)
        run_git(["init", "--quiet", "--bare", str(mirror)], env=env)
    else:
        _forget_stored_url(repo)
    spec = f"+refs/heads/{branch}:refs/heads/{branch}"
    try:
        repo.run(
            "fetch", "--quiet", "--prune", "--no-tags", "--no-write-fetch-head", "--", url, spec,
            timeout=env.limits.timeout,
        )  # fmt: skip
    except GitTimeoutError as exc:
        raise GitTimeoutError(
            f"fetching {shown} ({branch}) took over {env.limits.timeout:g} s and was stopped",
            hint=FETCH_HINT,
        ) from exc
    except GitCommandError as exc:
        raise GitCommandError(
            f"cannot fetch {shown} ({branch}): {exc.stderr or exc.message}",
            returncode=exc.returncode,
            stderr=exc.stderr,
            hint=FETCH_HINT,
        ) from exc
    return repo


def _forget_stored_url(repo: Repository) -> None:
    """Mirrors made by older Kernex versions (``git clone --bare``) stored the URL, token
    and all, as ``remote.origin.url``; fetches name the URL themselves, so drop it."""
    try:
        config = (repo.path / "config").read_text("utf-8", "replace")
    except OSError:
        return
    if '[remote "origin"]' in config:
        repo.run("config", "--remove-section", "remote.origin", check=False)
