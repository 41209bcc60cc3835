"""Status fields the API declares, each shown to take effect through the real API server.

VirtualMachine phases Scheduling and Failed, status.migration.phase following its migration, a
Host's label change re-checking the selectors of its VMs; Host status.migrations and
lastHeartbeatTime; a migration's strategy, and the strategy of each of its rounds; SwitchingOver
shown by every live migration, before its pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.api.reasons import MigrationMode
from vmshift.hypervisor.client import AgentError
from vmshift.hypervisor.protocol import DiskSpec, IncomingMigrationRequest, IncomingVm

pytestmark = pytest.mark.e2e

API = "/apis/vmshift.io/v1alpha1"


class Watch:
    """Every version of a collection's objects from now on: a list for its resourceVersion, then a
    watch from exactly there (``kubectl get --raw``), read in the background. Nothing written after
    the constructor returns is missed."""

    def __init__(self, fleet: Fleet, path: str) -> None:
        self.seen: list[dict[str, Any]] = []
        listed = json.loads(fleet.kube.kubectl("get", "--raw", path).stdout)
        version = listed["metadata"]["resourceVersion"]
        self._proc = subprocess.Popen(
            ["kubectl", "get", "--raw", f"{path}?watch=1&resourceVersion={version}&timeoutSeconds=600"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=fleet.kube.env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                event = json.loads(line)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self.seen.append(event["object"])

    def stop(self) -> list[dict[str, Any]]:
        self._proc.terminate()
        self._proc.wait(10)
        self._reader.join(10)
        return self.seen

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _in_order(values: list[Any]) -> list[Any]:
    """``values`` without repeats of the one before."""
    out: list[Any] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def _migration_counts(host_status: Mapping[str, Any]) -> tuple[int, int] | None:
    """(inbound, outbound) of a Host's status.migrations; None before the first status. The stream figures
    the agent measured (streamMbps, streamsTogetherMbps) stand beside them once a migration ran."""
    migrations = host_status.get("migrations")
    return None if migrations is None else (migrations.get("inbound"), migrations.get("outbound"))


def test_a_vm_is_scheduling_then_its_migration_phase_strategy_and_host_counts_move(fleet: Fleet) -> None:
    ns = fleet.namespace()
    with Watch(fleet, f"{API}/namespaces/{ns}/virtualmachines") as vms, Watch(fleet, f"{API}/hosts") as hosts:
        fleet.running_vm(ns, "mover", host="h-icelake-1", compatibility=True, dirty=60, working_set=48, memory=512,
                         keep_pin=True)
        fleet.kube.kubectl("patch", "vsvm", "mover", "-n", ns, "--type=merge",
                           "-p", '{"spec":{"placement":{"host":"h-icelake-2"}}}')
        status = wait_for(lambda: (fleet.status("vsvm", "mover", ns).get("lastMigration") or {}).get("result") and
                          fleet.status("vsvm", "mover", ns), "the VM's lastMigration", 90)
        assert status["lastMigration"]["result"] == "Succeeded", status
        pair = ("h-icelake-1", "h-icelake-2")
        wait_for(lambda: all(_migration_counts(fleet.status("host", h)) == (0, 0) for h in pair),
                 "both hosts to count no migration", 30,
                 describe=lambda: str({h: fleet.status("host", h).get("migrations") for h in pair}))
        vm_seen = vms.stop()
        host_seen = hosts.stop()
    phases = _in_order([(o.get("status") or {}).get("phase") for o in vm_seen if (o.get("status") or {}).get("phase")])
    assert phases[:3] == ["Scheduling", "Starting", "Running"], phases
    assert "Migrating" in phases and phases[-1] == "Running", phases
    moving = _in_order([((o.get("status") or {}).get("migration") or {}).get("phase") for o in vm_seen
                        if (o.get("status") or {}).get("migration")])
    assert moving[:2] == ["Validating", "Transferring"], moving
    assert set(moving) <= {"Validating", "Transferring", "SwitchingOver"}, moving

    counts = {(o["metadata"]["name"], _migration_counts(o.get("status") or {})) for o in host_seen}
    assert ("h-icelake-1", (0, 1)) in counts, counts
    assert ("h-icelake-2", (1, 0)) in counts, counts

    migration = fleet.status("vsmig", status["lastMigration"]["name"], ns)
    assert migration["strategy"] in ("PreCopy", "AutoConverge"), migration
    assert migration["rounds"], migration
    assert all(r.get("strategy") in ("PreCopy", "AutoConverge") for r in migration["rounds"]), migration["rounds"]
    assert migration["rounds"][0]["strategy"] == "PreCopy"  # the full copy runs before any throttle


def test_every_live_migration_shows_switching_over_before_it_succeeds(fleet: Fleet) -> None:
    # The switchover pauses the guest for milliseconds; the phase must not be seen only when a poll
    # happens to land in them. The source holds its converged switchover until the operator has
    # written SwitchingOver, so a watch of the API sees it on every migration.
    ns = fleet.namespace()
    fleet.running_vm(ns, "switcher", host="h-icelake-1", dirty=20, working_set=8, memory=128)
    names = [f"switch-{i}" for i in range(3)]
    with Watch(fleet, f"{API}/namespaces/{ns}/virtualmachinemigrations") as migrations:
        for name, target in zip(names, ("h-icelake-2", "h-icelake-1", "h-icelake-2"), strict=True):
            fleet.apply(fleet.migration(ns, name, "switcher", target, mode="Live"))
            done = fleet.wait_phase("vsmig", name, ns, {"Succeeded", "Failed", "Cancelled"}, 120)
            assert done["phase"] == "Succeeded", done
        seen = migrations.stop()
    order = ["Pending", "Validating", "Transferring", "SwitchingOver", "Succeeded"]
    for name in names:
        mine = [o for o in seen if o["metadata"]["name"] == name and (o.get("status") or {}).get("phase")]
        phases = _in_order([o["status"]["phase"] for o in mine])
        assert phases[-3:] == ["Transferring", "SwitchingOver", "Succeeded"], (name, phases)
        assert phases == sorted(phases, key=order.index), (name, phases)
        switching = next(o["status"] for o in mine if o["status"]["phase"] == "SwitchingOver")
        reconciling = next(c for c in switching["conditions"] if c["type"] == "Reconciling")
        assert reconciling["reason"] == "SwitchingOver" and "Pre-copy converged" in reconciling["message"], switching
        final = mine[-1]["status"]
        assert final["switchoverAcknowledged"] is True, final
        assert final["downtimeMs"] < 1000 and final["memoryVerified"] is True, final


def test_hosts_say_when_their_agent_last_answered(fleet: Fleet) -> None:
    def age(host: str) -> float:
        beat = fleet.status("host", host).get("lastHeartbeatTime")
        assert beat, f"{host} has no lastHeartbeatTime"
        return (datetime.now(UTC) - datetime.fromisoformat(beat.replace("Z", "+00:00"))).total_seconds()

    for host in ("h-icelake-1", "h-zen3", "h-cordoned"):
        assert age(host) >= -2, host  # never in the future
    # A change of the status carries the newest answer: cordon a host, and its heartbeat is now.
    fleet.kube.kubectl("patch", "host", "h-zen3", "--type=merge", "-p", '{"spec":{"unschedulable":true}}')
    try:
        fleet.wait_phase("host", "h-zen3", None, {"Cordoned"}, timeout=30)
        assert -2 <= age("h-zen3") <= 10, fleet.status("host", "h-zen3")
    finally:
        fleet.kube.kubectl("patch", "host", "h-zen3", "--type=merge", "-p", '{"spec":{"unschedulable":false}}')
        fleet.wait_phase("host", "h-zen3", None, {"Ready"}, timeout=30)


def test_a_start_the_agent_refuses_is_failed_and_placed_again_once_it_can(fleet: Fleet) -> None:
    ns = fleet.namespace()
    # The agent of h-small holds room for an incoming guest the API does not know (a reservation: no
    # orphan to collect), so the scheduler counts memory as free that the agent refuses to give.
    holder = IncomingMigrationRequest(
        migration_id="room-holder", mode=MigrationMode.Live, reservation_seconds=600,
        vm=IncomingVm(vm_id="room-holder-vm", name="room-holder", namespace="out-of-band", cpus=1, memory_mib=768,
                      disks=[DiskSpec(name="root", size_gib=10, volume="csv-1")], drivers=["vmbus"],
                      features=[], compatibility=True))

    async def hold(release: bool = False) -> None:
        async with fleet.stack.agents["h-small"].client() as client:
            if release:
                await client.cancel_migration("room-holder")
            else:
                await client.prepare_incoming(holder)

    asyncio.run(hold())
    try:
        with Watch(fleet, f"{API}/namespaces/{ns}/virtualmachines") as vms:
            fleet.apply(fleet.vm(ns, "refused", host="h-small", compatibility=True, memory=512))
            failed = fleet.wait_phase("vsvm", "refused", ns, {"Failed"}, timeout=60)
            assert failed["reason"] == "FailedStart" and "h-small" in failed["message"], failed
            conditions = {c["type"]: c for c in failed["conditions"]}
            assert conditions["Ready"]["status"] == "False" and conditions["Stalled"]["status"] == "True"
            asyncio.run(hold(release=True))
            running = fleet.wait_phase("vsvm", "refused", ns, {"Running"}, timeout=90)
            seen = vms.stop()
        assert running["host"] == "h-small" and running.get("reason") is None, running
        phases = _in_order([(o.get("status") or {}).get("phase") for o in seen if (o.get("status") or {}).get("phase")])
        assert phases[:2] == ["Scheduling", "Starting"] and "Failed" in phases, phases
        assert "Pending" not in phases[: phases.index("Failed") + 1], phases
    finally:
        with contextlib.suppress(AgentError):  # released above already
            asyncio.run(hold(release=True))


def test_a_host_label_change_moves_the_vms_whose_selector_it_no_longer_matches(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.kube.kubectl("label", "host", "h-icelake-1", "zone=blue", "--overwrite")
    fleet.kube.kubectl("label", "host", "h-icelake-2", "zone=green", "--overwrite")
    try:
        fleet.running_vm(ns, "zoned", compatibility=True, placement={"hostSelector": {"matchLabels": {"zone": "blue"}}})
        assert fleet.status("vsvm", "zoned", ns)["host"] == "h-icelake-1"
        # Only the Hosts change: nothing about the VM does.
        fleet.kube.kubectl("label", "host", "h-icelake-1", "zone=green", "--overwrite")
        fleet.kube.kubectl("label", "host", "h-icelake-2", "zone=blue", "--overwrite")
        status = wait_for(lambda: (fleet.status("vsvm", "zoned", ns).get("lastMigration") or {}).get("result") and
                          fleet.status("vsvm", "zoned", ns), "a migration off the host that lost the label", 60,
                          describe=lambda: json.dumps(fleet.status("vsvm", "zoned", ns))[:1500])
        assert status["lastMigration"]["result"] == "Succeeded", status
        fleet.wait_phase("vsvm", "zoned", ns, {"Running"})
        assert fleet.status("vsvm", "zoned", ns)["host"] == "h-icelake-2"
        assert list(fleet.copies(fleet.uid(ns, "zoned"))) == ["h-icelake-2"]
    finally:
        for host in ("h-icelake-1", "h-icelake-2"):
            fleet.kube.kubectl("label", "host", host, "zone-")
