"""The rules by which Flux (kstatus) judges a custom resource, written out for the tests.

Flux's Kustomization ``healthChecks`` wait until each listed object is Current; for a kind it does
not know, kstatus reads only metadata.generation, status.observedGeneration and the conditions
Reconciling, Stalled and Ready. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Status = Literal["Current", "InProgress", "Failed", "Terminating"]


def kstatus(obj: Mapping[str, Any]) -> tuple[Status, str]:
    """The kstatus of ``obj`` and why."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", "deletionTimestamp is set"
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", f"observedGeneration {observed} is not generation {generation}"
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    if (conditions.get("Reconciling") or {}).get("status") == "True":
        return "InProgress", f"Reconciling: {conditions['Reconciling'].get('reason')}"
    if (conditions.get("Stalled") or {}).get("status") == "True":
        return "Failed", f"Stalled: {conditions['Stalled'].get('reason')}"
    ready = conditions.get("Ready")
    if ready is not None and ready.get("status") != "True":
        return "InProgress", f"Ready is {ready.get('status')}: {ready.get('reason')}"
    return "Current", "Ready" if ready else "no conditions to wait for"
