"""Where should a VM run? Filters, scores, and the Migratable answer. Pure: no I/O.

Filters are ``compatibility.check_target``. :func:`plan_placement` places a new VM (or one whose
``spec.placement.host`` is set), :func:`pick_target` chooses the target of a migration that names
none, :func:`migratable` computes the VM's ``Migratable`` condition. Scores are deterministic: equal
scores fall to the host name.

Score (0-100, higher is better) = 60 x memory balance + 40 x processor generation fit, where
*balance* is the share of the host's memory still free after the VM lands (spreading load), and
*generation fit* keeps guests without processor compatibility on the oldest processor that
works: for a guest that has not started yet it is the share of its vendor's hosts that could take
the guest later (a guest started on haswell can go to every newer Intel host, one started on
sapphirerapids only to sapphirerapids), so it needs the fewest moves later; for a started guest
(whose features are fixed) it prefers the host with the fewest features beyond the guest's,
keeping the newest hosts for the guests that need them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vmshift.api.reasons import FailureReason
from vmshift.scheduling.compatibility import Problem, Suggestions, blocking, check_target
from vmshift.scheduling.fleet import Fleet, HostView, VMView, features_on

BALANCE_WEIGHT = 60.0
GENERATION_WEIGHT = 40.0

_REASON_PHRASES: dict[FailureReason, str] = {
    FailureReason.IncompatibleProcessor: "lack the guest's processor vendor or features",
    FailureReason.InsufficientResources: "lack free memory, cpus or migration slots",
    FailureReason.TargetUnschedulable: "take no new VMs or are unhealthy",
    FailureReason.StorageNotShared: "cannot reach its disks",
    FailureReason.PlacementConstraint: "are excluded by its selector, anti-affinity or current host",
    FailureReason.AgentUnreachable: "have an unreachable agent",
    FailureReason.AlreadyMigrating: "cannot take it while it is migrating",
}


@dataclass(frozen=True)
class HostChoice:
    """A chosen host. ``waits``: the best host has no free migration slot yet (the queue waits)."""

    host: str
    score: float
    waits: bool = False


@dataclass(frozen=True)
class Refusal:
    """No host can take the VM. ``problems`` has every host's problems; ``message`` sums them up."""

    vm: str
    reason: FailureReason
    message: str
    problems: dict[str, list[Problem]] = field(default_factory=dict)

    def hosts_by_reason(self) -> dict[FailureReason, list[str]]:
        """Hosts grouped by the first problem each has."""
        out: dict[FailureReason, list[str]] = {}
        for host in sorted(self.problems):
            if self.problems[host]:
                out.setdefault(self.problems[host][0].reason, []).append(host)
        return out


@dataclass(frozen=True)
class Migratability:
    """The VM's ``Migratable`` condition: which hosts could take it now, or why none can."""

    migratable: bool
    hosts: list[str]
    reason: str
    message: str


class _GenerationCache:
    """Per-call memo: for each distinct guest feature set, how many same-vendor hosts could run it."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._memo: dict[tuple[str, frozenset[str]], float] = {}

    def mobility(self, vendor: str, features: frozenset[str]) -> float:
        key = (vendor, features)
        if key not in self._memo:
            same = [h for h in self._fleet if h.vendor == vendor]
            fits = sum(1 for h in same if features <= h.features)
            self._memo[key] = fits / len(same) if same else 0.0
        return self._memo[key]


def score_host(vm: VMView, host: HostView, fleet: Fleet, *, generations: _GenerationCache | None = None) -> float:
    """The placement score of ``host`` for ``vm`` (0-100, higher is better), rounded for stable ties."""
    free_after = host.free_memory_mib - vm.memory_mib
    balance = max(free_after, 0) / host.memory_mib if host.memory_mib > 0 else 0.0
    generation = 0.0
    if not vm.compatibility:
        if vm.started:
            surplus = len(host.features - features_on(vm, host))
            generation = 1.0 - surplus / max(len(host.features), 1)
        else:
            cache = generations or _GenerationCache(fleet)
            generation = cache.mobility(host.vendor, features_on(vm, host))
    return round(BALANCE_WEIGHT * balance + GENERATION_WEIGHT * generation, 4)


def summarize_refusal(vm: VMView, problems: dict[str, list[Problem]], *, what: str) -> Refusal:
    """One sentence from every host's problems: how many hosts fail for which reason, with examples."""
    if not problems:
        return Refusal(
            vm=vm.key,
            reason=FailureReason.TargetUnschedulable,
            message=f"No host can take {vm.name}: the fleet has no other hosts. Add a Host.",
        )
    firsts = {host: ps[0] for host, ps in problems.items() if ps}
    counts = Counter(p.reason for p in firsts.values())
    order = sorted(counts, key=lambda r: (-counts[r], list(FailureReason).index(r)))
    parts = []
    for reason in order:
        hosts = sorted(h for h, p in firsts.items() if p.reason == reason)
        shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
        parts.append(f"{len(hosts)} {_REASON_PHRASES.get(reason, reason.value)} ({shown})")
    main = order[0]
    example_host = sorted(h for h, p in firsts.items() if p.reason == main)[0]
    message = (
        f"No host can take {vm.name} for {what} ({len(problems)} checked): {'; '.join(parts)}. "
        f"On {example_host}: {firsts[example_host].message}"
    )
    return Refusal(vm=vm.key, reason=main, message=message, problems=problems)


