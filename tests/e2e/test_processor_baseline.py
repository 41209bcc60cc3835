"""Processor compatibility computed from the fleet (like vSphere's EVC), through the real API server:
the guest sees what every host its selector allows offers; relabelling a host changes the baseline
for the next start only, and the VM says so until it restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.processor import processor_info

pytestmark = pytest.mark.e2e

ICELAKE, HASWELL = processor_info("icelake").features, processor_info("haswell").features


@pytest.fixture
def haswell_in_r1(fleet: Fleet) -> Iterator[None]:
    yield
    fleet.kube.kubectl("label", "host", "h-haswell", "rack=r1", "--overwrite")


def condition(status: dict[str, Any], type: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type), {})


def test_the_baseline_spans_the_allowed_hosts_and_changes_at_the_next_start(fleet: Fleet, haswell_in_r1: None) -> None:
    ns = fleet.namespace()
    selector = {"hostSelector": {"matchLabels": {"rack": "r2"}}}  # Intel: h-icelake-2 only (h-zen3 is AMD)
    status = fleet.running_vm(ns, "evc", host="h-icelake-2", compatibility=True, keep_pin=True,
                              placement=dict(selector))
    processor = status["processor"]
    assert processor["baseline"] == {"vendor": "Intel", "features": sorted(ICELAKE), "hostCount": 1}
    assert set(processor["features"]) == ICELAKE, "all of icelake: more than the fixed x86_64_v2 of old"
    assert condition(status, "ProcessorBaseline")["reason"] == "Current"
    # a haswell joins rack r2: the baseline shrinks, the running guest keeps what it started with
    fleet.kube.kubectl("label", "host", "h-haswell", "rack=r2", "--overwrite")

    def changed() -> dict[str, Any] | None:
        now = fleet.status("vsvm", "evc", ns)
        return now if condition(now, "ProcessorBaseline").get("reason") == "ProcessorBaselineChanged" else None
    status = wait_for(changed, "the VM to say its processor baseline changed", 90,
                      describe=lambda: json.dumps(fleet.status("vsvm", "evc", ns))[:2000])
    assert status["processor"]["baseline"]["hostCount"] == 2
    assert set(status["processor"]["baseline"]["features"]) == ICELAKE & HASWELL
    assert "avx512f" in status["processor"]["features"], "a running guest's features never change"
    message = condition(status, "ProcessorBaseline")["message"]
    assert condition(status, "ProcessorBaseline")["status"] == "False" and "restart it" in message, message
    # restarted, it takes the new baseline and can go to the haswell
    fleet.kube.kubectl("patch", "vsvm", "evc", "-n", ns, "--type=merge", "-p", '{"spec":{"running":false}}')
    fleet.wait_phase("vsvm", "evc", ns, {"Stopped"})
    fleet.kube.kubectl("patch", "vsvm", "evc", "-n", ns, "--type=merge", "-p", '{"spec":{"running":true}}')

    def current() -> dict[str, Any] | None:
        now = fleet.status("vsvm", "evc", ns)
        return now if now.get("phase") == "Running" and condition(now, "ProcessorBaseline").get("reason") == \
            "Current" else None
    status = wait_for(current, "the restarted VM to see the new baseline", 60,
                      describe=lambda: json.dumps(fleet.status("vsvm", "evc", ns))[:2000])
    assert set(status["processor"]["features"]) == ICELAKE & HASWELL
    fleet.unpin(ns, "evc")
    fleet.apply(fleet.migration(ns, "evc-to-haswell", "evc", "h-haswell"))
    assert fleet.wait_phase("vsmig", "evc-to-haswell", ns, {"Succeeded", "Failed"})["phase"] == "Succeeded"
