"""The resync's fleet-wide cleanups, as pure decisions: two running copies, orphaned guests."""

from __future__ import annotations

from vmshift.controllers.vmstatus import choose_copy, orphan_guests, running_copies
from vmshift.hypervisor.guest import Guest
from vmshift.hypervisor.protocol import VmDefinition, VmInfo, VmState


def guest(vm_id: str, state: VmState, migration: str | None = None) -> VmInfo:
    g = Guest(vm_id, VmDefinition.model_validate({"name": f"n-{vm_id}", "namespace": "ns", "cpus": 1, "memoryMiB": 4,
                                                  "compatibility": False, "disks": [], "drivers": ["vmbus"]}))
    if state is VmState.Running:
        g.start(frozenset())
    else:
        g.state = state
    g.migration_id = migration
    return g.info()


def test_a_vm_running_on_two_agents_is_found_and_paused_or_leaving_copies_are_not() -> None:
    reports = {
        "h1": {"a": guest("a", VmState.Running), "b": guest("b", VmState.Paused), "c": guest("c", VmState.Running)},
        "h2": {"a": guest("a", VmState.Running), "b": guest("b", VmState.Running),
               "c": guest("c", VmState.MigratedAway)},
        "h3": {"a": guest("a", VmState.Stopped)},
    }
    assert running_copies(reports) == {"a": ["h1", "h2"]}


def test_the_copy_kept_is_the_completed_target_then_the_status_host_else_none() -> None:
    assert choose_copy(["h1", "h2"], "h2", "h1") == "h2"
    assert choose_copy(["h1", "h2"], None, "h1") == "h1"
    assert choose_copy(["h1", "h2"], "h9", "h2") == "h2", "a completed target without a copy proves nothing"
    assert choose_copy(["h1", "h2"], None, None) is None
    assert choose_copy(["h1", "h2"], None, "h3") is None


def test_orphans_are_settled_guests_the_api_does_not_know() -> None:
    reports = {
        "h1": {"known": guest("known", VmState.Running), "gone": guest("gone", VmState.Running),
               "arriving": guest("arriving", VmState.Incoming, "m1"),
               "leaving": guest("leaving", VmState.Running, "m2")},
        "h2": {"tomb": guest("tomb", VmState.MigratedAway), "stopped": guest("stopped", VmState.Stopped)},
    }
    orphans = orphan_guests(reports, {"known"})
    assert [(host, info.id) for host, info in orphans.settled] == [("h1", "gone"), ("h2", "stopped")]
    # the one leaving by migration is an orphan once its migration ends: the resync comes back for it soon
    assert [(host, info.id) for host, info in orphans.moving] == [("h1", "leaving")]
    assert orphan_guests(reports, {"known", "leaving"}).moving == []
