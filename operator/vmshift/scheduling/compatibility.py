"""Can this VM run on (or move to) that host? Every check before a placement or a move. Pure: no I/O.

:func:`check_target` is the one gate before every placement and every migration: same processor
vendor, the guest's features on the target, free memory and cpus (counting reservations), every disk
reachable, the target schedulable, healthy and reachable, the VM's selector and anti-affinity, and
free migration slots on source and target. It returns every problem (not just the first), so a
person fixes them all at once.
"""

from __future__ import annotations

from typing import NamedTuple

from vmshift.api.reasons import FailureReason
from vmshift.processor import COMPATIBILITY_BASELINE
from vmshift.scheduling.fleet import Fleet, HostView, VMView, features_on

#: How many missing features a message lists before it says "and N more".
_MAX_LISTED = 24


class Problem(NamedTuple):
    """One reason a VM cannot go to a host.

    ``live_only``: the problem rules out live migration but not a quick one (a local disk).
    ``transient``: it clears by itself (a migration slot frees up); a queue waits instead of failing.
    """

    reason: FailureReason
    message: str
    live_only: bool = False
    transient: bool = False


def blocking(problems: list[Problem], *, quick: bool = False, wait: bool = True) -> list[Problem]:
    """The problems that still stop the move when it may be quick (``quick``) and may wait (``wait``)."""
    return [p for p in problems if not (quick and p.live_only) and not (wait and p.transient)]


def _listing(items: list[str], limit: int = _MAX_LISTED) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _prefix(vm: VMView, target: str, moving: bool) -> str:
    if moving:
        return f"Migration {vm.name} -> {target} refused: "
    return f"Placement of {vm.name} on {target} refused: "


def fitting_hosts(vm: VMView, fleet: Fleet, *, limit: int = 3) -> list[str]:
    """Hosts (other than the VM's own) whose processor can run the guest, for suggestions."""
    out: list[str] = []
    for host in fleet:
        if host.name == vm.host:
            continue
        if not processor_problems(vm, host):
            out.append(host.name)
            if len(out) >= limit:
                break
    return out


def processor_problems(vm: VMView, host: HostView) -> list[str]:
    """Why ``vm``'s guest cannot run on ``host``'s processor, as sentence fragments (empty: it can)."""
    if not vm.started:
        return []  # a guest that never started takes whatever this host offers
    out: list[str] = []
    if vm.guest_vendor is not None and vm.guest_vendor != host.vendor:
        out.append(
            f"{host.name} is {host.vendor} ({host.cpu_model}) and the guest was started on "
            f"{vm.guest_vendor} ({vm.guest_cpu_model or 'unknown model'}); a running guest cannot move "
            f"between processor vendors"
        )
    missing = sorted(features_on(vm, host) - host.features)
    if missing:
        out.append(f"{host.name} lacks {_listing(missing)}")
    return out


class Suggestions:
    """Hosts whose processor could run the guest, computed once per VM however many hosts refuse it."""

    def __init__(self, vm: VMView, fleet: Fleet) -> None:
        self._vm = vm
        self._fleet = fleet
        self._hosts: list[str] | None = None

    def get(self) -> list[str]:
        if self._hosts is None:
            self._hosts = fitting_hosts(self._vm, self._fleet)
        return self._hosts


def _processor(vm: VMView, host: HostView, suggestions: Suggestions, prefix: str) -> list[Problem]:
    fragments = processor_problems(vm, host)
    if not fragments:
        return []
    started_on = vm.guest_cpu_model or "another host"
    if vm.guest_vendor is not None and vm.guest_vendor != host.vendor:
        why = ""
        vendor = vm.guest_vendor
        fix = f"Choose {_article(vendor)} {vendor} host, or stop the VM and start it again on {host.name}"
    elif vm.compatibility:
        why = (
            f" (the guest runs in processor compatibility mode, which still needs the "
            f"{COMPATIBILITY_BASELINE} baseline)"
        )
        vendor = vm.guest_vendor or host.vendor
        fix = f"Choose {_article(vendor)} {vendor} host that offers the baseline"
    else:
        why = f" (the guest was started on {started_on} without processor compatibility)"
        fix = (
            f"Turn on spec.processor.compatibility and restart the VM, or choose {_article(started_on)} "
            f"{started_on} host or a newer one of the same vendor"
        )
    found = suggestions.get()
    hint = f" (such as {', '.join(found)})" if found else " (none in the fleet fits)"
    message = f"{prefix}{'; '.join(fragments)}{why}. {fix}{hint}."
    return [Problem(FailureReason.IncompatibleProcessor, message)]


def _health(vm: VMView, host: HostView, prefix: str) -> list[Problem]:
    out: list[Problem] = []
    if not host.reachable:
        out.append(
            Problem(
                FailureReason.AgentUnreachable,
                f"{prefix}the agent of {host.name} does not answer. Check the agent (Host status "
                f"conditions) or choose another host.",
            )
        )
    if not host.healthy:
        out.append(
            Problem(
                FailureReason.TargetUnschedulable,
                f"{prefix}{host.name} reports a hardware problem (HardwareHealthy=False). Repair it or "
                f"choose another host.",
            )
        )
    if not host.schedulable:
        out.append(
            Problem(
                FailureReason.TargetUnschedulable,
                f"{prefix}{host.name} takes no new VMs ({host.unschedulable_reason}). Uncordon it or "
                f"choose another host.",
            )
        )
    return out


