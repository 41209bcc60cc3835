"""A cold move puts its target on record (the migration's status) before the target holds a definition:
a look for the VM's guest after a crash between the two must wait for that agent (whereabouts.may_hold)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from vmshift.api.migration import VirtualMachineMigrationSpec
from vmshift.controllers import coldmove
from vmshift.controllers.migrationrun import Run
from vmshift.controllers.runtime import reset_runtime
from vmshift.controllers.views import index_vm
from vmshift.hypervisor.protocol import VmInfo, VmState
from vmshift.scheduling.cold import ColdMove
from vmshift.scheduling.policy import DEFAULT_POLICY


class Crash(Exception):
    """The operator dies the moment the target is asked to define the guest."""


class Source:
    async def get_vm(self, vm_id: str) -> VmInfo:
        return VmInfo.model_construct(id=vm_id, state=VmState.Stopped, drivers=[])


class Target:
    def __init__(self, done: list[Any]) -> None:
        self.done = done

    async def define_vm(self, vm_id: str, definition: Any) -> VmInfo:
        self.done.append(("define", "h2"))
        raise Crash


class Link:
    def __init__(self, client: Any) -> None:
        self.client = client


async def test_the_target_of_a_cold_move_is_on_record_before_it_is_defined_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reset_runtime()
    done: list[Any] = []
    vm = index_vm({"metadata": {"name": "a", "namespace": "ns", "uid": "u-a", "generation": 1},
                   "spec": {"cpus": 1, "memoryMiB": 512, "running": False},
                   "status": {"host": "h1", "phase": "Stopped"}})
    run = Run(name="m", namespace="ns", uid="u-m", vm_name="a", generation=1, body=cast(Any, {}))

    async def patch(status: dict[str, Any]) -> None:
        done.append(("record", status))

    monkeypatch.setattr(run, "patch", patch)
    monkeypatch.setattr(coldmove, "decide_cold_move", lambda *a: ColdMove(target="h2", message="to h2"))
    monkeypatch.setattr(coldmove, "fleet", lambda fresh=False: None)
    monkeypatch.setattr(coldmove, "policy_for", lambda *a: DEFAULT_POLICY)
    links = {"h1": Link(Source()), "h2": Link(Target(done))}
    monkeypatch.setattr(coldmove, "agent_link", lambda host: links[host or ""])
    with pytest.raises(Crash):
        await coldmove.move_cold(run, vm, VirtualMachineMigrationSpec.model_validate({"vmName": "a"}))
    assert done == [("record", {"sourceHost": "h1", "targetHost": "h2"}), ("define", "h2")]
    reset_runtime()
