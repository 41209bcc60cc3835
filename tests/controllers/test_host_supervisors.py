"""The Hosts' supervisors are started and stopped from the Host informer's events (not Kopf's daemons)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vmshift.controllers import agents, hostsupervisor, hostsupervisors, indexes, kubeapi, runtime
from vmshift.controllers.hostsupervisor import HostSupervisor, Stop
from vmshift.controllers.hostsupervisors import HostSupervisors, Slot, SupervisorDecision, decide, orphaned_drain_hosts
from vmshift.controllers.legacyfinalizer import LEGACY_FINALIZER, finalizer_release

DELETING = "2026-11-30T10:00:00Z"


def host(name: str, uid: str, *, deleting: bool = False, finalizers: list[str] | None = None,
         version: str = "7") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid, "resourceVersion": version}
    if deleting:
        meta["deletionTimestamp"] = DELETING
    if finalizers is not None:
        meta["finalizers"] = finalizers
    return {"apiVersion": "vmshift.io/v1alpha1", "kind": "Host", "metadata": meta, "spec": {}}


# --- the decision (pure) -----------------------------------------------------------------------------


def test_a_new_host_starts_a_supervisor_and_its_later_events_change_nothing() -> None:
    assert decide("ADDED", host("h1", "u1"), None) == SupervisorDecision(start=True)
    running = Slot("u1", Stop())
    assert decide("MODIFIED", host("h1", "u1"), running) == SupervisorDecision()
    assert decide("ADDED", host("h1", "u1"), running) == SupervisorDecision()  # a listing again after a lost watch


def test_a_host_deleted_ends_its_supervisor_once() -> None:
    running = Slot("u1", Stop())
    assert decide("DELETED", host("h1", "u1"), running) == SupervisorDecision(end_running=True)
    ending = Slot("u1", Stop(), ending=True)
    assert decide("DELETED", host("h1", "u1"), ending) == SupervisorDecision()


def test_a_host_marked_for_deletion_ends_its_supervisor_then_loses_the_legacy_finalizer_once() -> None:
    marked = host("h1", "u1", deleting=True, finalizers=[LEGACY_FINALIZER])
    assert decide("MODIFIED", marked, Slot("u1", Stop())) == SupervisorDecision(end_running=True,
                                                                                 release_finalizer=True)
    asked = Slot("u1", Stop(), ending=True, releasing=True)
    assert decide("MODIFIED", marked, asked) == SupervisorDecision(), "asked once: later events ask nothing more"
    # held by someone else's finalizer only: its supervisor ends, nothing is released
    other = host("h1", "u1", deleting=True, finalizers=["example.com/keep"])
    assert decide("MODIFIED", other, Slot("u1", Stop())) == SupervisorDecision(end_running=True)
    # the DELETED event after the release asks nothing
    assert decide("DELETED", marked, asked) == SupervisorDecision()


def test_a_host_listed_already_marked_for_deletion_gets_its_end_without_a_supervisor() -> None:
    """Deleted while the operator was down, held by the finalizer an earlier release set."""
    marked = host("h1", "u1", deleting=True, finalizers=[LEGACY_FINALIZER])
    assert decide("ADDED", marked, None) == SupervisorDecision(end_without_supervisor=True, release_finalizer=True)


def test_the_deletion_of_another_host_of_the_name_ends_nothing_that_runs() -> None:
    """A deleted Host's end is by name (its drains' migrations, its agent link): run for a stale event
    while a live Host of that name is supervised, it would undo the live one's drains."""
    live = Slot("u2", Stop())
    assert decide("DELETED", host("h1", "u1"), live) == SupervisorDecision()
    # while the old one still ends, a new one listed already marked gets its own end after it
    ending = Slot("u1", Stop(), ending=True)
    assert decide("ADDED", host("h1", "u2", deleting=True, finalizers=[LEGACY_FINALIZER]), ending) == \
        SupervisorDecision(end_without_supervisor=True, release_finalizer=True)


