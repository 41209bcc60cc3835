"""A stopped VM asked to move moves cold, as vSphere and SCVMM move a powered-off VM: its definition
is re-homed on the target, no memory is copied, and it starts there with the target's processor."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.hypervisor.protocol import VmState

pytestmark = pytest.mark.e2e

FINISHED = {"Succeeded", "Failed", "Cancelled"}


def test_a_stopped_vm_moves_cold_even_where_it_could_not_move_live(fleet: Fleet) -> None:
    ns = fleet.namespace()
    # started on icelake without processor compatibility: a live move to haswell is refused
    fleet.running_vm(ns, "cold", host="h-icelake-1", memory=256)
    uid = fleet.uid(ns, "cold")
    fleet.kube.kubectl("patch", "vsvm", "cold", "-n", ns, "--type=merge", "-p", '{"spec":{"running":false}}')
    fleet.wait_phase("vsvm", "cold", ns, {"Stopped"})
    assert fleet.copies(uid)["h-icelake-1"].state is VmState.Stopped
    fleet.apply(fleet.migration(ns, "cold-move", "cold", "h-haswell"))
    status = fleet.wait_phase("vsmig", "cold-move", ns, FINISHED)
    assert status["phase"] == "Succeeded", status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "MovedCold" and "no memory is copied" in ready["message"], ready
    assert (status["sourceHost"], status["targetHost"], status["downtimeMs"]) == ("h-icelake-1", "h-haswell", 0)
    # the definition is on the target only, still stopped; the VM says where it is
    copies = fleet.copies(uid)
    assert list(copies) == ["h-haswell"] and copies["h-haswell"].state in (VmState.Defined, VmState.Stopped)
    vm = fleet.wait_phase("vsvm", "cold", ns, {"Stopped"})
    assert vm["host"] == "h-haswell" and vm["lastMigration"]["result"] == "Succeeded", vm
    assert not vm.get("processor"), "the features of its last run on icelake no longer apply"
    # started again, it runs on haswell with haswell's features
    fleet.kube.kubectl("patch", "vsvm", "cold", "-n", ns, "--type=merge", "-p", '{"spec":{"running":true}}')
    running = fleet.wait_phase("vsvm", "cold", ns, {"Running"})
    assert running["host"] == "h-haswell" and running["processor"]["model"] == "haswell", running
    assert "avx512f" not in running["processor"]["features"]
    wait_for(lambda: list(fleet.copies(uid)) == ["h-haswell"], "one copy, on h-haswell", 30)
