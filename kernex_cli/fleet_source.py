"""Where the CLI gets fleet files from: a working tree, Git objects, or the packaged template."""

from __future__ import annotations

import shutil
from pathlib import Path

from kernex_core.errors import KernexError
from kernex_core.fleet import FLEET_DIRS, FLEET_FILE, MAX_FILE_BYTES
from kernex_git import init_repository

TEMPLATE_DIR_NAME = "fleet-repo-template"


class FleetSourceError(KernexError):
    """A fleet repository or the example template could not be read or made."""


def template_dir(package_dir: Path | None = None) -> Path:
    """The example fleet that `kernex init` copies.

    In a wheel it sits inside the package (``kernex_cli/fleet-repo-template``, put there by
    the build's force-include); in a source checkout or an editable install it is at the
    repository root, next to the package.
    """
    here = package_dir or Path(__file__).resolve().parent
    for candidate in (here / TEMPLATE_DIR_NAME, here.parent / TEMPLATE_DIR_NAME):
        if (candidate / FLEET_FILE).is_file():
            return candidate
    raise FleetSourceError(
        f"the example fleet ({TEMPLATE_DIR_NAME}) is not installed next to {here}",
        hint="Reinstall Kernex (`pip install --force-reinstall kernex-fleet`).",
    )


def read_worktree_files(root: Path) -> dict[str, bytes]:
    """The fleet files as they are on disk now (committed or not); symlinks are skipped,
    as the server, which reads Git objects, skips them too."""
    if not root.is_dir():
        raise FleetSourceError(
            f"{root} does not exist or is not a directory",
            hint="Pass the fleet repository with --repo, or run `kernex init DIR` to make one.",
        )
    paths = [root / FLEET_FILE]
    for folder in FLEET_DIRS:
        if (root / folder).is_dir():
            paths.extend(sorted((root / folder).glob("*.yaml")))
    files: dict[str, bytes] = {}
    for path in paths:
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as handle:
            files[path.relative_to(root).as_posix()] = handle.read(MAX_FILE_BYTES + 1)
    return files


def init_fleet_repo(directory: Path) -> str:
    """Copy the example fleet into ``directory`` (absent or empty), commit it; return the sha."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FleetSourceError(
            f"{directory} exists and is not an empty directory",
            hint="Choose a new directory; `kernex init` never writes over files.",
        )
    source = template_dir()
    shutil.copytree(
        source,
        directory,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return init_repository(directory, "Start the fleet from the Kernex example").head()
