"""A VM that must wait for an agent is looked at again soon, and the log says why, once per reason."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.controllers.test_resync_cleanups import guest
from vmshift.controllers import guestcleanup, virtualmachines
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.runtime import runtime
from vmshift.controllers.vmstatus import DEFERRED_RESYNC_SECONDS, RESYNC_SECONDS
from vmshift.controllers.workqueue import WorkQueue
from vmshift.hypervisor.protocol import VmState


async def _nothing(*_: Any) -> None:
    return None


async def _no_read(plural: str, namespace: str, name: str) -> None:
    raise AssertionError(f"{namespace}/{name} read: no VM is a candidate")


def _resync_over(monkeypatch: pytest.MonkeyPatch, entries: list[Any], handled: set[str],
                 get: Callable[..., Awaitable[Any]], candidates: Callable[..., list[Any]] | None = None) -> None:
    """A resync pass over ``entries`` only: no fleet, reads through ``get``, no clean-up on agents."""
    monkeypatch.setattr(virtualmachines, "values", lambda index: entries)
    monkeypatch.setattr(virtualmachines, "resync_candidates", candidates or (lambda given, *rest: list(given)))
    monkeypatch.setattr(virtualmachines, "fleet", lambda fresh=False: None)
    monkeypatch.setattr(virtualmachines.kubeapi, "get", get)
    monkeypatch.setattr(virtualmachines, "resolve_duplicates", _nothing)
    monkeypatch.setattr(virtualmachines, "collect_orphans", _nothing)
    monkeypatch.setattr(runtime(), "handled", handled)


async def _resync_pass_times(monkeypatch: pytest.MonkeyPatch, count: int, *,
                             after_wait: Callable[[float, list[float]], None] = lambda now, passes: None,
                             in_pass: Callable[[list[float]], None] = lambda passes: None) -> list[float]:
    """When ``resync_forever`` runs its first ``count`` passes, on a clock that only its waits move (each
    wait runs to its end: nothing wakes the resync). ``after_wait(now, passes)`` runs after each wait,
    ``in_pass(passes)`` in each pass, ``passes`` being the times of the passes so far."""
    now = [0.0]
    passes: list[float] = []

    async def ready() -> None:
        return None

    async def wait_for(awaitable: Any, seconds: float) -> None:
        awaitable.close()
        now[0] += seconds
        after_wait(now[0], passes)
        raise TimeoutError

    async def resync_pass(logger: logging.Logger, *, fresh: bool = False) -> None:
        passes.append(now[0])
        in_pass(passes)
        if len(passes) == count:
            raise asyncio.CancelledError

    monkeypatch.setattr(virtualmachines.indexes, "ready", ready)
    monkeypatch.setattr(virtualmachines.asyncio, "wait_for", wait_for)
    monkeypatch.setattr(virtualmachines, "_clock", lambda: now[0])
    monkeypatch.setattr(virtualmachines, "resync_pass", resync_pass)
    with pytest.raises(asyncio.CancelledError):
        await virtualmachines.resync_forever(logging.getLogger("test.deferral"))
    return passes


def test_a_deferral_is_logged_once_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.deferral")
    rt = runtime()
    try:
        with caplog.at_level(logging.INFO, logger="test.deferral"):
            virtualmachines._defer("ns/vm", "the agent(s) of h2 do not answer", log)
            virtualmachines._defer("ns/vm", "the agent(s) of h2 do not answer", log)
            virtualmachines._defer("ns/vm", "not every agent has answered yet", log)
        assert "ns/vm" in rt.deferred
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [f"ns/vm: looked at again within {DEFERRED_RESYNC_SECONDS:.0f} s: the agent(s) of h2 do "
                         f"not answer",
                         f"ns/vm: looked at again within {DEFERRED_RESYNC_SECONDS:.0f} s: not every agent has "
                         f"answered yet"]
    finally:
        rt.deferred.discard("ns/vm")
        rt.deferral_told.pop("ns/vm", None)


def test_the_unreachable_agents_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    links = {name: AgentLink(host=name, endpoint="http://127.0.0.1:1", token="t", client=cast(Any, None),
                             reachable=name != "h2") for name in ("h1", "h2", "h3")}
    monkeypatch.setattr(runtime().agents, "_links", links)
    assert runtime().agents.unreachable() == ["h2"]


async def test_the_resync_comes_back_soon_while_a_vm_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM lost with its host, deferred while another agent did not answer, is placed again within
    seconds once it answers: the resync waits the short period while anything is deferred, also when
    the VM was deferred after the long wait had begun (it used to come back a full period later:
    seed 13043 of the fault campaign)."""
    def defer_late(now: float, passes: list[float]) -> None:
        if passes == [RESYNC_SECONDS] and now >= RESYNC_SECONDS + 1:
            runtime().deferred.add("ns/lost")  # deferred one second into the second wait

    try:
        passes = await _resync_pass_times(monkeypatch, 2, after_wait=defer_late)
    finally:
        runtime().deferred.discard("ns/lost")
    assert passes == [RESYNC_SECONDS, RESYNC_SECONDS + DEFERRED_RESYNC_SECONDS]


