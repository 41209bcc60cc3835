"""The operator's caches of the fleet: Hosts, VirtualMachines, migrations and both policy kinds.

Decisions read these in-memory copies, never a list from the API server, so the operator stays
watch-driven and cheap per object. Each entry is a compact frozen view (see ``views``). Other
controller modules add their own projections (``@VMS.index``) before the operator starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmshift.api.common import GROUP, VERSION
from vmshift.controllers.informer import Informer, Store, one, values, wait_synced
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import (
    HostEntry,
    MigrationEntry,
    VMEntry,
    build_fleet,
    forget_vm,
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


#: How old a fleet may be for decisions that tolerate it (conditions, queue passes): at least
#: FLEET_MAX_AGE seconds, and long enough that rebuilding takes at most 1/FLEET_REBUILD_SHARE of
#: the time (a 10,000-VM fleet takes ~0.1 s to build). A ``fresh`` fleet (placement, validation) is
#: rebuilt only when something it is built from changed since: a cached object, an agent's facts,
#: a placement this process made.
FLEET_MAX_AGE = 1.0
FLEET_REBUILD_SHARE = 20
_changes = 0
#: What of each object the fleet is built from, by uid: an event that changes none of it (a VM's
#: progress in status, a migration queued) leaves a fresh fleet fresh.
_inputs: dict[str, tuple[Any, ...]] = {}


def _host_input(body: Mapping[str, Any]) -> tuple[Any, ...]:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return meta.get("generation"), meta.get("labels"), bool((status.get("remediation") or {}).get("action"))


def _vm_input(body: Mapping[str, Any]) -> tuple[Any, ...]:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return meta.get("generation"), meta.get("labels"), status.get("host"), status.get("processor")


def _migration_input(body: Mapping[str, Any]) -> tuple[Any, ...]:
    entry = index_migration(body)
    return entry.in_flight, entry.vm_key, entry.source, entry.target


def _note(type: str, body: Mapping[str, Any], fleet_input: Callable[[Mapping[str, Any]], tuple[Any, ...]]) -> None:
    """Count a change when the part of an object the fleet is built from changed (or it went)."""
    global _changes
    uid = str((body.get("metadata") or {}).get("uid", ""))
    new = None if type == "DELETED" else fleet_input(body)
    if _inputs.get(uid) != new:
        _changes += 1
        if new is None:
            _inputs.pop(uid, None)
        else:
            _inputs[uid] = new


def host_names() -> Iterable[str]:
    """Every Host the cache holds (what the agents' first answers are awaited for)."""
    return host_index.keys()


@VMS.listen
def forget_deleted_vm(type: str, body: Mapping[str, Any]) -> None:
    if type == "DELETED":
        forget_vm(str((body.get("metadata") or {}).get("uid", "")))


HOSTS.listen(lambda type, body: _note(type, body, _host_input))
VMS.listen(lambda type, body: _note(type, body, _vm_input))
MIGRATIONS.listen(lambda type, body: _note(type, body, _migration_input))


@dataclass(frozen=True)
class _Built:
    at: float
    took: float
    inputs: tuple[int, int, int]  # (cache changes, agent facts version, placements' version)
    fleet: Fleet


_cached: _Built | None = None


def fleet(*, fresh: bool = False) -> Fleet:
    """The scheduler's fleet: the caches, agent reports, placements in progress."""
    global _cached
    rt = runtime()
    now = time.monotonic()
    inputs = (_changes, rt.agents.facts_version, rt.placements.version)
    if _cached is not None and (_cached.inputs == inputs or (
            not fresh and now - _cached.at < max(FLEET_MAX_AGE, _cached.took * FLEET_REBUILD_SHARE))):
        return _cached.fleet
    built = build_fleet(values(host_index), values(vm_index), values(migration_index), rt.agents.facts(),
                        dict(rt.placements.items()))
    _cached = _Built(now, time.monotonic() - now, inputs, built)
    return built
