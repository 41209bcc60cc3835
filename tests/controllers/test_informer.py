"""The informer caches: stores keyed like Kopf indexes, full re-listings, watch-line framing, and the
fleet-wide resync's test of a VM against the agents' reports."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest

from vmshift.controllers import kubeapi
from vmshift.controllers.agents import AgentDirectory, AgentLink
from vmshift.controllers.informer import Informer, lines, one, values
from vmshift.controllers.views import index_vm
from vmshift.controllers.vmstatus import needs_resync, resync_candidates
from vmshift.hypervisor.protocol import VmInfo, VmState
from vmshift.scheduling.fleet import Fleet

from ..scheduling.strategies import host


def vm(name: str, uid: str, *, host: str | None = None, phase: str | None = None,
       labels: dict[str, str] | None = None, running: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": labels or {}, "generation": 1},
            "spec": {"cpus": 1, "memoryMiB": 512, "running": running},
            "status": {k: v for k, v in (("host", host), ("phase", phase)) if v}}


def by_host(body: dict[str, Any]) -> dict[str, str]:
    host = (body.get("status") or {}).get("host")
    return {host: body["metadata"]["name"]} if host else {}


def test_a_store_keeps_one_entry_per_object_and_moves_it_when_its_key_changes() -> None:
    informer = Informer("virtualmachines")
    placed = informer.index(by_host)
    informer.apply("ADDED", vm("a", "u1", host="h1"))
    informer.apply("ADDED", vm("b", "u2", host="h1"))
    informer.apply("ADDED", vm("c", "u3"))  # projects onto no key
    assert sorted(placed["h1"]) == ["a", "b"] and len(placed) == 1
    informer.apply("MODIFIED", vm("a", "u1", host="h2"))
    assert placed["h1"] == ["b"] and placed["h2"] == ["a"]
    informer.apply("DELETED", vm("b", "u2", host="h1"))
    assert "h1" not in placed and placed.get("h1") is None
    assert one(placed, "h2") == "a" and one(placed, "h9") is None
    assert values(placed) == ["a"]


def test_every_store_of_a_kind_sees_the_same_event_and_listeners_run_after_it() -> None:
    informer = Informer("virtualmachines")
    vms = informer.index(lambda body: {f"ns/{body['metadata']['name']}": index_vm(body)})
    labelled = informer.index(lambda body: {"x": body["metadata"]["name"]} if body["metadata"]["labels"] else {})
    heard: list[tuple[str, int]] = []
    informer.listen(lambda kind, body: heard.append((kind, len(vms))))
    informer.apply("ADDED", vm("a", "u1", labels={"imported": "yes"}))
    informer.apply("ADDED", vm("b", "u2"))
    assert one(vms, "ns/a") is not None and one(vms, "ns/b") is not None
    assert labelled["x"] == ["a"]
    assert heard == [("ADDED", 1), ("ADDED", 2)]  # each listener saw the stores already updated


def relist(informer: Informer, items: list[dict[str, Any]]) -> None:
    """What the reading thread hands the loop for one listing: each item, then the listed uids."""
    for item in items:
        informer.apply("ADDED", item)
    informer.listed({item["metadata"]["uid"] for item in items})


def test_a_relisting_forgets_what_it_no_longer_holds_and_marks_the_cache_synced() -> None:
    async def scenario() -> None:
        informer = Informer("virtualmachines")
        names = informer.index(lambda body: {body["metadata"]["name"]: body["metadata"]["uid"]})
        assert not informer.synced.is_set()
        relist(informer, [vm("a", "u1"), vm("b", "u2")])
        assert informer.synced.is_set() and sorted(names) == ["a", "b"]
        # A watch that broke missed b's deletion and c's creation: the next listing mends both.
        relist(informer, [vm("a", "u1"), vm("c", "u3")])
        assert sorted(names) == ["a", "c"]
        await asyncio.wait_for(informer.synced.wait(), 1)

    asyncio.run(scenario())


def test_watch_lines_are_framed_whatever_the_chunking() -> None:
    records = [b'{"type":"ADDED","n":1}', b'{"type":"MODIFIED","n":2}', b'{"type":"DELETED","n":3}']
    stream = b"\n".join(records) + b"\n"
    for size in (1, 2, 7, 25, len(stream)):
        chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
        assert list(lines(iter(chunks))) == records, size
    assert list(lines(iter([b'{"a":1}\n\n  \n{"b"', b':2}']))) == [b'{"a":1}', b'{"b":2}']  # no trailing newline


def test_the_resync_reconciles_only_a_vm_the_agents_contradict() -> None:
    agents = AgentDirectory()
    link = AgentLink("h1", "http://127.0.0.1:1", "token", client=None, reachable=True)  # type: ignore[arg-type]
    agents._links["h1"] = link

    entry = index_vm(vm("a", "u1", host="h1", phase="Running"))
    assert needs_resync(entry, agents)  # the agent does not hold the guest status puts there
    link.vms["u1"] = VmInfo.model_construct(state=VmState.Running)
    assert not needs_resync(entry, agents)
    assert needs_resync(index_vm(vm("a", "u1", host="h1", phase="Running", running=False)), agents)  # should stop
    assert needs_resync(index_vm(vm("a", "u1", host="h1", phase="Starting")), agents)  # status lags the agent
    # Written from a report of a quick migration's saved moment; the migration was cancelled and the guest runs
    # again (chaos seed 10057: the status said Stopped for good, since the guest agreed with the spec).
    assert needs_resync(index_vm(vm("a", "u1", host="h1", phase="Stopped")), agents)
    assert needs_resync(index_vm(vm("a", "u1", host="h1", phase="Failed")), agents)
    assert not needs_resync(index_vm(vm("a", "u1", host="h9", phase="Running")), agents)  # no link to that host
    link.reachable = False
    assert not needs_resync(index_vm(vm("b", "u2", host="h1", phase="Running")), agents)  # nothing to learn now


def test_a_resync_pass_picks_contradicted_vms_and_refused_ones_only_once_room_appears() -> None:
    agents = AgentDirectory()
    link = AgentLink("h1", "http://127.0.0.1:1", "token", client=None, reachable=True)  # type: ignore[arg-type]
    agents._links["h1"] = link
    link.vms["u-ok"] = VmInfo.model_construct(state=VmState.Running)
    small = host("h1", memory_mib=8192)
    fleet_now = Fleet([small], [])

    def entry(name: str, uid: str, **kw: Any) -> Any:
        body = vm(name, uid, **kw)
        body["spec"]["memoryMiB"] = 4096
        body["spec"]["disks"] = [{"name": "os", "sizeGiB": 20, "volume": "csv-1"}]
        return index_vm(body)

    agreeing = entry("ok", "u-ok", host="h1", phase="Running")
    lost = entry("lost", "u-lost", host="h1", phase="Running")
    moving = entry("moving", "u-mv", host="h1", phase="Running")
    never_seen = entry("new", "u-new")
    refused = entry("big", "u-big", phase="Pending")
    refused = replace(refused, spec=refused.spec.model_copy(update={"memoryMiB": 65536}))  # more than h1 has
    stopped = entry("off", "u-off", phase="Stopped", running=False)
    deferred_one = entry("waited", "u-w", host="h1", phase="Running")  # its agent did not answer last time
    link.vms["u-w"] = VmInfo.model_construct(state=VmState.Running)
    holders = {moving.key: "ns/m-1"}
    everyone = [agreeing, lost, moving, never_seen, refused, stopped, deferred_one]
    picked = resync_candidates(everyone, agents, holders.get, fleet_now, {deferred_one.key})
    assert [e.name for e in picked] == ["lost", "waited"]  # the new one belongs to its first event
    fits = entry("fits", "u-fits", phase="Pending")  # refused earlier, fits now
    assert [e.name for e in resync_candidates([fits], agents, holders.get, fleet_now, set())] == ["fits"]


def test_a_listed_item_gets_the_kind_and_api_version_its_list_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM's body goes from the informer to the VM controller, whose events name the object by its
    apiVersion and kind: a list response gives those only once, for the list."""
    page = {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineList", "metadata": {"resourceVersion": "7"},
            "items": [{"metadata": {"name": "a", "namespace": "ns", "uid": "u-a"}, "spec": {}}]}
    monkeypatch.setattr(kubeapi, "list_page", lambda plural, limit, token: page)
    informer = Informer("virtualmachines")
    delivered: list[tuple[Any, ...]] = []
    monkeypatch.setattr(informer, "_deliver", lambda fn, *args: delivered.append(args))
    assert informer._list() == "7"
    (kind, body), (uids,) = delivered
    assert kind == "ADDED" and body["kind"] == "VirtualMachine" and body["apiVersion"] == "vmshift.io/v1alpha1"
    assert uids == {"u-a"}


