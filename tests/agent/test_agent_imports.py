"""The agent stays small: importing it loads no server, CLI or heavy library."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("kernex_server", "kernex_cli", "sqlalchemy", "starlette", "git", "typer", "rich")


def test_importing_the_agent_loads_no_server_cli_or_heavy_library() -> None:
    code = (
        "import json, sys\n"
        "import kernex_agent, kernex_agent.agent, kernex_agent.runner, kernex_agent.enroll\n"
        "import kernex_agent.__main__, kernex_agent.cli\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    modules = json.loads(out)
    assert "kernex_agent.agent" in modules
    assert "httpx" in modules
    loaded = [m for m in modules if m.split(".")[0] in FORBIDDEN]
    assert loaded == []
