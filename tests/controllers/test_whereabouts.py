"""A lost guest waits only for the agents that may hold it: the hosts its records name and those whose
last report listed it. An unrelated host whose agent stays down does not keep it from being placed again."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest

from vmshift.controllers import indexes, virtualmachines
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.runtime import reset_runtime, runtime
from vmshift.controllers.views import MigrationEntry, index_migration, index_vm
from vmshift.controllers.whereabouts import blocking, may_hold
from vmshift.hypervisor.client import AgentError, AgentUnreachableError
from vmshift.hypervisor.protocol import HostInfo, VmInfo, VmState


def migration(phase: str, *, source: str | None = None, target: str | None = None,
              spec_target: str | None = None) -> MigrationEntry:
    status = {"phase": phase, **({"sourceHost": source} if source else {}),
              **({"targetHost": target} if target else {})}
    return index_migration({"metadata": {"name": f"m-{phase}", "namespace": "ns", "uid": f"u-{phase}"},
                            "spec": {"vmName": "a", **({"targetHost": spec_target} if spec_target else {})},
                            "status": status})


def test_the_host_status_names_may_hold_it() -> None:
    assert may_hold({"host": "h1"}, None, [], []) == {"h1"}


def test_a_placement_of_this_process_not_yet_in_the_body_may_hold_it() -> None:
    assert may_hold({}, "h2", [], []) == {"h2"}


def test_the_target_of_a_migration_under_way_may_hold_it() -> None:
    status = {"host": "h1", "migration": {"name": "m", "phase": "Validating", "targetHost": "h3"}}
    assert may_hold(status, None, [], []) == {"h1", "h3"}


def test_both_ends_of_the_last_migration_may_hold_it() -> None:
    status = {"lastMigration": {"name": "m", "result": "Failed", "sourceHost": "h1", "targetHost": "h4"}}
    assert may_hold(status, None, [], []) == {"h1", "h4"}


@pytest.mark.parametrize("phase", ["Validating", "Transferring", "SwitchingOver", "Failed", "Succeeded", "Cancelled"])
def test_both_ends_of_a_migration_in_the_cache_may_hold_it_whatever_its_phase(phase: str) -> None:
    assert may_hold({}, None, [migration(phase, source="h1", target="h5")], []) == {"h1", "h5"}


def test_the_target_a_migration_asks_for_may_hold_it_before_any_status() -> None:
    assert may_hold({}, None, [migration("Pending", spec_target="h6")], []) == {"h6"}


def test_a_host_whose_last_report_listed_the_guest_may_hold_it() -> None:
    assert may_hold({"host": "h1"}, None, [], ["h7"]) == {"h1", "h7"}


def test_nothing_named_no_candidate() -> None:
    assert may_hold({"host": None, "migration": None}, None, [migration("Pending")], []) == frozenset()


def test_only_a_silent_candidate_blocks() -> None:
    candidates = frozenset({"h1", "h3"})
    assert blocking(candidates, ["h9"]) == []
    assert blocking(candidates, ["h9", "h3"]) == ["h3"]
    assert blocking(candidates, []) == []


# --- _locate with agents that answer, and one that does not -----------------------------------


class Agent:
    """An agent client: holds the guest in ``state``, has never heard of it (None), or does not answer."""

    def __init__(self, state: VmState | None = None, *, answers: bool = True) -> None:
        self.state = state
        self.answers = answers
        self.calls = 0

    async def get_vm(self, vm_id: str) -> VmInfo:
        self.calls += 1
        if not self.answers:
            raise AgentUnreachableError("connection refused")
        if self.state is None:
            raise AgentError("NotFound", "no such VM", 404)
        return VmInfo.model_construct(id=vm_id, state=self.state, features=[], migration_id=None)


def lost_vm(**status: Any) -> dict[str, Any]:
    """A VM whose status names h1, whose agent was restarted: the guest is gone there."""
    return {"metadata": {"name": "a", "namespace": "ns", "uid": "u-a", "generation": 1},
            "spec": {"cpus": 1, "memoryMiB": 512, "running": True},
            "status": {"host": "h1", "phase": "Running", "startedAt": "2026-01-01T00:00:00Z", **status}}


@pytest.fixture
def agents(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Agent]]:
    """h1 (the VM's host, restarted: empty), h2 (answers, empty), dead (an unrelated host, down for good)."""
    reset_runtime()
    clients = {"h1": Agent(), "h2": Agent(), "dead": Agent(answers=False)}
    links = {name: AgentLink(host=name, endpoint="http://127.0.0.1:1", token="t", client=cast(Any, client),
                             info=HostInfo.model_construct() if name != "dead" else None,
                             reachable=name != "dead", failures=0 if name != "dead" else 3)
             for name, client in clients.items()}
    monkeypatch.setattr(runtime().agents, "_links", links)
    monkeypatch.setattr(indexes, "migrations_by_vm", {})
    yield clients
    reset_runtime()


async def locate(body: dict[str, Any]) -> tuple[str, VmInfo] | None:
    return await virtualmachines._locate(index_vm(body), True, body["status"])


async def test_an_unrelated_host_whose_agent_is_down_does_not_keep_a_lost_guest_from_being_placed_again(
        agents: dict[str, Agent]) -> None:
    assert await locate(lost_vm()) is None
    assert agents["h1"].calls >= 1 and agents["h2"].calls == 1  # every agent that answers is still asked


async def test_a_lost_guest_that_was_never_on_record_anywhere_but_its_host_is_placed_again_after_a_restart(
        agents: dict[str, Agent]) -> None:
    """Ever placed, no host in status now (stopped since): the dead agent does not block either."""
    body = lost_vm(host=None)
    assert await virtualmachines._locate(index_vm(body), True, body["status"]) is None


async def test_a_guest_an_answering_agent_holds_is_found(agents: dict[str, Agent]) -> None:
    agents["h2"].state = VmState.Running
    located = await locate(lost_vm())
    assert located is not None and located[0] == "h2"


@pytest.mark.parametrize("records", [
    {"migration": {"name": "m", "phase": "Transferring", "targetHost": "dead"}},
    {"lastMigration": {"name": "m", "result": "Failed", "sourceHost": "h1", "targetHost": "dead"}},
])
async def test_a_silent_host_the_vm_status_names_keeps_it_unknown(agents: dict[str, Agent],
                                                                   records: dict[str, Any]) -> None:
    with pytest.raises(virtualmachines._UnknownLocation, match=r"^dead$"):
        await locate(lost_vm(**records))


async def test_a_silent_target_of_one_of_its_migrations_keeps_it_unknown(agents: dict[str, Agent],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexes, "migrations_by_vm", {"ns/a": [migration("Failed", source="h1", target="dead")]})
    with pytest.raises(virtualmachines._UnknownLocation, match=r"^dead$"):
        await locate(lost_vm())


async def test_a_silent_host_whose_last_report_listed_the_guest_keeps_it_unknown(agents: dict[str, Agent]) -> None:
    dead = runtime().agents.get("dead")
    assert dead is not None
    runtime().agents._reindex("dead", {}, {"u-a": VmInfo.model_construct(id="u-a", state=VmState.Incoming)})
    with pytest.raises(virtualmachines._UnknownLocation, match=r"^dead$"):
        await locate(lost_vm())


async def test_a_candidate_reachable_by_its_polls_that_does_not_answer_now_keeps_it_unknown(
        agents: dict[str, Agent], monkeypatch: pytest.MonkeyPatch) -> None:
    agents["h2"].answers = False
    monkeypatch.setattr(indexes, "migrations_by_vm", {"ns/a": [migration("Failed", source="h1", target="h2")]})
    with pytest.raises(virtualmachines._UnknownLocation, match=r"^h2$"):
        await locate(lost_vm())


async def test_the_silent_host_of_the_vm_itself_keeps_it_unknown(agents: dict[str, Agent]) -> None:
    agents["h1"].answers = False
    with pytest.raises(virtualmachines._UnknownLocation, match=r"^h1$"):
        await locate(lost_vm())


async def test_a_vm_never_placed_is_still_judged_by_the_reports(agents: dict[str, Agent]) -> None:
    body = lost_vm(host=None, startedAt=None)
    assert await virtualmachines._locate(index_vm(body), False, body["status"]) is None
    assert all(agent.calls == 0 for agent in agents.values())


# --- a guest found defined off its status host gets status.host before it starts ---------------


class Halt(Exception):
    """Ends the reconcile once the start was asked for: what came before it is what is checked."""


class Keeper(Agent):
    """An agent holding a defined copy of the guest (a cold move's), recording when it is started."""

    def __init__(self, done: list[tuple[str, Any]]) -> None:
        super().__init__(VmState.Defined)
        self.done = done

    async def start_vm(self, vm_id: str, *, baseline: frozenset[str] | None = None) -> VmInfo:
        self.done.append(("start", "h2"))
        raise Halt


async def test_a_guest_found_defined_on_a_host_status_does_not_name_is_put_on_record_before_it_starts(
        agents: dict[str, Agent], monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[tuple[str, Any]] = []
    rt = runtime()
    h2 = rt.agents.get("h2")
    assert h2 is not None
    h2.client = cast(Any, Keeper(done))
    rt.agents._reindex("h2", {}, {"u-a": VmInfo.model_construct(id="u-a", state=VmState.Defined)})
    h2.vms = {"u-a": VmInfo.model_construct(id="u-a", state=VmState.Defined)}

    async def patch_status(plural: str, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        done.append(("patch", status))

    async def synced(*_: Any, **__: Any) -> bool:
        return True

    monkeypatch.setattr(virtualmachines.kubeapi, "patch_status", patch_status)
    monkeypatch.setattr(rt.agents, "wait_synced", synced)
    monkeypatch.setattr(virtualmachines, "fleet", lambda fresh=False: None)
    monkeypatch.setattr(virtualmachines, "start_baseline", lambda *a: None)
    with pytest.raises(Halt):
        await virtualmachines.reconcile(lost_vm(), logging.getLogger("test.whereabouts"))
    assert done == [("patch", {"host": "h2"}), ("start", "h2")]
    hinted = rt.placements.get("ns/a")
    assert hinted is not None and hinted[0] == "h2"
