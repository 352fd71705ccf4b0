"""One duration grammar: kernex.yaml, `--timeout` and `audit --since` accept and refuse the
same texts (a fleet file once took `1h30m` and the CLI did not)."""

from __future__ import annotations

import json

from kit.cli import Kernex
from kit.durations import DURATIONS, NOT_DURATIONS
from kit.fleet import kernex_yaml

# Zero parses, but all three places want a positive duration (manifest_ttl, --timeout,
# --since); it is refused everywhere here, as a value, not as a grammar.
ACCEPTED = list(DURATIONS)
REFUSED = [*NOT_DURATIONS, "0", "0s"]


def accepted_by_kernex_yaml(kernex: Kernex, text: str) -> bool:
    repo = kernex.server.repo
    policies = f"policies:\n  manifest_ttl: {json.dumps(text)}\n"
    repo.write("kernex.yaml", kernex_yaml() + policies)
    result = kernex("validate", "--repo", str(repo.path), connect=False)
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        assert "kernex.yaml" in result.output, result.output
        assert "manifest_ttl" in result.output, result.output
    return result.exit_code == 0


def accepted_by_timeout(kernex: Kernex, text: str, serial: int) -> bool:
    """`config set --wait` on a group without devices: once the server has the commit,
    there is nothing to wait for."""
    repo = str(kernex.server.repo.path)
    result = kernex(
        "config", "set", f"app.step={serial}", "-g", "canary", "-C", repo,
        "--wait", "--timeout", text,
    )  # fmt: skip
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert "--timeout" in result.output, result.output
    return result.exit_code == 0


def accepted_by_audit_since(kernex: Kernex, text: str) -> bool:
    result = kernex("audit", "--since", text, "--json")
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 0:
        assert json.loads(result.stdout)["entries"] is not None
    return result.exit_code == 0


def test_every_entry_point_reads_the_same_durations(kernex: Kernex) -> None:
    for serial, text in enumerate([*ACCEPTED, *REFUSED]):
        expected = text in ACCEPTED
        verdicts = {
            "kernex.yaml": accepted_by_kernex_yaml(kernex, text),
            "--timeout": accepted_by_timeout(kernex, text, serial),
            "audit --since": accepted_by_audit_since(kernex, text),
        }
        assert verdicts == dict.fromkeys(verdicts, expected), text
