"""Events name vmshift as their source, not the framework it is written with."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.controllers.startup import REPORTING_COMPONENT

pytestmark = pytest.mark.e2e


def test_the_events_of_a_refused_migration_come_from_vmshift_operator(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "ev", host="h-icelake-1", compatibility=True)
    fleet.apply(fleet.migration(ns, "nowhere", "ev", "h-no-such-host"))
    assert fleet.wait_phase("vsmig", "nowhere", ns, {"Failed"})["phase"] == "Failed"

    def events() -> list[dict[str, Any]] | None:
        got: list[dict[str, Any]] = json.loads(fleet.kube.kubectl(
            "get", "events", "-n", ns, "--field-selector", "involvedObject.name=nowhere", "-o", "json").stdout)["items"]
        return got or None
    seen = wait_for(events, "an event about migration nowhere", 30)
    for event in seen:
        assert event["source"].get("component") == REPORTING_COMPONENT == "vmshift-operator", event
        assert event.get("reportingComponent") == "vmshift-operator", event
        assert event.get("reportingInstance"), event
