"""The CLI reaches Git through kernex_git: `kernex --help` loads no server, ORM or web stack."""

from __future__ import annotations

import json
import subprocess
import sys

from kit.git import quiet_home  # noqa: F401 - autouse fixture: no outside Git config

FORBIDDEN = ("kernex_server", "sqlalchemy", "starlette", "uvicorn", "alembic", "psycopg", "git")


def loaded_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    modules: list[str] = json.loads(out)
    return modules


def test_importing_the_cli_loads_no_server() -> None:
    modules = loaded_after("import kernex_cli.main")
    assert "kernex_cli.fleet_cmds" in modules
    assert "kernex_git" in modules
    assert [m for m in modules if m.split(".")[0] in FORBIDDEN] == []


def test_the_git_edge_imports_only_the_core() -> None:
    modules = loaded_after("import kernex_git")
    kernex = {m.split(".")[0] for m in modules if m.startswith("kernex_")}
    assert kernex == {"kernex_core", "kernex_git"}
