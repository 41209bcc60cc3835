"""The echo of a VM's own status write costs a comparison, not a second reconcile: the object the
write returned is what that reconcile found right (bench/scale.py at 10,000 VMs: every adopted VM
was reconciled twice, the second time only to confirm its own write). Anything else, a change by
someone else or a placement the index does not show yet, is still reconciled."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest

from vmshift.controllers import events, indexes, kubeapi, virtualmachines
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.runtime import reset_runtime, runtime
from vmshift.hypervisor.protocol import GuestIoCeilings, HostInfo, VmInfo, VmState

pytestmark = pytest.mark.timeout(60)
log = logging.getLogger("test.echo")


class Agent:
    """An agent client the tests never expect to be called: the report answers where the guest runs."""

    async def get_vm(self, vm_id: str) -> VmInfo:
        raise AssertionError("the agent's report should have been enough")


def vm_body() -> dict[str, Any]:
    # Adoption: the VM says nothing yet; the agent on h1 reports its guest running.
    return {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u-a", "generation": 1, "resourceVersion": "10"},
            "spec": {"cpus": 1, "memoryMiB": 512, "running": True},
            "status": {"phase": "Pending"}}


class Server:
    """The status patches made (``writes``) and the VM's object after each (``stored``)."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.stored: list[dict[str, Any]] = [vm_body()]

    def echo(self) -> dict[str, Any]:
        return copy.deepcopy(self.stored[-1])


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Status patches answer the object as written, one resourceVersion later."""
    reset_runtime()
    link = AgentLink(host="h1", endpoint="http://127.0.0.1:1", token="t", client=cast(Any, Agent()),
                     info=HostInfo.model_construct(), reachable=True)
    link.vms = {"u-a": VmInfo.model_construct(id="u-a", name="a", namespace="ns", state=VmState.Running,
                                              features=[], drivers=[], migration_id=None, compatibility=False,
                                              io_ceilings=GuestIoCeilings.model_construct(network_mbps=0,
                                                                                          disk_mbps=0))}
    link.reported_at = runtime().started_at + 1.0
    monkeypatch.setattr(runtime().agents, "_links", {"h1": link})
    runtime().agents._reindex("h1", {}, link.vms)
    api = Server()

    async def patch_status(plural: str, namespace: str | None, name: str,
                           status: dict[str, Any]) -> dict[str, Any] | None:
        api.writes.append(status)
        kubeapi.checked_status(plural, status)
        written = api.echo()
        written["status"] = {**written.get("status", {}), **status}
        written["metadata"]["resourceVersion"] = str(int(written["metadata"]["resourceVersion"]) + 1)
        api.stored.append(written)
        return copy.deepcopy(written)

    async def ready() -> None:
        return None

    monkeypatch.setattr(kubeapi, "patch_status", patch_status)
    monkeypatch.setattr(indexes, "ready", ready)
    monkeypatch.setattr(events, "info", lambda *a, **k: None)
    monkeypatch.setattr(events, "warn", lambda *a, **k: None)
    yield api
    reset_runtime()


def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the reconciles from here on."""
    passes: list[str] = []
    real = virtualmachines.reconcile

    async def reconcile(body: Any, logger: Any) -> None:
        passes.append(str(body["metadata"].get("resourceVersion")))
        await real(body, logger)

    monkeypatch.setattr(virtualmachines, "reconcile", reconcile)
    return passes


async def test_the_echo_of_its_own_write_is_not_reconciled(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    await virtualmachines.vm_event("ADDED", vm_body(), log)
    assert len(server.writes) == 1 and server.writes[0]["host"] == "h1" and server.writes[0]["phase"] == "Running"
    passes = counting(monkeypatch)
    await virtualmachines.vm_event("MODIFIED", server.echo(), log)
    assert passes == [], "the echo of the reconcile's own write was reconciled again"
    assert len(server.writes) == 1
    assert "ns/a" in runtime().settled


async def test_a_change_by_someone_else_is_reconciled(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    await virtualmachines.vm_event("ADDED", vm_body(), log)
    changed = server.echo()
    changed["metadata"]["labels"] = {"team": "web"}
    changed["metadata"]["resourceVersion"] = "12"
    passes = counting(monkeypatch)
    await virtualmachines.vm_event("MODIFIED", changed, log)
    assert passes == ["12"]


async def test_a_write_while_a_placement_waits_for_the_index_leaves_the_echo_to_clear_it(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime().placements.expect("ns/a", ("h1", 1, 512))
    await virtualmachines.vm_event("ADDED", vm_body(), log)
    passes = counting(monkeypatch)
    await virtualmachines.vm_event("MODIFIED", server.echo(), log)
    assert passes == ["11"], "the echo's pass is what sees the index show the placement"
    assert runtime().placements.get("ns/a") is None
