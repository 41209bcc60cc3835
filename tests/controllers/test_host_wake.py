"""The host daemon is woken by the changes its phase and conditions derive from, and reads them fresh."""

from __future__ import annotations

import asyncio
from typing import Any

from vmshift.controllers import hosts
from vmshift.controllers.runtime import runtime

#: A valid Host spec (the model requires processor and memory).
HOST_SPEC = {"cpu": {"model": "icelake", "cores": 32}, "memoryMiB": 65536}


def _host(name: str, *, generation: int = 1, remediation: dict[str, Any] | None = None,
          drain: dict[str, Any] | None = None, allocated: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {"allocated": {"cpus": allocated, "memoryMiB": 0}}
    if remediation is not None:
        status["remediation"] = remediation
    if drain is not None:
        status["drain"] = drain
    return {"metadata": {"name": name, "uid": f"uid-{name}", "generation": generation}, "status": status}


async def test_a_quarantine_wakes_the_host_daemon_and_what_it_reads_carries_it() -> None:
    name = "wake-h1"
    event = runtime().host_wakers.setdefault(name, asyncio.Event())
    try:
        hosts.wake_on_host_event("ADDED", _host(name))
        event.clear()
        # the daemon's own writes (capacity, sensors) do not wake it
        hosts.wake_on_host_event("MODIFIED", _host(name, allocated=4))
        assert not event.is_set()
        # a remediation's quarantine does, and the body it then reads holds the quarantine
        quarantined = _host(name, allocated=4, remediation={"policy": "psu", "action": "EvacuateCritical"})
        hosts.wake_on_host_event("MODIFIED", quarantined)
        assert event.is_set()
        assert hosts._seen[name] is quarantined
        event.clear()
        for changed in (_host(name, generation=2, remediation={"policy": "psu", "action": "EvacuateCritical"}),
                        _host(name, generation=2, remediation={"policy": "psu", "action": "EvacuateCritical"},
                              drain={"trigger": "Remediation", "state": "Running"})):
            hosts.wake_on_host_event("MODIFIED", changed)
            assert event.is_set(), changed
            event.clear()
        hosts.wake_on_host_event("DELETED", quarantined)
        assert name not in hosts._seen
        # its labels (selectors of its VMs, remediation matches) and annotations (a release) do too
        labelled = {**quarantined, "metadata": {**quarantined["metadata"], "labels": {"rack": "r9"}}}
        hosts.wake_on_host_event("ADDED", quarantined)
        event.clear()
        hosts.wake_on_host_event("MODIFIED", labelled)
        assert event.is_set()
        event.clear()
        released = {**labelled, "metadata": {**labelled["metadata"], "annotations": {"vmshift.io/release": "x"}}}
        hosts.wake_on_host_event("MODIFIED", released)
        assert event.is_set()
    finally:
        runtime().host_wakers.pop(name, None)
        hosts._seen.pop(name, None)


def _migration(uid: str, phase: str, source: str, target: str) -> dict[str, Any]:
    return {"metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"vmName": "vm", "targetHost": target},
            "status": {"phase": phase, "sourceHost": source, "targetHost": target}}


async def test_a_migration_entering_and_leaving_flight_wakes_both_hosts_and_counts() -> None:
    source, target = runtime().host_wakers.setdefault("wake-src", asyncio.Event()), \
        runtime().host_wakers.setdefault("wake-dst", asyncio.Event())
    try:
        hosts.wake_on_migration_event("ADDED", _migration("m-1", "Pending", "wake-src", "wake-dst"))
        assert not source.is_set() and not target.is_set()  # queued: holds nothing yet
        hosts.wake_on_migration_event("MODIFIED", _migration("m-1", "Transferring", "wake-src", "wake-dst"))
        assert source.is_set() and target.is_set()
        assert hosts.in_flight("wake-dst") == (1, 0) and hosts.in_flight("wake-src") == (0, 1)
        source.clear(), target.clear()
        hosts.wake_on_migration_event("MODIFIED", _migration("m-1", "SwitchingOver", "wake-src", "wake-dst"))
        assert not source.is_set() and not target.is_set()  # still in flight between the same hosts
        hosts.wake_on_migration_event("MODIFIED", _migration("m-1", "Succeeded", "wake-src", "wake-dst"))
        assert source.is_set() and target.is_set()
        assert hosts.in_flight("wake-dst") == (0, 0) and hosts.in_flight("wake-src") == (0, 0)
    finally:
        for name in ("wake-src", "wake-dst"):
            runtime().host_wakers.pop(name, None)
        hosts._flights.pop("m-1", None)


def test_migration_counts_are_per_direction() -> None:
    flights = {"a": ("h1", "h2"), "b": ("h1", "h3"), "c": ("h3", "h1"), "d": (None, "h1")}
    assert hosts.migration_counts(flights, "h1") == (2, 2)
    assert hosts.migration_counts(flights, "h2") == (1, 0)
    assert hosts.migration_counts(flights, "h4") == (0, 0)


def test_a_quarantine_in_status_makes_the_host_unschedulable() -> None:
    previous = {"remediation": {"policy": "psu", "action": "EvacuateCritical"}}
    status = hosts.host_status("h1", hosts.HostInputs.of(HOST_SPEC, 1), previous, None, None)
    schedulable = next(c for c in status["conditions"] if c["type"] == "Schedulable")
    assert (schedulable["status"], schedulable["reason"]) == ("False", "Cordoned"), schedulable
    assert "RemediationPolicy psu (EvacuateCritical)" in schedulable["message"]
