"""Every Git edge test sees only the Git configuration it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

IDENTITY = {
    "GIT_AUTHOR_NAME": "Kernex Tests",
    "GIT_AUTHOR_EMAIL": "tests@kernex.dev",
    "GIT_COMMITTER_NAME": "Kernex Tests",
    "GIT_COMMITTER_EMAIL": "tests@kernex.dev",
}


@pytest.fixture(autouse=True)
def quiet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME and no system config: the tests see only the Git config they write."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG_GLOBAL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in IDENTITY.items():
        monkeypatch.setenv(name, value)
    return home
