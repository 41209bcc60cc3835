"""The Migratable condition computed once per VM shape agrees with the exact per-VM answer."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings

from vmshift.controllers import vmstatus
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.placement import migratable

from ..scheduling.strategies import fleets, host
from ..scheduling.strategies import vm as make_vm


@settings(max_examples=150, deadline=None)
@given(fleets(max_vms=10))
def test_the_shape_answer_without_the_own_host_is_the_exact_answer(fleet: Fleet) -> None:
    # One fleet per example and no clearing: answers cached for the last example's fleet must not leak.
    # Each VM as it is, and the same shape on every other host (so the shape's cached answer is reused).
    alike = [replace(vm, host=h.name) for vm in fleet.vms.values() for h in fleet if vm.host is not None]
    for vm in [*fleet.vms.values(), *alike]:
        exact = migratable(vm, fleet)
        shaped = vmstatus._migratable(vm, fleet)
        assert (shaped.migratable, shaped.hosts, shaped.reason) == (exact.migratable, exact.hosts, exact.reason), vm
        assert shaped.message == exact.message


def test_a_new_fleet_is_not_answered_from_the_last_fleets_cache() -> None:
    """The cache is invalidated by the fleet it was computed from (its versioned inputs), not a TTL."""
    h1 = host("h1")
    db = make_vm("db", on=h1)
    roomy = Fleet([h1, host("h2")], [db])
    full = Fleet([h1, host("h2", memory_mib=1024)], [db])
    assert vmstatus._migratable(db, roomy).migratable
    answer = vmstatus._migratable(db, full)
    assert (answer.migratable, answer.reason) == (False, migratable(db, full).reason)
    assert answer.reason is not None


def test_a_new_fleet_rechecks_only_the_hosts_whose_view_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """While VMs are adopted every second brings a new fleet (each VM changes its host's usage); a shape's
    verdict on a host whose view object is the same is kept, one on a changed view is made again."""
    checked: list[str] = []
    real = vmstatus.check_target

    def counted(vm: Any, target: Any, fleet: Fleet, **kwargs: Any) -> Any:
        checked.append(target.name)
        return real(vm, target, fleet, **kwargs)

    monkeypatch.setattr(vmstatus, "check_target", counted)
    views = [host(f"h{i}") for i in range(1, 5)]
    db = make_vm("db", on=views[0])
    before = Fleet(views, [db])
    assert vmstatus._migratable(db, before).hosts == ["h2", "h3", "h4"]
    checked.clear()
    after = Fleet([views[0], views[1], host("h3", memory_mib=1024), views[3]], [db])  # h3 filled up
    answer = vmstatus._migratable(db, after)
    assert checked == ["h3"]
    assert (answer.migratable, answer.hosts, answer.message) == (True, ["h2", "h4"], migratable(db, after).message)
    gone = Fleet([views[0], views[1]], [db])  # h3 and h4 left the fleet: their verdicts are forgotten
    assert vmstatus._migratable(db, gone).hosts == migratable(db, gone).hosts == ["h2"]