async def test_the_resync_leaves_a_vm_to_its_first_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a start Kopf's first events for thousands of VMs are still queued: the resync reads and
    reconciles only VMs whose event this process has handled, even deferred ones."""
    read: list[str] = []
    entries = [SimpleNamespace(key=f"ns/{n}", namespace="ns", name=n) for n in ("handled", "queued")]
    seen: list[list[str]] = []

    def candidates(given: Any, *rest: Any) -> list[Any]:
        seen.append([e.key for e in given])
        return list(given)

    async def get(plural: str, namespace: str, name: str) -> None:
        read.append(f"{namespace}/{name}")

    _resync_over(monkeypatch, entries, {"ns/handled"}, get, candidates)
    await virtualmachines.resync_pass(logging.getLogger("test.resync"))
    assert seen == [["ns/handled"]] and read == ["ns/handled"]


async def test_a_resync_pass_looks_at_several_vms_at_once_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of VMs deferred while the agents first answered are read and reconciled a bounded
    number at a time, not one by one."""
    entries = [SimpleNamespace(key=f"ns/vm-{i}", namespace="ns", name=f"vm-{i}") for i in range(60)]
    now, most = [0], [0]

    async def get(plural: str, namespace: str, name: str) -> dict[str, Any]:
        now[0] += 1
        most[0] = max(most[0], now[0])
        await asyncio.sleep(0.01)
        now[0] -= 1
        return {"metadata": {"namespace": namespace, "name": name}}

    _resync_over(monkeypatch, entries, {e.key for e in entries}, get)
    monkeypatch.setattr(virtualmachines, "_reconcile_logged", _nothing)
    await virtualmachines.resync_pass(logging.getLogger("test.resync"))
    assert 1 < most[0] <= virtualmachines.RESYNC_IN_FLIGHT, most


async def test_the_resync_leaves_a_vm_to_its_event_waiting_or_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM whose event the work queue holds (waiting, or its reconcile under way) belongs to that
    event: a pass during adoption used to read and reconcile again every VM caught mid-reconcile."""
    rt = runtime()
    read: list[str] = []
    entries = [SimpleNamespace(key=f"ns/{n}", namespace="ns", name=n, uid=f"uid-{n}")
               for n in ("settled", "in-progress", "waiting")]
    seen: list[list[str]] = []
    gate = asyncio.Event()

    async def handler(kind: str, body: Any) -> None:
        await gate.wait()

    queue = WorkQueue(handler, workers=1)
    worker = asyncio.create_task(queue.run())
    queue.put("MODIFIED", {"metadata": {"uid": "uid-in-progress"}})
    await asyncio.sleep(0.01)
    queue.put("MODIFIED", {"metadata": {"uid": "uid-waiting"}})  # one worker: this one waits
    assert queue.holds("uid-in-progress") and queue.holds("uid-waiting") and not queue.holds("uid-settled")

    def candidates(given: Any, *rest: Any) -> list[Any]:
        seen.append([e.key for e in given])
        return list(given)

    async def get(plural: str, namespace: str, name: str) -> None:
        read.append(f"{namespace}/{name}")

    monkeypatch.setattr(rt, "vm_events", queue)
    _resync_over(monkeypatch, entries, {e.key for e in entries}, get, candidates)
    try:
        await virtualmachines.resync_pass(logging.getLogger("test.resync"))
        assert seen == [["ns/settled"]] and read == ["ns/settled"]
        gate.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if queue.idle():
                break
        first_pass = len(seen)
        await virtualmachines.resync_pass(logging.getLogger("test.resync"))
        assert [key for call in seen[first_pass:] for key in call] == ["ns/settled", "ns/in-progress", "ns/waiting"]
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_the_resync_leaves_a_vm_whose_written_status_has_not_echoed_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the echo of a status write is in, the cache shows the VM as before it (not Running yet):
    a pass during a 10,000-VM adoption read and reconciled again every VM the API server had not
    echoed. Once the echo is in (or after ECHO_SECONDS, should it have come before the write's
    answer), the VM is the resync's again."""
    rt = runtime()
    entries = [SimpleNamespace(key=f"ns/{n}", namespace="ns", name=n, uid=f"uid-{n}") for n in ("written", "other")]
    seen: list[str] = []

    def candidates(given: Any, *rest: Any) -> list[Any]:
        seen.extend(e.key for e in given)
        return []

    _resync_over(monkeypatch, entries, {e.key for e in entries}, _no_read, candidates)
    rt.echo_pending.expect("ns/written", None)
    try:
        await virtualmachines.resync_pass(logging.getLogger("test.resync"))
        assert seen == ["ns/other"]
        seen.clear()
        virtualmachines.echo_arrived("MODIFIED", {"metadata": {"namespace": "ns", "name": "written"}})
        await virtualmachines.resync_pass(logging.getLogger("test.resync"))
        assert seen == ["ns/written", "ns/other"]
    finally:
        rt.echo_pending.observed("ns/written")


