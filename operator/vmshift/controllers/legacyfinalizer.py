"""The finalizer Kopf kept on objects for an earlier release (``vmshift.io/finalizer``), taken off.

VirtualMachines and Hosts no longer carry it: the operator's own informers follow them, and what a
deleted one leaves behind is cleaned up from the DELETED event and, for what an operator that was down
missed, at the next start. An object an earlier release gave the finalizer still has it, and nothing
else would ever remove it: deleting that object would hang. The operator takes it off once the object
is being deleted and its own clean-up has run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from vmshift.api.labels import FINALIZER
from vmshift.controllers import kubeapi
from vmshift.controllers.views import uid_of

log = logging.getLogger("vmshift.finalizers")

LEGACY_FINALIZER = FINALIZER
#: How often taking the finalizer off is tried again when the object changed meanwhile.
RELEASE_ATTEMPTS = 5


def holds_legacy_finalizer(body: Mapping[str, Any]) -> bool:
    return LEGACY_FINALIZER in ((body.get("metadata") or {}).get("finalizers") or [])


def finalizer_release(body: Mapping[str, Any], finalizer: str = LEGACY_FINALIZER) -> dict[str, Any] | None:
    """The merge patch that takes ``finalizer`` off the object, conditional on the version seen (the
    API server answers 409 if the object changed meanwhile, so no other finalizer added since is
    lost); None when the object does not carry it (pure)."""
    meta = body.get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    if finalizer not in finalizers:
        return None
    patch: dict[str, Any] = {"finalizers": [f for f in finalizers if f != finalizer]}
    if meta.get("resourceVersion"):
        patch["resourceVersion"] = str(meta["resourceVersion"])
    return {"metadata": patch}


async def release_legacy_finalizer(plural: str, namespace: str | None, name: str, body: Mapping[str, Any]) -> None:
    """Take the legacy finalizer off the object (a vanished object is not an error); on a conflict, read
    it again and retry."""
    where = f"{plural}/{name}" if namespace is None else f"{plural} {namespace}/{name}"
    for _ in range(RELEASE_ATTEMPTS):
        patch = finalizer_release(body)
        if patch is None:
            return
        try:
            await kubeapi.patch(plural, namespace, name, patch)
            log.info("%s: removed the finalizer %s an earlier release had set", where, LEGACY_FINALIZER)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        fresh = await kubeapi.get(plural, namespace, name)
        if fresh is None or uid_of(fresh) != uid_of(body):
            return
        body = fresh
    raise RuntimeError(f"{where}: the finalizer {LEGACY_FINALIZER} could not be removed: the object changed "
                       f"under each of {RELEASE_ATTEMPTS} attempts")