def test_a_new_host_under_a_known_name_replaces_the_old_ones_supervisor() -> None:
    """The old Host's DELETED event is lost when the watch has to list again."""
    assert decide("ADDED", host("h1", "u2"), Slot("u1", Stop())) == SupervisorDecision(end_running=True, start=True)
    assert decide("ADDED", host("h1", "u2"), Slot("u1", Stop(), ending=True)) == SupervisorDecision(start=True)


def test_taking_the_legacy_finalizer_off_keeps_the_others_and_is_conditional_on_the_version() -> None:
    body = host("h1", "u1", deleting=True, finalizers=["example.com/a", LEGACY_FINALIZER, "example.com/b"],
                version="41")
    assert finalizer_release(body) == {"metadata": {"finalizers": ["example.com/a", "example.com/b"],
                                                    "resourceVersion": "41"}}
    assert finalizer_release(host("h1", "u1", finalizers=["example.com/a"])) is None
    assert finalizer_release(host("h1", "u1")) is None


def test_drain_migrations_of_hosts_that_are_gone_are_orphans() -> None:
    assert orphaned_drain_hosts(["h1", "h2", "h2", "h9"], {"h1", "h2", "h3"}) == ["h9"]
    assert orphaned_drain_hosts([], {"h1"}) == []


# --- the supervisors, with stand-ins for one supervisor's loop ------------------------------------------


class Recorder:
    """Stand-ins for a supervisor's loop, a deleted Host's end and the finalizer's release, recording
    what ran in what order."""

    def __init__(self, *, obey_stop: bool = True, end_seconds: float = 0.0) -> None:
        self.log: list[str] = []
        self.stops: dict[str, Stop] = {}
        self.obey_stop = obey_stop
        self.end_seconds = end_seconds

    async def supervise(self, name: str, body: Any, stop: Stop, gate: asyncio.Semaphore) -> None:
        uid = body["metadata"]["uid"]
        self.stops[uid] = stop
        self.log.append(f"start {uid}")
        if self.obey_stop:
            await stop.wait()
        else:
            await asyncio.sleep(3600)  # a pass stuck on an agent that does not answer
        if stop.deleted:
            await asyncio.sleep(self.end_seconds)
            self.log.append(f"end {uid}")
        else:
            self.log.append(f"stopped {uid}")

    async def end(self, name: str) -> None:
        self.log.append(f"end-only {name}")

    async def release(self, name: str, body: Any) -> None:
        self.log.append(f"release {body['metadata']['uid']}")

    def supervisors(self, grace: float = 2.0) -> HostSupervisors:
        return HostSupervisors(supervise=self.supervise, end=self.end, release=self.release, grace=grace)


async def settle(supervisors: HostSupervisors) -> None:
    """Until every task but the running supervisors has ended (2 s at most)."""
    for _ in range(200):
        if supervisors.busy() == len(supervisors.running()):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)


async def test_listed_hosts_get_a_supervisor_each_and_a_deleted_one_ends() -> None:
    rec = Recorder()
    sup = rec.supervisors()
    for i in range(3):
        sup.observe("ADDED", host(f"h{i}", f"u{i}"))
    await asyncio.sleep(0.01)
    assert sorted(rec.log) == ["start u0", "start u1", "start u2"]
    assert sup.running() == ["h0", "h1", "h2"]
    sup.observe("MODIFIED", host("h1", "u1"))
    sup.observe("DELETED", host("h1", "u1"))
    await asyncio.sleep(0.01)
    assert rec.stops["u1"].deleted and "end u1" in rec.log
    assert sup.running() == ["h0", "h2"]
    await sup.stop()
    assert sorted(rec.log[-2:]) == ["stopped u0", "stopped u2"]
    assert not rec.stops["u0"].deleted, "an operator stopping is not a deletion"


async def test_a_host_made_again_under_the_same_name_starts_after_the_old_ones_end() -> None:
    rec = Recorder(end_seconds=0.1)
    sup = rec.supervisors()
    sup.observe("ADDED", host("h1", "u1"))
    await asyncio.sleep(0.01)
    sup.observe("DELETED", host("h1", "u1"))
    sup.observe("ADDED", host("h1", "u2"))
    await asyncio.sleep(0.3)
    assert rec.log == ["start u1", "end u1", "start u2"], "two supervisors of one name ran at once"
    await sup.stop()