async def test_a_resync_pass_compares_the_fleet_a_step_at_a_time_letting_the_loop_run_between(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison of every VM with the agents held the event loop for 0.15-0.5 s at 3,000 VMs in
    one step; now other tasks run every RESYNC_STEP_SECONDS, and every VM is still looked at once."""

    entries = [SimpleNamespace(key=f"ns/vm-{i}", namespace="ns", name=f"vm-{i}", uid=f"uid-{i}") for i in range(40)]
    looked: list[str] = []
    neighbour_ran_at: set[int] = set()

    def candidates(given: Any, *rest: Any) -> list[Any]:
        time.sleep(0.002)  # a placement plan over many hosts
        looked.extend(e.key for e in given)
        return []

    async def neighbour() -> None:
        while True:
            neighbour_ran_at.add(len(looked))
            await asyncio.sleep(0)

    _resync_over(monkeypatch, entries, {e.key for e in entries}, _no_read, candidates)
    other = asyncio.create_task(neighbour())
    try:
        await asyncio.sleep(0)
        await virtualmachines.resync_pass(logging.getLogger("test.resync"))
    finally:
        other.cancel()
    assert sorted(looked) == sorted(e.key for e in entries)
    during = {n for n in neighbour_ran_at if 0 < n < len(entries)}
    # 40 VMs of at least 2 ms each are 80 ms: the loop ran between steps of RESYNC_STEP_SECONDS
    assert len(during) >= 3, f"other tasks ran only after {sorted(neighbour_ran_at)} VMs were looked at"


async def test_a_link_of_a_host_gone_unsupervised_is_forgotten_so_a_lost_guest_can_be_placed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Host deleted while the operator started kept the link the start's first round made (no supervisor
    was there to forget it): its agent never answered, so every look for a lost guest found a silent agent
    and the guest stayed on no host for over 50 s (fault campaign seeds 14063 and 14082). A resync pass
    forgets such a link, and keeps the links of Hosts in the cache and of Hosts a supervisor owns (a Host
    Kopf saw before the cache did)."""
    class Client:
        closed = False

        async def close(self) -> None:
            self.closed = True

    clients = {name: Client() for name in ("cached", "supervised", "gone")}
    links = {name: AgentLink(host=name, endpoint="http://127.0.0.1:1", token="t", client=cast(Any, client),
                             reachable=name != "gone") for name, client in clients.items()}
    rt = runtime()
    monkeypatch.setattr(rt.agents, "_links", links)
    monkeypatch.setattr(rt, "host_wakers", {"supervised": asyncio.Event()})
    monkeypatch.setattr(virtualmachines.indexes, "host_names", lambda: ["cached"])
    _resync_over(monkeypatch, [], set(), _no_read)
    assert rt.agents.unreachable() == ["gone"]
    await virtualmachines.resync_pass(logging.getLogger("test.resync"))
    assert sorted(links) == ["cached", "supervised"] and rt.agents.unreachable() == []
    assert clients["gone"].closed and not clients["cached"].closed


async def test_the_resync_comes_back_soon_for_the_guest_of_a_vm_deleted_during_its_migration(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM deleted during its migration: the migration was cancelled at once, but the pass its end woke
    found the guest still leaving in the agent's last report and let it be; the guest ran on for the
    resync's whole period (30 s, fault campaign seed 16208). While a deleted VM's guest is in a migration,
    the resync comes back within DEFERRED_RESYNC_SECONDS."""
    rt = runtime()

    def settle_after_first(passes: list[float]) -> None:
        rt.orphans_moving = len(passes) == 1  # the first pass finds the guest leaving, the second settled

    try:
        passes = await _resync_pass_times(monkeypatch, 3, in_pass=settle_after_first)
    finally:
        rt.orphans_moving = False
    first = RESYNC_SECONDS
    assert passes == [first, first + DEFERRED_RESYNC_SECONDS, first + DEFERRED_RESYNC_SECONDS + RESYNC_SECONDS]


async def test_the_orphan_collection_notes_a_deleted_vms_guest_still_in_its_migration(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest of a deleted VM is left alone while its agent reports it leaving, and the pass says so
    (the resync then comes back soon); once the report shows it settled, it is deleted."""
    rt = runtime()
    deleted: list[str] = []

    class Client:
        async def delete_vm(self, vm_id: str, force: bool = False) -> None:
            deleted.append(vm_id)

    link = AgentLink(host="h1", endpoint="http://127.0.0.1:1", token="t", client=cast(Any, Client()))
    reports = {"h1": {"gone": guest("gone", VmState.Running, "m1")}}
    monkeypatch.setattr(rt.agents, "reports", lambda: reports)
    monkeypatch.setattr(rt.agents, "_links", {"h1": link})
    monkeypatch.setattr(guestcleanup.kubeapi, "get", lambda *args: _nothing())
    try:
        await guestcleanup.collect_orphans([], logging.getLogger("test.resync"))
        assert rt.orphans_moving and deleted == []
        reports["h1"] = {"gone": guest("gone", VmState.Running)}  # its migration was cancelled
        await guestcleanup.collect_orphans([], logging.getLogger("test.resync"))
        assert not rt.orphans_moving and deleted == ["gone"]
    finally:
        rt.orphans_moving = False
