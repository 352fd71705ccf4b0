"""`kernex deploy --wait` when the server refuses the commit it made (here: the server
deploys signed commits only, and the commit is not signed)."""

from __future__ import annotations

from typing import Any

import pytest
from kit.cli import Kernex
from kit.server import RunningServer


@pytest.fixture
def server_settings() -> dict[str, Any]:
    return {"require_signed_commits": True}


def test_wait_reports_a_commit_the_server_refuses(kernex: Kernex, kx_server: RunningServer) -> None:
    repo = kx_server.repo
    result = kernex(
        "config", "set", "app.canary=false", "--group", "canary", "--repo", str(repo.path),
        "--wait", "--timeout", "30s",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"the server refused {repo.head()[:12]}: the commit is unsigned" in result.output
