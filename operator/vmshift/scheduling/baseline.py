"""The processor baseline of a VM in compatibility mode, computed from the fleet like vSphere's EVC.
Pure: no I/O.

A guest in compatibility mode sees the features common to every host it may run on: the hosts of
its vendor that its placement rules allow (those its ``hostSelector`` selects), whatever their
state today (a host in maintenance comes back). So it gets
the most features that still let it move anywhere it may go. The baseline is fixed into the guest
when it starts; a change of the fleet (a host added, removed or relabelled) changes the baseline for
the next start only, and :func:`baseline_condition` says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vmshift.scheduling.fleet import Fleet, HostView, VMView


@dataclass(frozen=True)
class Baseline:
    """The features every allowed host of ``vendor`` offers, and those hosts (sorted)."""

    vendor: str
    features: frozenset[str]
    hosts: tuple[str, ...]

    def to_status(self) -> dict[str, object]:
        return {"vendor": self.vendor, "features": sorted(self.features), "hostCount": len(self.hosts)}


def allowed_hosts(vm: VMView, hosts: Iterable[HostView]) -> list[HostView]:
    """The hosts ``vm``'s placement rules allow: those its ``hostSelector`` selects. A pin
    (``spec.placement.host``) is where it should run now, not a limit on where it may go: changing
    it moves the VM, so the pinned VM keeps the baseline of every host it could be pinned to."""
    return [h for h in hosts if vm.host_selector.matches(h.labels)]


def fleet_baseline(vm: VMView, hosts: Iterable[HostView], vendor: str) -> Baseline | None:
    """The baseline of ``vm`` among ``vendor``'s hosts, or None when its rules allow none of them."""
    same = sorted((h for h in allowed_hosts(vm, hosts) if h.vendor == vendor), key=lambda h: h.name)
    if not same:
        return None
    return Baseline(vendor, frozenset.intersection(*(h.features for h in same)), tuple(h.name for h in same))


def baseline_in(vm: VMView, fleet: Fleet, vendor: str) -> Baseline | None:
    """:func:`fleet_baseline` over the fleet's hosts, computed once per selector and vendor while the
    hosts stay the same (every compatible VM's status and the resync ask it)."""
    return fleet.per_hosts(("baseline", vm.host_selector, vendor), lambda: fleet_baseline(vm, fleet, vendor))


@dataclass(frozen=True)
class BaselineCheck:
    """Whether a running guest sees the current baseline: the ``ProcessorBaseline`` condition."""

    current: bool
    reason: str
    message: str


def baseline_condition(vm_name: str, guest: frozenset[str], baseline: Baseline, host: HostView) -> BaselineCheck:
    """Compare what the guest started with to what it would get if it started on ``host`` now."""
    would = baseline.features & host.features
    if guest == would:
        return BaselineCheck(True, "Current",
                             f"{vm_name} sees the baseline of {len(baseline.hosts)} {baseline.vendor} host(s) "
                             f"({len(would)} features) and can move to any of them.")
    gained, lost = sorted(would - guest), sorted(guest - would)
    parts = []
    if gained:
        parts.append(f"offers {len(gained)} more feature(s) ({_few(gained)})")
    if lost:
        parts.append(f"lacks {len(lost)} feature(s) the guest has ({_few(lost)}), so until it restarts it cannot "
                     f"move to the hosts that lack them")
    return BaselineCheck(False, "ProcessorBaselineChanged",
                         f"The processor baseline of the {baseline.vendor} hosts {vm_name} may run on changed: it "
                         f"now {' and '.join(parts)}. {vm_name} keeps the features it started with; restart it "
                         f"to take the new baseline.")


def _few(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
