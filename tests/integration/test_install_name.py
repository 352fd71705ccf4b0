"""The distribution is `kernex-fleet`: `kernex` on the public index is an unrelated
project, so no doc, template or hint may tell anyone to `pip install kernex`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "kernex-fleet"

# `pip install [options] kernex` followed by anything but a name character or `-`:
# `kernex-fleet` and `kernex_fleet` pass, `kernex`, `kernex==1.0`, `'kernex[cli]'` do not.
BARE_NAME = re.compile(r"pip3?\s+install\s+(?:-{1,2}[\w-]+(?:[= ]\S+)?\s+)*['\"]?kernex(?![\w-])")


def texts() -> list[Path]:
    paths = [ROOT / "README.md", ROOT / "noxfile.py", ROOT / ".ci" / "run"]
    paths += sorted((ROOT / "docs").rglob("*.md"))
    paths += sorted(p for p in (ROOT / "fleet-repo-template").rglob("*") if p.is_file())
    paths += sorted((ROOT / "kernex_cli").rglob("*.py"))
    return paths


def test_the_distribution_is_named_kernex_fleet() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    assert project["scripts"]["kernex"] == "kernex_cli.main:main"


def test_no_doc_template_or_hint_installs_the_bare_name() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in texts()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if BARE_NAME.search(line)
    ]
    assert found == []


def test_the_pattern_tells_the_names_apart() -> None:
    for bad in ("pip install kernex", "pip install -q kernex==0.1", "pip install 'kernex[cli]'"):
        assert BARE_NAME.search(bad), bad
    for good in ("pip install kernex-fleet", "pip install 'kernex-fleet[cli]'", "pip install -e ."):
        assert not BARE_NAME.search(good), good


def test_the_docs_name_the_distribution() -> None:
    assert f"pip install {DISTRIBUTION}" in (ROOT / "README.md").read_text()
    workflow = ROOT / "fleet-repo-template" / ".github" / "workflows" / "kernex.yml"
    assert DISTRIBUTION in workflow.read_text()
