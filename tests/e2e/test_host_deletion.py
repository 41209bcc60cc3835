"""Hosts carry no finalizer of the operator's, and a Host an earlier release left its (Kopf's) finalizer
on can still be deleted: with the operator running, and after it was down when the Host was deleted."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import HOSTS, Fleet
from tests.kube import wait_for
from vmshift.api.labels import EPISODE_LABEL, EVACUATION_LABEL, FINALIZER
from vmshift.devcluster.stack import HostPlan

pytestmark = pytest.mark.e2e

#: Nothing listens there: the Host's agent is unreachable (its supervisor still runs and writes its status).
NO_AGENT = "http://127.0.0.1:9"


def legacy_host(name: str) -> dict[str, Any]:
    """A Host as a release whose Host supervisors were Kopf daemons left it: with Kopf's finalizer."""
    body = HostPlan(name, "icelake", labels={"rack": "legacy"}).manifest(NO_AGENT)
    body["metadata"]["finalizers"] = [FINALIZER]
    return body


def finalizers(fleet: Fleet, name: str) -> list[str]:
    return list(fleet.get("host", name).get("metadata", {}).get("finalizers") or [])


def test_hosts_get_no_finalizer_and_one_an_earlier_release_set_does_not_hold_a_deletion(fleet: Fleet) -> None:
    for plan in HOSTS:
        assert FINALIZER not in finalizers(fleet, plan.name), f"the operator wrote a finalizer on {plan.name}"
    fleet.apply(legacy_host("h-legacy-up"))
    fleet.wait_phase("host", "h-legacy-up", None, {"Unreachable"}, timeout=60)  # its supervisor runs
    assert finalizers(fleet, "h-legacy-up") == [FINALIZER]  # not touched while the Host is not being deleted
    started = time.monotonic()
    fleet.kube.kubectl("delete", "host", "h-legacy-up", "--wait=true", "--timeout=60s", timeout=70)
    assert not fleet.get("host", "h-legacy-up"), "the Host is still there"
    assert time.monotonic() - started < 60
    assert "removed the finalizer" in fleet.stack.operator_log_tail(400)


def test_a_host_deleted_while_the_operator_was_down_goes_with_its_drains_migrations_once_it_starts(
        fleet: Fleet) -> None:
    fleet.apply(legacy_host("h-legacy-down"))
    fleet.wait_phase("host", "h-legacy-down", None, {"Unreachable"}, timeout=60)
    ns = fleet.namespace()
    fleet.stack.stop_operator()
    try:
        # What a drain of it had left (a drain's migrations carry these labels), and the deletion, both
        # while no operator runs: the finalizer holds the Host.
        leftover = fleet.migration(ns, "drain-leftover", "no-such-vm", "h-icelake-1")
        leftover["metadata"]["labels"] = {EVACUATION_LABEL: "h-legacy-down", EPISODE_LABEL: "h-legacy-down-1"}
        fleet.apply(leftover)
        fleet.kube.kubectl("delete", "host", "h-legacy-down", "--wait=false")
        assert fleet.get("host", "h-legacy-down").get("metadata", {}).get("deletionTimestamp")
    finally:
        fleet.stack.start_operator("--keep-finished-migrations", "50")
    wait_for(lambda: not fleet.get("host", "h-legacy-down"), "the Host deleted while the operator was down to go",
             60, describe=lambda: str(fleet.get("host", "h-legacy-down").get("metadata")))
    wait_for(lambda: not fleet.get("vsmig", "drain-leftover", ns), "the drain's leftover migration to go", 60,
             describe=lambda: str(fleet.get("vsmig", "drain-leftover", ns).get("status")))
    for plan in HOSTS:  # the fleet is back under the new operator
        fleet.wait_phase("host", plan.name, None, {"Ready", "Cordoned"}, timeout=60)
