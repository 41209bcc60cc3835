"""The PrometheusRule (manifests/monitoring) checked and unit-tested by the real promtool, and every
metric its alerts name exported by the operator."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import vmshift.metrics  # noqa: F401  (registers every metric)
from tests.ops.argocd import REPO
from vmshift.devcluster import promtool

RULE = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"
RULES_TEST = Path(__file__).parent / "promtool" / "rules-test.yaml"
METRIC = re.compile(r"\bvmshift_[a-z_]+\b")


def exported() -> set[str]:
    """Every sample name the operator's registry can expose (histogram series included)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


@pytest.fixture(scope="module")
def tool() -> Path:
    return promtool.ensure()


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    spec: dict[str, Any] = yaml.safe_load(RULE.read_text())["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / "rules-test.yaml")
    return tmp_path


def test_promtool_check_rules(tool: Path, rules: Path) -> None:
    out = subprocess.run([str(tool), "check", "rules", "rules.yaml"], cwd=rules, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"promtool check rules:\n{out.stdout}{out.stderr}"
    assert "SUCCESS: 6 rules found" in out.stdout, out.stdout


def test_promtool_test_rules(tool: Path, rules: Path) -> None:
    out = subprocess.run([str(tool), "test", "rules", "rules-test.yaml"], cwd=rules, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"promtool test rules:\n{out.stdout}{out.stderr}"


def test_every_alert_is_unit_tested_and_has_a_runbook() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULE.read_text())["spec"]["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert alerts == tested, f"untested alerts: {sorted(alerts - tested)}"
    operations = (REPO / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert f"### {alert}\n" in operations, f"docs/operations.md has no section for {alert}"


def test_every_metric_an_alert_names_is_exported() -> None:
    names = set(METRIC.findall(RULE.read_text())) - {"vmshift_operator"}
    assert names, "the rules name no vmshift metric"
    missing = names - exported()
    assert not missing, f"the rules name metrics the operator does not export: {sorted(missing)}"