async def test_a_host_with_the_legacy_finalizer_loses_it_only_after_its_supervisors_end() -> None:
    rec = Recorder(end_seconds=0.1)
    sup = rec.supervisors()
    sup.observe("ADDED", host("h1", "u1", finalizers=[LEGACY_FINALIZER]))
    await asyncio.sleep(0.01)
    marked = host("h1", "u1", deleting=True, finalizers=[LEGACY_FINALIZER])
    sup.observe("MODIFIED", marked)
    sup.observe("MODIFIED", marked)  # its status written meanwhile: an event more, no second release
    await settle(sup)
    assert rec.log == ["start u1", "end u1", "release u1"]
    sup.observe("DELETED", marked)
    await settle(sup)
    assert rec.log == ["start u1", "end u1", "release u1"]
    # one listed already marked (deleted while the operator was down): its end, then the release
    sup.observe("ADDED", host("h2", "u2", deleting=True, finalizers=[LEGACY_FINALIZER]))
    await settle(sup)
    assert rec.log[-2:] == ["end-only h2", "release u2"]
    assert sup.running() == []
    await sup.stop()


async def test_a_host_missing_from_a_new_listing_ends_as_deleted() -> None:
    rec = Recorder()
    sup = rec.supervisors()
    sup.observe("ADDED", host("h1", "u1"))
    sup.observe("ADDED", host("h2", "u2"))
    await asyncio.sleep(0.01)
    sup.relisted({"h2"})
    await asyncio.sleep(0.01)
    assert rec.stops["u1"].deleted and not rec.stops["u2"]
    assert sup.running() == ["h2"]
    await sup.stop()


async def test_the_operators_stop_ends_every_supervisor_promptly_even_one_stuck_in_a_pass() -> None:
    """Kopf reported ~8 Host daemons 'cancelled. Will escalate.' at the end of 10,000-VM runs: each
    supervisor is asked to stop, one stuck in its pass is cancelled after the grace, and the stop
    returns with none left; events coming after it start nothing."""
    obeying, stuck = Recorder(), Recorder(obey_stop=False)
    sup = HostSupervisors(
        supervise=lambda n, b, s, g: (stuck if n.startswith("stuck") else obeying).supervise(n, b, s, g),
        end=obeying.end, release=obeying.release, grace=0.2)
    for i in range(50):
        sup.observe("ADDED", host(f"h{i}", f"u{i}"))
    for i in range(8):
        sup.observe("ADDED", host(f"stuck{i}", f"s{i}"))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.wait_for(sup.stop(), 5)
    assert time.monotonic() - started < 1.0
    assert sup.busy() == 0
    assert len([e for e in obeying.log if e.startswith("stopped")]) == 50
    sup.observe("ADDED", host("late", "ul"))
    await asyncio.sleep(0.01)
    assert sup.busy() == 0 and "start ul" not in obeying.log


# --- the real supervisor loop under the operator's stop -----------------------------------------------


@pytest.fixture
def quiet_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[runtime.Runtime]:
    async def ready() -> None:
        return None

    runtime.reset_runtime()
    monkeypatch.setattr(indexes, "ready", ready)
    monkeypatch.setattr(hostsupervisor, "values", lambda index: [])
    yield runtime.runtime()
    runtime.reset_runtime()


