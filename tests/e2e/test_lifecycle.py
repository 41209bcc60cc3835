"""Lifecycle faults end to end: the operator stopped mid-migration, orphans, guests running twice."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.api.reasons import MigrationPhase

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
    assert stop_seconds < 10, f"the operator took {stop_seconds:.1f} s to stop on SIGTERM"
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
