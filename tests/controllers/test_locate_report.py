"""A settled VM is re-checked from its agent's last report when that report is newer than the
operator's start and needs no action; any other case still asks the agent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from vmshift.controllers import indexes, virtualmachines
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.runtime import reset_runtime, runtime
from vmshift.controllers.views import index_migration, index_vm
from vmshift.controllers.vmstatus import report_suffices
from vmshift.hypervisor.protocol import HostInfo, VmInfo, VmState


class CountingClient:
    """An agent client that answers get_vm with one state and counts the calls."""

    def __init__(self, state: VmState) -> None:
        self.state = state
        self.calls = 0

    async def get_vm(self, vm_id: str) -> VmInfo:
        self.calls += 1
        return VmInfo.model_construct(id=vm_id, state=self.state, features=[], migration_id=None)


def vm_body(running: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": "a", "namespace": "ns", "uid": "u-a", "generation": 1},
            "spec": {"cpus": 1, "memoryMiB": 512, "running": running},
            "status": {"host": "h1", "phase": "Running"}}


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentLink]:
    reset_runtime()
    client = CountingClient(VmState.Running)
    made = AgentLink(host="h1", endpoint="http://127.0.0.1:1", token="t", client=cast(Any, client),
                     info=HostInfo.model_construct(), reachable=True)
    monkeypatch.setattr(runtime().agents, "_links", {"h1": made})
    yield made
    reset_runtime()


def report(made: AgentLink, state: VmState, *, after_start: bool) -> None:
    made.vms = {"u-a": VmInfo.model_construct(id="u-a", state=state, features=[], migration_id=None)}
    made.reported_at = runtime().started_at + (1.0 if after_start else -1.0)


async def test_a_report_after_the_start_that_agrees_with_the_spec_is_enough(link: AgentLink) -> None:
    report(link, VmState.Running, after_start=True)
    located = await virtualmachines._locate(index_vm(vm_body()), True)
    assert located is not None and located[0] == "h1" and located[1].state is VmState.Running
    assert cast(CountingClient, link.client).calls == 0


@pytest.mark.parametrize(("state", "after_start", "running"), [
    (VmState.Running, False, True),   # a report from before the operator started (a restart)
    (VmState.Stopped, True, True),    # it would start the guest: confirm first
    (VmState.Defined, True, True),
    (VmState.Running, True, False),   # it would stop the guest: confirm first
    (VmState.Saved, True, True),      # a moment of a quick migration since cancelled: the guest may run again
    (VmState.Paused, True, True),     # a moment of a switchover
    (VmState.Paused, True, False),    # it would stop the paused guest: confirm first
])
async def test_otherwise_the_agent_is_asked(link: AgentLink, state: VmState, after_start: bool,
                                            running: bool) -> None:
    report(link, state, after_start=after_start)
    located = await virtualmachines._locate(index_vm(vm_body(running)), True)
    assert located is not None and located[1].state is VmState.Running  # what the agent said, not the report
    assert cast(CountingClient, link.client).calls == 1


async def test_an_unreachable_agents_report_is_not_trusted(link: AgentLink) -> None:
    report(link, VmState.Running, after_start=True)
    link.reachable = False
    await virtualmachines._locate(index_vm(vm_body()), True)
    assert cast(CountingClient, link.client).calls == 1


def test_report_suffices_only_for_a_resident_guest_in_the_state_asked_for() -> None:
    now = time.monotonic()

    def info(state: VmState) -> VmInfo:
        return VmInfo.model_construct(state=state)

    assert report_suffices(info(VmState.Running), now, now - 1, wants_running=True)
    assert report_suffices(info(VmState.Stopped), now, now - 1, wants_running=False)
    assert report_suffices(info(VmState.Defined), now, now - 1, wants_running=False)
    assert not report_suffices(None, now, now - 1, wants_running=True)
    assert not report_suffices(info(VmState.Running), now - 2, now - 1, wants_running=True)
    assert not report_suffices(info(VmState.Stopped), now, now - 1, wants_running=True)
    assert not report_suffices(info(VmState.Running), now, now - 1, wants_running=False)
    assert not report_suffices(info(VmState.Saved), now, now - 1, wants_running=True)
    assert not report_suffices(info(VmState.Paused), now, now - 1, wants_running=True)
    assert not report_suffices(info(VmState.Paused), now, now - 1, wants_running=False)


async def test_after_a_migration_ended_here_the_agent_is_asked(link: AgentLink,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A source's report from before the switchover still shows the guest Running there: a body
    from before the migration's last write must not be confirmed by it."""
    report(link, VmState.Running, after_start=True)
    moved = index_migration({"metadata": {"name": "m-1", "namespace": "ns", "uid": "u-m"},
                             "spec": {"vmName": "a"}, "status": {"phase": "Succeeded"}})
    monkeypatch.setattr(indexes, "migrations_by_vm", {"ns/a": [moved]})
    runtime().gate.finished.expect("ns/m-1", None)
    await virtualmachines._locate(index_vm(vm_body()), True)
    assert cast(CountingClient, link.client).calls == 1
