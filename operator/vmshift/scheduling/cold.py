"""Moving a stopped VM: a cold migration, as vSphere and SCVMM move a powered-off VM. Pure: no I/O.

A stopped guest has no memory to copy and no processor state to keep: its definition is re-homed
(defined on the target, removed from the source) and its processor features are fixed afresh when
it next starts, on the host it then runs on. So the checks of a live move that protect a running
guest do not apply: its last processor features (kept in status from its last run) and local disks
(they move with the definition, as a cold migration moves the files) do not block it; capacity,
storage the target cannot reach, selectors, anti-affinity and schedulability still do. No migration
link is used, so it takes no migration slot.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vmshift.api.reasons import FailureReason
from vmshift.scheduling.compatibility import blocking, check_target
from vmshift.scheduling.fleet import Fleet, VMView
from vmshift.scheduling.placement import Refusal, pick_target


@dataclass(frozen=True)
class ColdMove:
    """Where a stopped VM goes, and the sentence for status and events."""

    target: str
    message: str


@dataclass(frozen=True)
class ColdRefusal:
    """Why a stopped VM cannot move to any (or the asked) host."""

    reason: FailureReason
    message: str


def powered_off(vm: VMView) -> VMView:
    """``vm`` as the checks see a stopped guest: no processor features fixed (they are chosen at its
    next start), no slot-holding migration in flight."""
    return replace(vm, guest_features=None, guest_vendor=None, guest_cpu_model=None)


def decide_cold_move(vm: VMView, fleet: Fleet, target: str | None) -> ColdMove | ColdRefusal:
    """The host a stopped ``vm`` moves to (``target`` when asked, else the best one), or why it cannot."""
    cold = powered_off(vm)
    if target is None:
        choice = pick_target(cold, fleet, quick=True)
        if isinstance(choice, Refusal):
            return ColdRefusal(choice.reason, choice.message)
        target = choice.host
    problems = blocking(check_target(cold, target, fleet, moving=True), quick=True)
    if problems:
        return ColdRefusal(problems[0].reason, problems[0].message)
    return ColdMove(target, f"{vm.name} is stopped, so it moves cold from {vm.host} to {target}: its definition "
                            f"is re-homed, no memory is copied, and its processor features are chosen when it "
                            f"next starts on {target}.")
