"""The scheduler's fleet rebuilt from API objects, for ``why`` and ``drain --dry-run``. Pure: no I/O.

The operator builds its :class:`~vmshift.scheduling.fleet.Fleet` from its caches plus what the agents
tell it; the plugin has only the API objects, so it reads the agents' facts back from each Host's
status (phase Unreachable, condition HardwareHealthy, status.processor). Everything else goes
through the operator's own builders (``controllers.views``) and decisions (``scheduling``): nothing
here re-decides placement, compatibility or drain order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmshift.api.reasons import FailureReason
from vmshift.controllers.views import (
    AgentFacts,
    build_fleet,
    index_host,
    index_migration,
    index_vm,
    policy_view,
)
from vmshift.scheduling.compatibility import Problem, Suggestions, blocking, check_target
from vmshift.scheduling.drain import plan_drain
from vmshift.scheduling.evacuation import SETUP_SECONDS
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.moves import DrainLimits, DrainPlan
from vmshift.scheduling.placement import Migratability, migratable
from vmshift.scheduling.policy import DEFAULT_POLICY, MigrationPolicyView, select_policy


def _condition(body: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for c in (body.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return dict(c)
    return {}


def agent_facts(host: Mapping[str, Any]) -> AgentFacts:
    """What the operator last learned from a host's agent, as its Host status shows it."""
    status = host.get("status") or {}
    processor = status.get("processor") or {}
    reachable = bool(status.get("phase")) and status.get("phase") != "Unreachable"
    healthy = _condition(host, "HardwareHealthy").get("status") != "False"
    stream = (status.get("migrations") or {}).get("streamMbps")
    return AgentFacts(reachable=reachable, healthy=healthy, cpu_model=processor.get("model"),
                      vendor=processor.get("vendor"), features=frozenset(processor.get("features") or ()),
                      stream_mbps=float(stream) if stream is not None else None)


def fleet_of(hosts: Iterable[Mapping[str, Any]], vms: Iterable[Mapping[str, Any]],
             migrations: Iterable[Mapping[str, Any]]) -> Fleet:
    """The fleet the scheduler would see, from lists of Host, VirtualMachine and migration objects."""
    host_list = list(hosts)
    return build_fleet([index_host(h) for h in host_list], [index_vm(v) for v in vms],
                       [index_migration(m) for m in migrations],
                       {h["metadata"]["name"]: agent_facts(h) for h in host_list})


def policies_of(objects: Iterable[Mapping[str, Any]]) -> list[MigrationPolicyView]:
    return [policy_view(p["metadata"]["name"], p.get("spec") or {}) for p in objects]


def vm_policies(fleet: Fleet, host: str, vms: Iterable[Mapping[str, Any]],
                policies: Sequence[MigrationPolicyView]) -> dict[str, MigrationPolicyView]:
    """The policy of each VM on ``host``, chosen as the drain controller chooses it."""
    by_key = {f"{v['metadata']['namespace']}/{v['metadata']['name']}": v for v in vms}
    out: dict[str, MigrationPolicyView] = {}
    for view in fleet.vms_on(host):
        body = by_key.get(view.key)
        if body is None:
            continue
        requested = ((body.get("spec") or {}).get("migration") or {}).get("policy")
        labels = (body.get("metadata") or {}).get("labels") or {}
        out[view.key] = select_policy(labels, view.namespace, policies, requested=requested) or DEFAULT_POLICY
    return out


def drain_limits(migrations: Iterable[Mapping[str, Any]], policies: Sequence[MigrationPolicyView],
                 host: str) -> DrainLimits:
    """The limits the drain controller plans with: the strictest policy's cluster-wide parallelism, less
    the migrations other hosts have in flight."""
    limit = min(p.parallel_migrations_per_cluster for p in [DEFAULT_POLICY, *policies])
    entries = [index_migration(m) for m in migrations]
    others = sum(1 for m in entries if m.in_flight and m.source != host)
    return DrainLimits(cluster_available=max(limit - others, 1))


def dry_run_drain(host: str, hosts: Sequence[Mapping[str, Any]], vms: Sequence[Mapping[str, Any]],
                  migrations: Sequence[Mapping[str, Any]], policy_objects: Sequence[Mapping[str, Any]]) -> DrainPlan:
    """The plan the operator would follow if ``host`` went into maintenance now (every VM leaves).

    ValueError names a host that does not exist."""
    fleet = fleet_of(hosts, vms, migrations)
    policies = policies_of(policy_objects)
    return plan_drain(host, fleet, drain_limits(migrations, policies, host),
                      vm_policies=vm_policies(fleet, host, vms, policies), setup_seconds=SETUP_SECONDS)


@dataclass(frozen=True)
class HostVerdict:
    """Whether one host could take the VM by live migration now, and every problem it has."""

    host: str
    ok: bool
    waits: bool
    quick_only: bool
    problems: tuple[Problem, ...]

    @property
    def reasons(self) -> list[FailureReason]:
        return list(dict.fromkeys(p.reason for p in self.problems))


@dataclass(frozen=True)
class Why:
    """Where a VM runs, its Migratable answer, and each other host's verdict."""

    vm: str
    namespace: str
    host: str | None
    desired_host: str | None
    migratable: Migratability
    verdicts: tuple[HostVerdict, ...]


def why(namespace: str, name: str, fleet: Fleet) -> Why:
    """Why ``namespace/name`` runs where it does and which hosts could take it (the Migratable reasons,
    host by host). KeyError when the fleet has no such VM."""
    vm = fleet.vm(f"{namespace}/{name}")
    if vm is None:
        raise KeyError(f"{namespace}/{name}")
    suggestions = Suggestions(vm, fleet)
    verdicts = []
    for host in fleet.host_names():
        if host == vm.host:
            continue
        found = check_target(vm, host, fleet, moving=True, suggestions=suggestions)
        live = blocking(found)
        quick = blocking(found, quick=True)
        verdicts.append(HostVerdict(host=host, ok=not live, waits=not live and any(p.transient for p in found),
                                    quick_only=bool(live) and not quick, problems=tuple(found)))
    return Why(vm=name, namespace=namespace, host=vm.host, desired_host=vm.desired_host,
               migratable=migratable(vm, fleet), verdicts=tuple(verdicts))
