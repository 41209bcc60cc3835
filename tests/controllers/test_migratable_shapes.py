"""The Migratable condition computed once per VM shape agrees with the exact per-VM answer."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings

from vmshift.controllers import virtualmachines
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.placement import migratable

from ..scheduling.strategies import fleets


@settings(max_examples=150, deadline=None)
@given(fleets(max_vms=10))
def test_the_shape_answer_without_the_own_host_is_the_exact_answer(fleet: Fleet) -> None:
    virtualmachines._migratable_cache.clear()  # one fleet per example; the cache is keyed by shape only
    # Each VM as it is, and the same shape on every other host (so the shape's cached answer is reused).
    alike = [replace(vm, host=h.name) for vm in fleet.vms.values() for h in fleet if vm.host is not None]
    for vm in [*fleet.vms.values(), *alike]:
        exact = migratable(vm, fleet)
        shaped = virtualmachines._migratable(vm, fleet)
        assert (shaped.migratable, shaped.hosts, shaped.reason) == (exact.migratable, exact.hosts, exact.reason), vm
        assert shaped.message == exact.message
