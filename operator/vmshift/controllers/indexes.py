"""Kopf indexes of the fleet: Hosts, VirtualMachines, migrations and MigrationPolicies, kept from the watch streams.

Decisions read these in-memory copies, never a list from the API server, so the operator stays
watch-driven and cheap per object. Each entry is a compact frozen view (see ``views``).
"""

from __future__ import annotations

import time
from typing import Any

import kopf

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


@kopf.index(GROUP, VERSION, "hosts")
def host_index(body: kopf.Body, **_: Any) -> dict[str, HostEntry]:
    return {body["metadata"]["name"]: index_host(body)}


@kopf.index(GROUP, VERSION, "virtualmachines")
def vm_index(body: kopf.Body, **_: Any) -> dict[str, VMEntry]:
    entry = index_vm(body)
    return {entry.key: entry}


@kopf.index(GROUP, VERSION, "virtualmachinemigrations")
def migration_index(body: kopf.Body, **_: Any) -> dict[str, MigrationEntry]:
    entry = index_migration(body)
    return {entry.key: entry}


@kopf.index(GROUP, VERSION, "virtualmachinemigrations")
def migrations_by_vm(body: kopf.Body, **_: Any) -> dict[str, MigrationEntry]:
    entry = index_migration(body)
    return {entry.vm_key: entry}


@kopf.index(GROUP, VERSION, "migrationpolicies")
def policy_index(body: kopf.Body, **_: Any) -> dict[str, PolicyView]:
    name = body["metadata"]["name"]
    return {name: policy_view(name, body.get("spec") or {})}


def values(index: kopf.Index[Any, Any]) -> list[Any]:
    """Every entry of an index (one object per key for ours)."""
    return [item for store in index.values() for item in store]


def one(index: kopf.Index[Any, Any], key: str) -> Any | None:
    store = index.get(key)
    if not store:
        return None
    return next(iter(store))


#: How old a fleet may be for decisions that tolerate it (conditions, queue passes). Placement
#: and validation ask for a fresh one.
FLEET_MAX_AGE = 1.0
_cached: tuple[float, Fleet] | None = None


def fleet(host_index: kopf.Index[str, HostEntry], vm_index: kopf.Index[str, VMEntry],
          migration_index: kopf.Index[str, MigrationEntry], *, fresh: bool = False) -> Fleet:
    """The scheduler's fleet: indexes, agent reports, placements in progress.

    Building it walks every Host, VM and migration, so with 10,000 VMs it is reused for up to
    FLEET_MAX_AGE seconds unless ``fresh`` is asked.
    """
    global _cached
    now = time.monotonic()
    if not fresh and _cached is not None and now - _cached[0] < FLEET_MAX_AGE:
        return _cached[1]
    rt = runtime()
    built = build_fleet(values(host_index), values(vm_index), values(migration_index), rt.agents.facts(), rt.overlay)
    _cached = (now, built)
    return built