async def test_real_supervisors_stop_promptly_whatever_they_are_waiting_on(
        quiet_runtime: runtime.Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asleep between passes, in a first poll an agent does not answer, in a status write the API
    server does not answer: the operator's stop ends them all within the grace, none is left, no
    agent link is dropped (migrations may still use them while the operator stops)."""
    hang = asyncio.Event()  # never set

    async def first_poll(self: HostSupervisor, spec: Any) -> None:
        if self.name.startswith("slow-agent"):
            await hang.wait()

    async def run_pass(self: HostSupervisor, logger: Any) -> float:
        if self.name.startswith("slow-api"):
            await kubeapi.patch_status("hosts", None, self.name, {"phase": "Ready"})
        return 60.0

    async def patch_status(*args: Any) -> None:
        await hang.wait()

    forgotten: list[str] = []

    async def forget(self: agents.AgentDirectory, host_name: str) -> None:
        forgotten.append(host_name)

    monkeypatch.setattr(HostSupervisor, "first_poll", first_poll)
    monkeypatch.setattr(HostSupervisor, "run_pass", run_pass)
    monkeypatch.setattr(kubeapi, "patch_status", patch_status)
    monkeypatch.setattr(agents.AgentDirectory, "forget", forget)
    sup = HostSupervisors(grace=0.3)
    names = [f"{kind}-{i}" for kind in ("idle", "slow-agent", "slow-api") for i in range(5)]
    for name in names:
        sup.observe("ADDED", host(name, f"uid-{name}"))
    await asyncio.sleep(0.1)
    assert sorted(quiet_runtime.host_wakers) == sorted(names)
    started = time.monotonic()
    await sup.stop()
    assert time.monotonic() - started < 1.5
    assert sup.busy() == 0
    assert quiet_runtime.host_wakers == {}
    assert forgotten == []


async def test_a_real_supervisor_ends_for_a_deleted_host_and_asks_its_agent_no_more(
        quiet_runtime: runtime.Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    polls: list[str] = []
    ended: list[str] = []

    async def first_poll(self: HostSupervisor, spec: Any) -> None:
        polls.append(self.name)

    async def run_pass(self: HostSupervisor, logger: Any) -> float:
        return 0.05

    async def host_ended(name: str, remediator: Any, logger: logging.Logger) -> None:
        ended.append(name)

    monkeypatch.setattr(HostSupervisor, "first_poll", first_poll)
    monkeypatch.setattr(HostSupervisor, "run_pass", run_pass)
    monkeypatch.setattr(hostsupervisor, "host_ended", host_ended)
    sup = HostSupervisors()
    sup.observe("ADDED", host("h1", "u1"))
    await asyncio.sleep(0.05)
    assert polls == ["h1"] and "h1" in quiet_runtime.host_wakers
    sup.observe("DELETED", host("h1", "u1"))
    await settle(sup)
    assert ended == ["h1"] and "h1" not in quiet_runtime.host_wakers
    await sup.stop()


async def test_first_polls_of_a_start_are_bounded(quiet_runtime: runtime.Runtime,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every listed Host's supervisor asks its agent at once, at most FIRST_POLLS_IN_FLIGHT at a time."""
    in_flight, most = 0, 0
    done = asyncio.Event()
    asked: list[str] = []

    async def first_poll(self: HostSupervisor, spec: Any) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        asked.append(self.name)
        if len(asked) == 200:
            done.set()

    async def run_pass(self: HostSupervisor, logger: Any) -> float:
        return 60.0

    monkeypatch.setattr(HostSupervisor, "first_poll", first_poll)
    monkeypatch.setattr(HostSupervisor, "run_pass", run_pass)
    sup = HostSupervisors()
    for i in range(200):
        sup.observe("ADDED", host(f"h{i}", f"u{i}"))
    await asyncio.wait_for(done.wait(), 10)
    assert most == hostsupervisors.FIRST_POLLS_IN_FLIGHT
    await sup.stop()


async def test_taking_the_legacy_finalizer_off_retries_on_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    async def patch(plural: str, namespace: str | None, name: str, body: dict[str, Any]) -> None:
        sent.append(body)
        if len(sent) == 1:
            raise kubeapi.ApiException(status=409, reason="Conflict")

    async def get(plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        return host("h1", "u1", deleting=True, finalizers=[LEGACY_FINALIZER, "example.com/new"], version="9")

    monkeypatch.setattr(kubeapi, "patch", patch)
    monkeypatch.setattr(kubeapi, "get", get)
    await hostsupervisors.release_finalizer("h1", host("h1", "u1", deleting=True, finalizers=[LEGACY_FINALIZER]))
    assert sent == [{"metadata": {"finalizers": [], "resourceVersion": "7"}},
                    {"metadata": {"finalizers": ["example.com/new"], "resourceVersion": "9"}}]
