"""The operator's caches of the fleet: Hosts, VirtualMachines, migrations and both policy kinds.

Decisions read these in-memory copies, never a list from the API server, so the operator stays
watch-driven and cheap per object. Each entry is a compact frozen view (see ``views``). Other
controller modules add their own projections (``@VMS.index``) before the operator starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vmshift.api.common import GROUP, VERSION
from vmshift.controllers.informer import Informer, Store, one, values, wait_synced
from vmshift.controllers.livefleet import follow
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import (
    HostEntry,
    MigrationEntry,
    VMEntry,
    index_host,
    index_migration,
    index_vm,
    policy_view,
)
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.policy import MigrationPolicyView

__all__ = ["GROUP", "VERSION", "Store", "fleet", "one", "ready", "values"]

HOSTS = Informer("hosts")
VMS = Informer("virtualmachines")
MIGRATIONS = Informer("virtualmachinemigrations")
POLICIES = Informer("migrationpolicies")
REMEDIATION_POLICIES = Informer("remediationpolicies")
#: Namespaces, for their labels: a MigrationPolicy's namespaceSelector matches them.
NAMESPACES = Informer("namespaces")
INFORMERS = [HOSTS, VMS, MIGRATIONS, POLICIES, REMEDIATION_POLICIES, NAMESPACES]


@HOSTS.index
def host_index(body: Mapping[str, Any]) -> dict[str, HostEntry]:
    return {body["metadata"]["name"]: index_host(body)}


@VMS.index
def vm_index(body: Mapping[str, Any]) -> dict[str, VMEntry]:
    entry = index_vm(body)
    return {entry.key: entry}


@MIGRATIONS.index
def migration_index(body: Mapping[str, Any]) -> dict[str, MigrationEntry]:
    entry = index_migration(body)
    return {entry.key: entry}


@MIGRATIONS.index
def migrations_by_vm(body: Mapping[str, Any]) -> dict[str, MigrationEntry]:
    entry = index_migration(body)
    return {entry.vm_key: entry}


@POLICIES.index
def policy_index(body: Mapping[str, Any]) -> dict[str, MigrationPolicyView]:
    name = body["metadata"]["name"]
    return {name: policy_view(name, body.get("spec") or {})}


@NAMESPACES.index
def namespace_index(body: Mapping[str, Any]) -> dict[str, Mapping[str, str]]:
    meta = body.get("metadata") or {}
    return {str(meta.get("name", "")): dict(meta.get("labels") or {})}


def namespace_labels(namespace: str) -> Mapping[str, str]:
    """The labels of ``namespace`` as the cache holds them (none when it is unknown)."""
    return one(namespace_index, namespace) or {}


def start() -> None:
    """Begin listing and watching every kind (from the operator's start-up handler)."""
    for informer in INFORMERS:
        informer.start()


async def ready() -> None:
    """Wait until every kind's first listing is in the caches (at once after start-up)."""
    await wait_synced(INFORMERS)


#: How old a fleet may be for decisions that tolerate it (conditions, queue passes): a fleet
#: assembled this recently serves them as is. A ``fresh`` fleet (placement, validation, drain passes) shows
#: every change the caches, the agents' facts and this process's placements hold when it is asked for.
FLEET_MAX_AGE = 1.0


#: The fleet, kept current by the informers' events: a change costs its own share, not a rebuild.
LIVE = follow(HOSTS, VMS, MIGRATIONS, host_index, vm_index, migration_index)


def host_names() -> Iterable[str]:
    """Every Host the cache holds (what the agents' first answers are awaited for)."""
    return host_index.keys()


def fleet(*, fresh: bool = False) -> Fleet:
    """The scheduler's fleet: the caches, agent reports, placements in progress."""
    rt = runtime()
    return LIVE.fleet(rt.agents.facts(), rt.agents.facts_version, rt.placements,
                      max_age=0.0 if fresh else FLEET_MAX_AGE)
