"""The host daemon is woken by the changes its phase and conditions derive from, and reads them fresh."""

from __future__ import annotations

import asyncio
from typing import Any

from vmshift.controllers import hosts

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
    event = hosts._wake.setdefault(name, asyncio.Event())
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
    finally:
        hosts._wake.pop(name, None)
        hosts._seen.pop(name, None)


def test_a_quarantine_in_status_makes_the_host_unschedulable() -> None:
    previous = {"remediation": {"policy": "psu", "action": "EvacuateCritical"}}
    status = hosts.host_status("h1", hosts.HostInputs.of(HOST_SPEC, 1), previous, None, None)
    schedulable = next(c for c in status["conditions"] if c["type"] == "Schedulable")
    assert (schedulable["status"], schedulable["reason"]) == ("False", "Cordoned"), schedulable
    assert "RemediationPolicy psu (EvacuateCritical)" in schedulable["message"]
