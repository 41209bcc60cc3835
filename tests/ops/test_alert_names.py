"""One set of hardware alert names: the agents raise them, the samples, rules and docs use them.

The sample RemediationPolicies once matched HostFanFailure and HostCorrectedMemoryErrorsHigh while the
agents raise FanFailure and CorrectedMemoryErrors, so they never fired.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vmshift.api.host import HardwareAlert, SensorKind
from vmshift.hypervisor.protocol import FanStatus, HealthSignal, PowerSupplyStatus, Sensors
from vmshift.remediation.alerts import host_signals_from_sensors

REPO = Path(__file__).resolve().parents[2]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _rule_alerts() -> set[str]:
    names = set()
    for doc in _docs(REPO / "manifests" / "monitoring" / "prometheusrule.yaml"):
        for group in doc["spec"]["groups"]:
            names |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    return names


def _referenced() -> dict[str, set[str]]:
    """Policy name -> every alertname or signal it matches on, across the samples."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / "manifests" / "samples").glob("*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") != "RemediationPolicy":
                continue
            spec = doc["spec"]
            names = {spec["match"]["alertname"]} if spec["match"].get("alertname") else set()
            names |= set((spec.get("correlation") or {}).get("signals") or ())
            out[doc["metadata"]["name"]] = names
    return out


def everything_failing() -> Sensors:
    return Sensors(fans=[FanStatus(index=i, rpm=0) for i in range(4)],
                   power_supplies=[PowerSupplyStatus(index=i, ok=False, watts=0) for i in range(2)],
                   temperature_c=120.0, corrected_memory_errors=1_000_000, corrected_memory_errors_per_hour=5000)


def test_the_agents_raise_exactly_the_hardware_alerts_the_api_names() -> None:
    alerts = host_signals_from_sensors("h1", everything_failing())
    assert {a.alertname for a in alerts} == {a.value for a in HardwareAlert}
    assert {a.labels["signal"] for a in alerts} == {k.value for k in SensorKind}
    assert {s.value for s in HealthSignal} == {k.value for k in SensorKind}


def test_every_alert_a_sample_policy_matches_is_raised_or_defined() -> None:
    known = {a.value for a in HardwareAlert} | {k.value for k in SensorKind} | _rule_alerts()
    referenced = _referenced()
    assert referenced, "the samples hold RemediationPolicies"
    unknown = {policy: sorted(names - known) for policy, names in referenced.items() if names - known}
    assert not unknown, f"sample policies match alerts nothing raises: {unknown} (known: {sorted(known)})"
    # and each sample policy names at least one alert the agents raise, so it can fire in the demo fleet
    assert all(names & {a.value for a in HardwareAlert} for names in referenced.values()), referenced


def test_the_operations_guide_documents_every_hardware_alert() -> None:
    guide = (REPO / "docs" / "operations.md").read_text()
    missing = [a.value for a in HardwareAlert if f"### {a.value}" not in guide]
    assert not missing, f"docs/operations.md lacks a section for {missing}"
