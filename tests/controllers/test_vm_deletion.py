"""A deleted VM (no finalizer holds it) has its guest stopped as the deletion is seen, after any start of
it in progress, not a resync later; one whose migration is in flight is left to the orphan collection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import kopf
import pytest

from vmshift.controllers import virtualmachines
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.runtime import runtime


class _Agent:
    def __init__(self) -> None:
        self.deleted: list[tuple[str, bool]] = []

    async def delete_vm(self, vm_id: str, force: bool = False) -> None:
        self.deleted.append((vm_id, force))


def _body(host: str | None) -> kopf.Body:
    return kopf.Body({"metadata": {"namespace": "ns", "name": "vm1", "uid": "u-1"},
                      "status": {"host": host} if host else {}})


@pytest.fixture
def agents(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Agent]:
    async def ready() -> None:
        return None

    monkeypatch.setattr(virtualmachines.indexes, "ready", ready)
    fakes = {name: _Agent() for name in ("h1", "h2")}
    links = {name: AgentLink(host=name, endpoint="http://127.0.0.1:1", token="t", client=cast(Any, fake),
                             reachable=True) for name, fake in fakes.items()}
    monkeypatch.setattr(runtime().agents, "_links", links)
    return fakes


async def _deleted(body: kopf.Body) -> None:
    await virtualmachines.vm_event(type="DELETED", body=body, logger=cast(Any, logging.getLogger("test")))


async def test_the_guest_of_a_deleted_vm_is_deleted_at_once(agents: dict[str, _Agent]) -> None:
    # Seen in the chaos campaign (seed 1008): a VM deleted 30 ms after its start left the API before
    # Kopf had added the finalizer it had then; its guest ran on for 30 s until the resync collected it.
    await _deleted(_body("h1"))
    assert agents["h1"].deleted == [("u-1", True)]
    assert agents["h2"].deleted == []
    assert "ns/vm1" not in runtime().vm_locks


async def test_a_start_in_progress_ends_before_the_deletion_looks_where_the_guest_is(
        agents: dict[str, _Agent]) -> None:
    rt = runtime()
    lock = virtualmachines._lock("ns/vm1")
    await lock.acquire()  # a placement holds the VM: its status does not name the host yet
    deletion = asyncio.ensure_future(_deleted(_body(None)))
    await asyncio.sleep(0.01)
    assert not deletion.done(), "the deletion must wait for the start in progress"
    rt.placements.expect("ns/vm1", ("h2", 1, 64))  # the start chose h2 and started the guest there
    lock.release()
    await deletion
    assert agents["h2"].deleted == [("u-1", True)]
    assert rt.placements.get("ns/vm1") is None


async def test_a_vm_whose_migration_is_in_flight_is_left_to_the_orphan_collection(agents: dict[str, _Agent]) -> None:
    rt = runtime()
    rt.gate.claim("ns/vm1", "ns/vm1-to-h2")
    try:
        await _deleted(_body("h1"))
    finally:
        rt.gate.release("ns/vm1-to-h2", "ns/vm1")
    assert agents["h1"].deleted == []
