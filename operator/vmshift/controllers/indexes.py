"""The operator's caches of the fleet: Hosts, VirtualMachines, migrations and both policy kinds.

Decisions read these in-memory copies, never a list from the API server, so the operator stays
watch-driven and cheap per object. Each entry is a compact frozen view (see ``views``). Other
controller modules add their own projections (``@VMS.index``) before the operator starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from vmshift.controllers.informer import Informer, Store, one, values, wait_synced
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import (
    HostEntry,
    MigrationEntry,
    VMEntry,
    build_fleet,
    index_host,
    index_migration,
    index_vm,
    policy_view,
)
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.policy import PolicyView

GROUP, VERSION = "vmshift.io", "v1alpha1"
__all__ = ["GROUP", "VERSION", "Store", "fleet", "one", "ready", "values"]

HOSTS = Informer("hosts")
VMS = Informer("virtualmachines")
MIGRATIONS = Informer("virtualmachinemigrations")
POLICIES = Informer("migrationpolicies")
REMEDIATION_POLICIES = Informer("remediationpolicies")
INFORMERS = [HOSTS, VMS, MIGRATIONS, POLICIES, REMEDIATION_POLICIES]


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
def policy_index(body: Mapping[str, Any]) -> dict[str, PolicyView]:
    name = body["metadata"]["name"]
    return {name: policy_view(name, body.get("spec") or {})}


def start() -> None:
    """Begin listing and watching every kind (from the operator's start-up handler)."""
    for informer in INFORMERS:
        informer.start()


async def ready() -> None:
    """Wait until every kind's first listing is in the caches (at once after start-up)."""
    await wait_synced(INFORMERS)


#: How old a fleet may be for decisions that tolerate it (conditions, queue passes): at least
#: FLEET_MAX_AGE seconds, and long enough that rebuilding takes at most 1/FLEET_REBUILD_SHARE of
#: the time (a 10,000-VM fleet takes ~0.1 s to build). Placement and validation ask for a fresh one.
FLEET_MAX_AGE = 1.0
FLEET_REBUILD_SHARE = 20
_cached: tuple[float, float, Fleet] | None = None  # (built at, seconds it took, fleet)


def fleet(*, fresh: bool = False) -> Fleet:
    """The scheduler's fleet: the caches, agent reports, placements in progress.

    Building it walks every Host, VM and migration, so it is reused unless ``fresh`` is asked.
    """
    global _cached
    now = time.monotonic()
    if not fresh and _cached is not None and now - _cached[0] < max(FLEET_MAX_AGE, _cached[1] * FLEET_REBUILD_SHARE):
        return _cached[2]
    rt = runtime()
    built = build_fleet(values(host_index), values(vm_index), values(migration_index), rt.agents.facts(), rt.overlay)
    _cached = (now, time.monotonic() - now, built)
    return built
