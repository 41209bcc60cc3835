"""Lifecycle faults end to end: the operator stopped mid-migration (also while a switchover waits for
its go), orphans, guests running twice."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.e2e.conftest import Fleet
from tests.hypervisor.helpers import running_vm
from tests.kube import wait_for
from vmshift.api.labels import FINALIZER
from vmshift.api.reasons import MigrationPhase
from vmshift.hypervisor.protocol import MigrationStatus

pytestmark = pytest.mark.e2e

FINISHED = {"Succeeded", "Failed", "Cancelled"}


def _source_phase(fleet: Fleet, host: str, migration_uid: str) -> MigrationPhase:
    async def call() -> MigrationPhase:
        async with fleet.stack.agents[host].client() as client:
            return (await client.get_migration(migration_uid)).phase
    return asyncio.run(call())


def test_a_sigterm_of_the_operator_mid_migration_neither_fails_nor_cancels_it(fleet: Fleet) -> None:
    """A rolling update of the operator: SIGTERM while a long live migration transfers. The agents carry
    on; the next operator follows the same migration and reports it Succeeded."""
    ns = fleet.namespace()
    fleet.running_vm(ns, "big", host="h-slow", compatibility=True, memory=3072, dirty=10)
    uid = fleet.uid(ns, "big")
    fleet.apply(fleet.migration(ns, "rolling", "big", "h-icelake-2"))
    fleet.wait_phase("vsmig", "rolling", ns, {"Transferring"})
    migration_uid = fleet.get("vsmig", "rolling", ns)["metadata"]["uid"]
    started = time.monotonic()
    fleet.stack.stop_operator()  # SIGTERM; SIGKILL only after 15 s
    stop_seconds = time.monotonic() - started
    assert stop_seconds < 14, f"the operator took {stop_seconds:.1f} s to stop on SIGTERM (SIGKILL comes at 15)"
    left = fleet.status("vsmig", "rolling", ns)
    assert left["phase"] == "Transferring", f"the stopping operator ended the migration: {left}"
    assert not _source_phase(fleet, "h-slow", migration_uid).finished, "the stopping operator cancelled it"
    fleet.stack.start_operator("--keep-finished-migrations", "50")
    status = fleet.wait_phase("vsmig", "rolling", ns, FINISHED, timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["targetHost"] == "h-icelake-2" and status.get("memoryVerified") is True, status
    vm = wait_for(lambda: (s := fleet.status("vsvm", "big", ns)).get("host") == "h-icelake-2" and s,
                  "the VM's status to name its new host", 30)
    assert vm["phase"] == "Running"
    assert list(fleet.copies(uid)) == ["h-icelake-2"]


def _source_report(fleet: Fleet, host: str, migration_uid: str) -> MigrationStatus:
    async def call() -> MigrationStatus:
        async with fleet.stack.agents[host].client() as client:
            return await client.get_migration(migration_uid)
    return asyncio.run(call())


def test_a_migration_that_converges_while_the_operator_is_down_switches_over_without_its_go(fleet: Fleet) -> None:
    """The source holds a converged switchover for the operator's go, but never for long: with the
    operator stopped it switches over once the wait is out, and the next operator records that the
    pause came without the go."""
    ns = fleet.namespace()
    fleet.running_vm(ns, "unwatched", host="h-slow", compatibility=True, memory=1024, dirty=5, working_set=2)
    fleet.apply(fleet.migration(ns, "unheard", "unwatched", "h-icelake-2", mode="Live"))
    fleet.wait_phase("vsmig", "unheard", ns, {"Transferring"})
    migration_uid = fleet.get("vsmig", "unheard", ns)["metadata"]["uid"]
    fleet.stack.stop_operator()  # before round 0 (1 GiB at 1000 Mbit/s, about 9 s) is over
    assert fleet.status("vsmig", "unheard", ns)["phase"] == "Transferring"
    report = wait_for(lambda: (r := _source_report(fleet, "h-slow", migration_uid)).phase.finished and r,
                      "the source to finish the migration without the operator", 90)
    assert report.phase is MigrationPhase.Succeeded and report.switchover_acknowledged is False, report
    fleet.stack.start_operator("--keep-finished-migrations", "50")
    status = fleet.wait_phase("vsmig", "unheard", ns, FINISHED, timeout=120)
    assert status["phase"] == "Succeeded" and status["switchoverAcknowledged"] is False, status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "switched over without it" in ready["message"], ready


def test_a_vm_running_on_two_agents_is_left_on_the_one_its_status_names(fleet: Fleet) -> None:
    """A second running copy appears (a switchover settled wrongly, a host back from a partition): the resync
    stops the copy nothing vouches for and keeps the one the VM's status names."""
    ns = fleet.namespace()
    fleet.running_vm(ns, "twin", host="h-icelake-1", compatibility=True, memory=128, dirty=1)
    uid = fleet.uid(ns, "twin")

    async def second_copy() -> None:
        async with fleet.stack.agents["h-icelake-2"].client() as client:
            await running_vm(client, uid, memory_mib=128)
    asyncio.run(second_copy())
    assert sorted(fleet.copies(uid)) == ["h-icelake-1", "h-icelake-2"]
    wait_for(lambda: list(fleet.copies(uid)) == ["h-icelake-1"], "the resync to stop the second copy", 90,
             describe=lambda: f"copies {list(fleet.copies(uid))}\n{fleet.stack.operator_log_tail(15)}")
    assert fleet.status("vsvm", "twin", ns)["host"] == "h-icelake-1"
    assert fleet.copies(uid)["h-icelake-1"].state.value == "Running"


