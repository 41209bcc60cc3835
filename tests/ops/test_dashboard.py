"""Every query of the Grafana dashboard names a metric the operator exports, and nothing else."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.ops.argocd import REPO
from tests.ops.test_prometheus_rules import exported

DASHBOARD = REPO / "manifests" / "monitoring" / "grafana-dashboard.json"
#: PromQL words that are not metric names.
PROMQL = {"sum", "by", "rate", "increase", "histogram_quantile", "le", "mode", "result", "reason", "phase", "kind",
          "host", "alertname", "severity", "source", "policy", "action", "decision", "verb", "resource", "code"}
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def queries() -> list[tuple[str, str]]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_query_names_an_exported_metric_and_no_other() -> None:
    names = exported()
    assert queries(), "the dashboard has no queries"
    for title, expr in queries():
        words = {w for w in IDENTIFIER.findall(re.sub(r"\[[^\]]*\]|\"[^\"]*\"", "", expr)) if w not in PROMQL}
        metrics = {w for w in words if w.startswith("vmshift_")}
        assert metrics, f"panel {title!r}: {expr!r} names no vmshift metric"
        assert words == metrics, f"panel {title!r}: {expr!r} uses unknown words {sorted(words - metrics)}"
        assert metrics <= names, f"panel {title!r} queries metrics the operator does not export: " \
                                 f"{sorted(metrics - names)}"


def test_the_new_operations_metrics_are_on_the_dashboard() -> None:
    shown = " ".join(expr for _, expr in queries())
    for metric in ("vmshift_migrations_in_flight", "vmshift_migration_transferred_bytes_total", "vmshift_build_info",
                   "vmshift_drains_blocked"):
        assert metric in shown, f"{metric} is not on the dashboard"


def test_the_monitoring_kustomization_ships_the_dashboard() -> None:
    text = (REPO / "manifests" / "monitoring" / "kustomization.yaml").read_text()
    assert "vmshift.json=grafana-dashboard.json" in text