class _Stream:
    """A watch response: its lines in one chunk."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.data = b"".join(json.dumps(e).encode() + b"\n" for e in events)

    def stream(self, amt: int, decode_content: bool) -> Any:
        yield self.data

    def release_conn(self) -> None:
        return None


def test_listed_and_watched_bodies_arrive_without_managed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """managedFields are half of a VM's JSON and nothing in the operator reads them; a first start held
    10,000 listed bodies with them in the work queue (bench/scale.py: RSS over 512 MiB)."""
    managed = [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:cpus": {}}}}]
    page = {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineList", "metadata": {"resourceVersion": "7"},
            "items": [{"metadata": {"name": "a", "namespace": "ns", "uid": "u-a", "managedFields": managed},
                       "spec": {}}]}
    event = {"type": "MODIFIED", "object": {"metadata": {"name": "a", "namespace": "ns", "uid": "u-a",
                                                         "resourceVersion": "8", "managedFields": managed},
                                            "spec": {}, "status": {"phase": "Running"}}}
    monkeypatch.setattr(kubeapi, "list_page", lambda plural, limit, token: page)
    monkeypatch.setattr(kubeapi, "watch_stream", lambda plural, version, seconds: _Stream([event]))
    informer = Informer("virtualmachines")
    delivered: list[tuple[Any, ...]] = []
    monkeypatch.setattr(informer, "_deliver", lambda fn, *args: delivered.append(args))
    informer._watch(informer._list())
    bodies = [args[1] for args in delivered if len(args) == 2]
    assert [b["metadata"].get("resourceVersion") for b in bodies] == [None, "8"]
    assert all("managedFields" not in b["metadata"] for b in bodies)
    assert bodies[1]["status"] == {"phase": "Running"} and informer._version == "8"
