"""MigrationPolicy status: accepted, and which VMs each policy governs now.

Thin: the decision is :func:`vmshift.scheduling.policy.governed` over the caches (VMs, namespaces
and policies), the status is :func:`vmshift.scheduling.policy.migration_policy_status`; this module
only wakes a policy's daemon when an input of the answer changed and writes the patch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from vmshift.api import conditions as cond
from vmshift.controllers import kubeapi
from vmshift.controllers.indexes import (
    GROUP,
    NAMESPACES,
    POLICIES,
    VERSION,
    VMS,
    namespace_index,
    one,
    policy_index,
    ready,
    values,
    vm_index,
)
from vmshift.controllers.runtime import until_woken
from vmshift.scheduling.policy import PolicySubject, governed, migration_policy_status

#: A policy's status is refreshed at least this often, and at most once a second.
IDLE_SECONDS = 60.0
MIN_INTERVAL = 1.0

_wakers: dict[str, asyncio.Event] = {}
_inputs: dict[str, Any] = {}
_version = 0
_answer: tuple[int, dict[str, list[str]]] | None = None


def _vm_input(body: Mapping[str, Any]) -> Any:
    return (body.get("metadata") or {}).get("labels"), ((body.get("spec") or {}).get("migration") or {}).get("policy")


def _namespace_input(body: Mapping[str, Any]) -> Any:
    return (body.get("metadata") or {}).get("labels")


def _policy_input(body: Mapping[str, Any]) -> Any:
    return (body.get("metadata") or {}).get("generation")


def _changed(type: str, body: Mapping[str, Any], selection_input: Callable[[Mapping[str, Any]], Any]) -> None:
    """Wake every policy's daemon when what selection reads changed (labels, a named policy, a spec)."""
    global _version
    uid = str((body.get("metadata") or {}).get("uid", ""))
    new = None if type == "DELETED" else selection_input(body)
    if uid in _inputs and _inputs[uid] == new:
        return
    if new is None:
        _inputs.pop(uid, None)
    else:
        _inputs[uid] = new
    _version += 1
    for event in _wakers.values():
        event.set()


VMS.listen(lambda type, body: _changed(type, body, _vm_input))
NAMESPACES.listen(lambda type, body: _changed(type, body, _namespace_input))
POLICIES.listen(lambda type, body: _changed(type, body, _policy_input))


def _governed_now() -> dict[str, list[str]]:
    """Policy -> the VMs it governs, computed once per change of the inputs."""
    global _answer
    if _answer is None or _answer[0] != _version:
        subjects = [PolicySubject(vm.namespace, vm.name, vm.labels, vm.spec.migration.policy)
                    for vm in values(vm_index)]
        namespaces = {name: one(namespace_index, name) or {} for name in namespace_index}
        _answer = (_version, governed(values(policy_index), subjects, namespaces))
    return _answer[1]


@kopf.daemon(GROUP, VERSION, "migrationpolicies", cancellation_backoff=5.0, cancellation_timeout=5.0)
async def report_migration_policy(
    name: str, meta: kopf.Meta, status: kopf.Status, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any,
) -> None:
    """Keep the policy's status: Ready (accepted) and the VMs it governs."""
    await ready()
    woken = _wakers.setdefault(name, asyncio.Event())
    written: Any = None
    while not stopped:
        woken.clear()
        policy = one(policy_index, name)
        if policy is not None:
            new = migration_policy_status(policy, _governed_now().get(name, []), int(meta.get("generation") or 0),
                                          status)
            try:
                if cond.without_timestamps(new) != written:
                    await kubeapi.patch_status("migrationpolicies", None, name, new)
                    written = cond.without_timestamps(new)
            except ApiException as exc:
                logger.warning(f"status of MigrationPolicy {name} not written: {exc.status} {exc.reason}")
        await until_woken(woken, stopped, IDLE_SECONDS)
        await stopped.wait(MIN_INTERVAL)
    _wakers.pop(name, None)
