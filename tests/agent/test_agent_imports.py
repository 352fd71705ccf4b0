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


def test_the_agent_needs_no_tarfile_extraction_filters() -> None:
    """Python 3.11.0-3.11.3 (Debian 12's 3.11.2) has no ``tarfile.data_filter`` and
    ``extractall(filter=)`` raises TypeError there. The agent unpacks bundles itself
    (kernex_agent/unpack.py), so no code a device runs may use tarfile's extraction."""
    import ast
    from pathlib import Path

    import kernex_agent
    import kernex_core

    extraction = {"extractall", "data_filter", "tar_filter", "extraction_filter"}
    used = []
    for package in (kernex_agent, kernex_core):
        for path in Path(package.__file__).parent.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Attribute):
                    continue
                tar_extract = node.attr == "extract" and ast.unparse(node.value) != "self.fs"
                if node.attr in extraction or tar_extract:
                    used.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert used == []
