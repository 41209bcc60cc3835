"""The resync's second-copy check asks each agent before it stops anything: a copy the agents'
reports (a poll old) still show but that is gone by then is nothing to stop, and no warning."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest

from vmshift.controllers import guestcleanup, indexes
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.runtime import reset_runtime, runtime
from vmshift.controllers.views import index_vm
from vmshift.hypervisor.client import AgentError
from vmshift.hypervisor.protocol import HostInfo, VmInfo, VmState

UID = "u-a"


class Agent:
    """An agent client: get_vm answers ``state`` or raises ``error``; delete_vm is recorded."""

    def __init__(self, state: VmState | None = VmState.Running, error: AgentError | None = None) -> None:
        self.state, self.error = state, error
        self.deleted: list[str] = []

    async def get_vm(self, vm_id: str) -> VmInfo:
        if self.error is not None:
            raise self.error
        return VmInfo.model_construct(id=vm_id, state=self.state, features=[], migration_id=None)

    async def delete_vm(self, vm_id: str, force: bool = False) -> None:
        self.deleted.append(vm_id)


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Agent]]:
    """Two agents whose last reports both show the guest Running; status names h1."""
    reset_runtime()
    agents = {"h1": Agent(), "h2": Agent()}
    links = {}
    for name, agent in agents.items():
        link = AgentLink(host=name, endpoint="http://127.0.0.1:1", token="t", client=cast(Any, agent),
                         info=HostInfo.model_construct(), reachable=True)
        link.vms = {UID: VmInfo.model_construct(id=UID, state=VmState.Running, features=[], migration_id=None)}
        links[name] = link
    monkeypatch.setattr(runtime().agents, "_links", links)
    monkeypatch.setattr(indexes, "migrations_by_vm", {})
    warned: list[str] = []
    monkeypatch.setattr(guestcleanup.events, "warn", lambda ref, reason, message: warned.append(reason))
    yield agents
    reset_runtime()


def entries() -> list[Any]:
    return [index_vm({"metadata": {"name": "a", "namespace": "ns", "uid": UID, "generation": 1},
                      "spec": {"cpus": 1, "memoryMiB": 512, "running": True},
                      "status": {"host": "h1", "phase": "Running"}})]


async def test_a_copy_gone_since_the_report_is_nothing_to_stop(fleet: dict[str, Agent],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    fleet["h2"].error = AgentError("NotFound", f"no VM {UID}", 404)
    with caplog.at_level(logging.WARNING):
        await guestcleanup.resolve_duplicates(entries(), logging.getLogger("test.resync"))
    assert fleet["h2"].deleted == [] and fleet["h1"].deleted == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_a_second_copy_that_runs_is_stopped_and_a_refusal_is_reported(fleet: dict[str, Agent],
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    await guestcleanup.resolve_duplicates(entries(), logging.getLogger("test.resync"))
    assert fleet["h2"].deleted == [UID] and fleet["h1"].deleted == []

    fleet["h2"].deleted.clear()
    fleet["h2"].error = AgentError("Internal", "disk on fire", 500)
    with caplog.at_level(logging.WARNING):
        await guestcleanup.resolve_duplicates(entries(), logging.getLogger("test.resync"))
    assert "stopping the second copy of ns/a on h2 failed" in caplog.text