def plan_placement(vm: VMView, fleet: Fleet) -> HostChoice | Refusal:
    """Where a VM that runs nowhere yet should start.

    With ``spec.placement.host`` (``desired_host``) set, only that host is considered: placement is
    declarative. Otherwise every host is filtered by :func:`check_target` and the best score wins.
    """
    candidates = [vm.desired_host] if vm.desired_host is not None else fleet.host_names()
    suggestions = Suggestions(vm, fleet)
    generations = _GenerationCache(fleet)
    problems: dict[str, list[Problem]] = {}
    best: HostChoice | None = None
    for name in candidates:
        found = check_target(vm, name, fleet, moving=False, suggestions=suggestions)
        if found:
            problems[name] = found
            continue
        host = fleet.hosts[name]
        score = score_host(vm, host, fleet, generations=generations)
        if best is None or score > best.score:
            best = HostChoice(host=name, score=score)
    if best is not None:
        return best
    return summarize_refusal(vm, problems, what="placement")


def rank_targets(
    vm: VMView,
    fleet: Fleet,
    *,
    quick: bool = False,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> tuple[list[HostChoice], dict[str, list[Problem]]]:
    """Every host that could take ``vm`` by migration, best first, and the problems of the others.

    ``quick``: a quick migration is allowed, so local disks do not rule a host out. Hosts whose
    only problem is a busy migration slot rank after the free ones (``waits=True``).
    """
    suggestions = Suggestions(vm, fleet)
    generations = _GenerationCache(fleet)
    ranked: list[HostChoice] = []
    problems: dict[str, list[Problem]] = {}
    for name in fleet.host_names():
        if name == vm.host or name in exclude:
            continue
        found = check_target(vm, name, fleet, moving=True, suggestions=suggestions)
        if blocking(found, quick=quick):
            problems[name] = found
            continue
        waits = any(p.transient for p in found)
        score = score_host(vm, fleet.hosts[name], fleet, generations=generations)
        ranked.append(HostChoice(host=name, score=score, waits=waits))
    ranked.sort(key=lambda p: (p.waits, -p.score, p.host))
    return ranked, problems


def pick_target(
    vm: VMView,
    fleet: Fleet,
    *,
    quick: bool = False,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> HostChoice | Refusal:
    """The target for a migration that names none: the best host with a free slot, else the best
    host that only waits for a slot, else a :class:`Refusal` saying why no host fits."""
    ranked, problems = rank_targets(vm, fleet, quick=quick, exclude=exclude)
    if ranked:
        return ranked[0]
    return summarize_refusal(vm, problems, what="migration")


def migratable(vm: VMView, fleet: Fleet) -> Migratability:
    """The ``Migratable`` condition: how many hosts could take the VM by live migration now.

    Busy migration slots do not count against a host (they free up by themselves), so the condition
    does not flap with every migration in the fleet.
    """
    if vm.host is None:
        return Migratability(False, [], "NotRunning", f"{vm.name} runs on no host, so it cannot migrate.")
    ranked, problems = rank_targets(vm, fleet)
    if ranked:
        return targets_available(vm.name, sorted(p.host for p in ranked))
    refusal = summarize_refusal(vm, problems, what="live migration")
    quick_ranked, _ = rank_targets(vm, fleet, quick=True)
    message = refusal.message
    if quick_ranked:
        message += f" A quick migration could go to {len(quick_ranked)} host(s), such as {quick_ranked[0].host}."
    return Migratability(False, [], refusal.reason.value, message)


def targets_available(vm_name: str, hosts: list[str]) -> Migratability:
    """The ``Migratable`` condition of a VM that ``hosts`` (sorted, not empty) could take."""
    shown = ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")
    noun = "host" if len(hosts) == 1 else "hosts"
    return Migratability(True, hosts, "TargetsAvailable", f"{len(hosts)} {noun} could take {vm_name} now: {shown}.")


def migratable_hosts(vm: VMView, fleet: Fleet) -> list[str]:
    """Names of the hosts that could take ``vm`` by live migration now (sorted)."""
    return migratable(vm, fleet).hosts
