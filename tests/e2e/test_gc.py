"""Garbage collection of finished migrations deletes only what the operator made.

A migration applied by a person (or synced from Git by Argo CD or Flux) stays after it finishes, so
the operator never deletes an object a GitOps tool will only put back; the ones the operator made
for placement changes keep being collected down to ``--keep-finished-migrations``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.controllers.views import MANAGED_BY, MANAGED_BY_LABEL

pytestmark = pytest.mark.e2e

FINISHED = {"Succeeded", "Failed", "Cancelled"}


@pytest.fixture
def keep_one(fleet: Fleet) -> Iterator[Fleet]:
    fleet.stack.stop_operator()
    fleet.stack.start_operator("--keep-finished-migrations", "1")
    try:
        yield fleet
    finally:
        fleet.stack.stop_operator()
        fleet.stack.start_operator("--keep-finished-migrations", "50")


def _migrations(fleet: Fleet, ns: str) -> dict[str, dict[str, Any]]:
    items = fleet.kube.get_json("vsmig", "-n", ns)["items"]
    return {m["metadata"]["name"]: m for m in items}


def _move_to(fleet: Fleet, ns: str, vm: str, host: str) -> dict[str, Any]:
    """Change spec.placement.host and wait for the operator's migration to finish; return it."""
    fleet.kube.kubectl("patch", "vsvm", vm, "-n", ns, "--type=merge",
                       "-p", json.dumps({"spec": {"placement": {"host": host}}}))

    def made() -> dict[str, Any] | None:
        for m in _migrations(fleet, ns).values():
            if m["spec"].get("targetHost") == host and (m["status"] or {}).get("phase") == "Succeeded" \
                    and (m["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY:
                return m
        return None
    return wait_for(made, f"the operator's migration of {vm} to {host} to succeed", 120,
                    describe=lambda: f"{sorted(_migrations(fleet, ns))}\n{fleet.stack.operator_log_tail(20)}")


def test_a_migration_applied_by_hand_survives_gc_and_operator_made_ones_are_collected(keep_one: Fleet) -> None:
    fleet = keep_one
    ns = fleet.namespace()
    fleet.running_vm(ns, "gc", host="h-icelake-1", compatibility=True, memory=256, dirty=5)
    fleet.apply(fleet.migration(ns, "by-hand", "gc", "h-icelake-2"))
    assert fleet.wait_phase("vsmig", "by-hand", ns, FINISHED, timeout=120)["phase"] == "Succeeded"

    first = _move_to(fleet, ns, "gc", "h-icelake-1")["metadata"]["name"]
    second = _move_to(fleet, ns, "gc", "h-icelake-2")["metadata"]["name"]
    wait_for(lambda: first not in _migrations(fleet, ns),
             f"the operator's finished migration {first} to be collected (keep 1)", 60,
             describe=lambda: f"{sorted(_migrations(fleet, ns))}")
    left = _migrations(fleet, ns)
    assert "by-hand" in left, f"the migration applied by hand was deleted; left: {sorted(left)}"
    assert second in left, f"the newest operator-made migration {second} was deleted; left: {sorted(left)}"
    assert not (left["by-hand"]["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL)