def _resources(vm: VMView, host: HostView, prefix: str) -> list[Problem]:
    short: list[str] = []
    if vm.memory_mib > host.free_memory_mib:
        short.append(
            f"{host.name} has {max(host.free_memory_mib, 0)} MiB of memory free of {host.memory_mib} "
            f"({host.allocated_memory_mib} allocated, {host.reserved_memory_mib} reserved for inbound "
            f"migrations) and {vm.name} needs {vm.memory_mib} MiB"
        )
    if vm.cpus > host.free_cpus:
        short.append(
            f"{host.name} has {max(host.free_cpus, 0)} cpus free of {host.cores} "
            f"({host.allocated_cpus} allocated, {host.reserved_cpus} reserved) and {vm.name} needs {vm.cpus}"
        )
    if not short:
        return []
    message = f"{prefix}{'; '.join(short)}. Free capacity on {host.name} or choose a larger host."
    return [Problem(FailureReason.InsufficientResources, message)]


def _storage(vm: VMView, host: HostView, prefix: str, moving: bool) -> list[Problem]:
    out: list[Problem] = []
    for disk in vm.disks:
        if disk.volume is not None and disk.volume not in host.shared_volumes:
            out.append(
                Problem(
                    FailureReason.StorageNotShared,
                    f"{prefix}{host.name} does not mount shared volume {disk.volume} (disk {disk.name}). "
                    f"Add {disk.volume} to the host's spec.storage.sharedVolumes or choose a host that "
                    f"mounts it.",
                )
            )
        elif disk.passthrough_lun is not None and disk.passthrough_lun not in host.passthrough_luns:
            out.append(
                Problem(
                    FailureReason.StorageNotShared,
                    f"{prefix}{host.name} does not see pass-through LUN {disk.passthrough_lun} "
                    f"(disk {disk.name}). Zone the LUN to {host.name} (spec.storage.passthroughLuns) or "
                    f"choose a host that sees it.",
                )
            )
        elif disk.local and moving and vm.host is not None:
            out.append(
                Problem(
                    FailureReason.StorageNotShared,
                    f"{prefix}disk {disk.name} is local to {vm.host} and cannot move live. Use "
                    f"mode Quick (the guest pauses while its state and the disk are copied) or move the "
                    f"disk to a shared volume.",
                    live_only=True,
                )
            )
    return out


def _constraints(vm: VMView, host: HostView, fleet: Fleet, prefix: str) -> list[Problem]:
    out: list[Problem] = []
    unmet = vm.host_selector.unmet(host.labels)
    if unmet:
        wanted = ", ".join(unmet)
        keys = vm.host_selector.unmet_keys(host.labels)
        has = ", ".join(f"{k}={host.labels[k]}" if k in host.labels else f"no {k}" for k in keys)
        out.append(
            Problem(
                FailureReason.PlacementConstraint,
                f"{prefix}{host.name} does not match spec.placement.hostSelector {wanted} (it has {has}). "
                f"Change the selector or the host's labels, or choose a matching host.",
            )
        )
    if vm.anti_affinity_group is not None:
        others = sorted(fleet.group_members_on(vm.anti_affinity_group, host.name) - {vm.key})
        if others:
            names = _listing([k.split("/", 1)[1] for k in others], 3)
            out.append(
                Problem(
                    FailureReason.PlacementConstraint,
                    f"{prefix}{host.name} already runs {names} of anti-affinity group "
                    f"{vm.anti_affinity_group}. Choose a host without a member of the group.",
                )
            )
    return out


def _concurrency(vm: VMView, host: HostView, fleet: Fleet, prefix: str) -> list[Problem]:
    out: list[Problem] = []
    ends = [host]
    source = fleet.host(vm.host) if vm.host is not None else None
    if source is not None:
        ends.insert(0, source)
    for end in ends:
        if end.free_migration_slots == 0:
            role = "source" if end is source else "target"
            out.append(
                Problem(
                    FailureReason.InsufficientResources,
                    f"{prefix}the {role} {end.name} already runs {end.migrations_in_flight} of its "
                    f"{end.max_concurrent_migrations} concurrent migrations. The migration waits for one "
                    f"to finish (or raise spec.maxConcurrentMigrations).",
                    transient=True,
                )
            )
    return out


def check_target(
    vm: VMView,
    target: str | HostView,
    fleet: Fleet,
    *,
    moving: bool,
    suggestions: Suggestions | None = None,
) -> list[Problem]:
    """Every reason ``vm`` cannot be placed on (``moving=False``) or migrated to (``moving=True``)
    ``target``; an empty list means it can.

    A VM that was never placed (no host) with a local disk may go anywhere; a placed one cannot
    move that disk live (the problem is ``live_only``). Concurrency problems are ``transient``.
    Callers checking one VM against many hosts pass one :class:`Suggestions` to share its work.
    """
    name = target if isinstance(target, str) else target.name
    prefix = _prefix(vm, name, moving)
    host = fleet.host(name) if isinstance(target, str) else target
    if host is None:
        return [
            Problem(
                FailureReason.TargetUnschedulable,
                f"{prefix}there is no Host named {name}. Check the name (kubectl get hosts).",
            )
        ]
    problems: list[Problem] = []
    if moving and vm.host == host.name:
        problems.append(
            Problem(
                FailureReason.PlacementConstraint,
                f"{prefix}{vm.name} already runs on {host.name}. Choose another target.",
            )
        )
    if moving and vm.migrating:
        problems.append(
            Problem(
                FailureReason.AlreadyMigrating,
                f"{prefix}{vm.name} is already migrating to {vm.migration_target}. Wait for that migration "
                f"to end or delete it.",
            )
        )
    problems += _health(vm, host, prefix)
    problems += _processor(vm, host, suggestions or Suggestions(vm, fleet), prefix)
    problems += _resources(vm, host, prefix)
    problems += _storage(vm, host, prefix, moving)
    problems += _constraints(vm, host, fleet, prefix)
    if moving:
        problems += _concurrency(vm, host, fleet, prefix)
    return problems