def test_a_vm_deleted_while_its_agent_was_cut_off_does_not_run_forever(fleet: Fleet) -> None:
    """The operator cannot reach the agent (its Host points at a dead port: a partition) while the VM is
    deleted; once the agent answers again, the resync finds a guest the API no longer has and stops it."""
    ns = fleet.namespace()
    fleet.running_vm(ns, "ghost", host="h-zen3", memory=128, dirty=1)
    uid = fleet.uid(ns, "ghost")
    plan, agent = fleet.stack.plans["h-zen3"], fleet.stack.agents["h-zen3"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fleet.stack.apply(plan.manifest(dead))
    try:
        fleet.wait_phase("host", "h-zen3", None, {"Unreachable"}, timeout=60)
        fleet.kube.kubectl("delete", "vsvm", "ghost", "-n", ns, "--timeout=90s")
        assert "h-zen3" in fleet.copies(uid), "the cut-off agent kept its guest"
    finally:
        fleet.stack.apply(plan.manifest(agent.endpoint))
    fleet.wait_phase("host", "h-zen3", None, {"Ready"}, timeout=60)
    wait_for(lambda: not fleet.copies(uid), "the resync to stop the orphaned guest", 120,
             describe=lambda: f"copies {list(fleet.copies(uid))}\n{fleet.stack.operator_log_tail(15)}")


def test_a_vm_deleted_while_the_operator_is_down_has_its_guest_stopped_once_it_is_back(fleet: Fleet) -> None:
    """No finalizer holds a VM's deletion: with the operator stopped the VM goes at once and its guest
    keeps running; the next operator finds a guest the API no longer has and stops and deletes it."""
    ns = fleet.namespace()
    fleet.running_vm(ns, "unattended", host="h-icelake-1", compatibility=True, memory=128, dirty=1)
    uid = fleet.uid(ns, "unattended")
    assert not fleet.get("vsvm", "unattended", ns)["metadata"].get("finalizers"), "a finalizer holds the VM"
    fleet.stack.stop_operator()
    try:
        fleet.kube.kubectl("delete", "vsvm", "unattended", "-n", ns, "--timeout=30s")
        assert list(fleet.copies(uid)) == ["h-icelake-1"], "the guest stopped without an operator"
    finally:
        fleet.stack.start_operator("--keep-finished-migrations", "50")
    wait_for(lambda: not fleet.copies(uid), "the restarted operator to stop the orphaned guest", 120,
             describe=lambda: f"copies {list(fleet.copies(uid))}\n{fleet.stack.operator_log_tail(15)}")


def test_a_vm_an_earlier_release_gave_its_finalizer_is_deleted_and_its_guest_stopped(fleet: Fleet) -> None:
    """VMs carry no finalizer since the VM controller left Kopf, but one an earlier release gave Kopf's
    finalizer still has it: nothing took it off, and deleting that VM hung in Terminating for ever. The
    operator stops its guest, as the finalizer promised, and then takes the finalizer off."""
    ns = fleet.namespace()
    fleet.running_vm(ns, "legacy", host="h-icelake-2", compatibility=True, memory=128, dirty=1)
    uid = fleet.uid(ns, "legacy")
    fleet.kube.kubectl("patch", "vsvm", "legacy", "-n", ns, "--type=merge",
                       "-p", json.dumps({"metadata": {"finalizers": [FINALIZER]}}))
    fleet.kube.kubectl("delete", "vsvm", "legacy", "-n", ns, "--wait=true", "--timeout=60s", timeout=70)
    assert not fleet.get("vsvm", "legacy", ns), "the VM is still there"
    wait_for(lambda: not fleet.copies(uid), "the operator to stop the deleted VM's guest", 15,
             describe=lambda: f"copies {list(fleet.copies(uid))}\n{fleet.stack.operator_log_tail(15)}")
    assert "removed the finalizer" in fleet.stack.operator_log_tail(400)


def test_a_deleted_vm_has_its_guest_stopped(fleet: Fleet) -> None:
    """With the operator up, deleting a VM stops and deletes its guest at once (the DELETED event),
    without waiting for a resync pass."""
    ns = fleet.namespace()
    fleet.running_vm(ns, "brief", host="h-icelake-2", compatibility=True, memory=128, dirty=1)
    uid = fleet.uid(ns, "brief")
    fleet.kube.kubectl("delete", "vsvm", "brief", "-n", ns, "--timeout=30s")
    wait_for(lambda: not fleet.copies(uid), "the operator to stop the deleted VM's guest", 15,
             describe=lambda: f"copies {list(fleet.copies(uid))}\n{fleet.stack.operator_log_tail(15)}")
