"""A guest lost with its host's agent (restarted empty) is placed again while a host unrelated to it is down
for good: only the agents that may hold the guest must answer first, as vSphere HA restarts a VM unless
the host that may run it is unreachable."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.devcluster.stack import HostPlan
from vmshift.hypervisor.protocol import VmState

pytestmark = pytest.mark.e2e

#: Two hosts of this test's own: the lost guest's, and an unrelated one whose agent is killed for good.
LOST, DEAD = "h-lost-guest", "h-dead-unrelated"


def test_a_lost_guest_is_placed_again_while_an_unrelated_agent_stays_down(fleet: Fleet) -> None:
    plans = [HostPlan(LOST, "icelake", shared_volumes=("csv-1",), labels={"rack": "lost"}),
             HostPlan(DEAD, "icelake", shared_volumes=("csv-1",), labels={"rack": "dead"})]
    fleet.stack.start_hosts(plans)
    try:
        for plan in plans:
            fleet.wait_phase("host", plan.name, None, {"Ready"}, timeout=60)
        ns = fleet.namespace()
        fleet.running_vm(ns, "lost", host=LOST)
        uid = fleet.uid(ns, "lost")
        assert list(fleet.copies(uid)) == [LOST]
        fleet.stack.agents[DEAD].kill()  # a host losing power, and staying off
        fleet.wait_phase("host", DEAD, None, {"Unreachable"}, timeout=90)
        fleet.stack.restart_agent(LOST)  # a rebooted host: the guest is gone
        wait_for(lambda: not fleet.copies(uid), "the guest to be gone with its agent", 30)

        def running_once() -> dict[str, str] | None:
            copies = fleet.copies(uid)
            status = fleet.status("vsvm", "lost", ns)
            if len(copies) == 1 and next(iter(copies.values())).state is VmState.Running \
                    and status.get("phase") == "Running" and status.get("host") in copies:
                return {"host": status["host"]}
            return None

        placed = wait_for(running_once, f"the lost guest to run again on one host while {DEAD} stays down", 120,
                          describe=lambda: f"{json.dumps(fleet.status('vsvm', 'lost', ns))[:1500]}\n"
                                           f"copies: {sorted(fleet.copies(uid))}\n"
                                           f"operator log:\n{fleet.stack.operator_log_tail(25)}")
        assert placed["host"] != DEAD
        assert fleet.status("host", DEAD).get("phase") == "Unreachable"  # still down: it did not block
        fleet.kube.kubectl("delete", "vsvm", "lost", "-n", ns, "--wait=true", "--timeout=60s")
    finally:
        fleet.stack.remove_hosts([LOST, DEAD])
