"""docs/alerts.rules.yml: every metric it uses is one the server exports, and promtool
(Debian package `prometheus`) accepts the rules and their unit tests when installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics_core import Metric

from kernex_server.metrics import AlertMetrics, DeviceCensus, Metrics, RolloutMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "alerts.rules.yml"
RULE_TESTS = Path(__file__).with_name("alert_rules_test.yml")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """The sample names a server's /metrics carries, built as create_app builds them."""
    metrics = Metrics()
    RolloutMetrics(metrics.registry)
    AlertMetrics(metrics.registry)
    metrics.watch_devices(DeviceCensus(), lambda _d: None, lambda: 300.0)
    metrics.watch_store(lambda: 0.0)
    families: list[Metric] = list(metrics.registry.collect())
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def test_the_rules_use_only_metrics_the_server_exports() -> None:
    exported = exported_names()
    exprs = rule_exprs()
    assert set(exprs) >= {
        "KernexRolloutHalted", "KernexCommitRefused", "KernexReconcileFailing",
        "KernexDevicesFailed", "KernexFleetOffline", "KernexAlertsUndelivered",
    }  # fmt: skip
    for name, expr in exprs.items():
        used = set(re.findall(r"\bkernex_[a-z_]+\b", expr))
        assert used, name
        assert used <= exported, f"{name} uses {sorted(used - exported)}"


def test_the_docs_reference_the_rules_file() -> None:
    assert "alerts.rules.yml" in (ROOT / "docs" / "operations.md").read_text()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in checked.stdout
    tested = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
