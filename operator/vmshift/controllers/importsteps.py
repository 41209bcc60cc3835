"""The VirtualMachineImport's decisions as plain data: step bookkeeping, source resolution, status.

Pure: no I/O, no clock unless none is given. The import daemon (``imports``) fetches what these
functions need (a ConfigMap's key, the agent's driver inventory, the indexed VirtualMachine),
calls them, and carries out what they return. Nothing here talks to Kubernetes or to an agent.

The steps and their order in status are part of the API: Inspect, InstallAgent,
RemoveThirdPartyDrivers, InstallSyntheticDrivers, CreateVirtualMachine, Verify. The driver steps
change a guest's drivers through its agent, so the guest must exist first: the daemon runs them in
``EXECUTION_ORDER`` (CreateVirtualMachine right after Inspect) and each step's timestamps tell
when it really ran.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from vmshift.api import conditions as cond
from vmshift.api.common import GROUP, VERSION
from vmshift.api.labels import DRIVERS_ANNOTATION, IMPORT_ANNOTATION, IMPORT_UID_LABEL
from vmshift.api.vmimport import MAX_OVF_BYTES, ImportPhase, ImportStepName, StepState
from vmshift.conversion import (
    ConversionPlan,
    ConversionTarget,
    OvfError,
    PhysicalInventoryError,
    SourceMachine,
    XmlLimits,
    inspect_physical,
    parse_ovf,
    plan_conversion,
    read_ova,
    vm_spec,
)
from vmshift.conversion.plan import ConversionRefused
from vmshift.hypervisor.protocol import GuestIoCeilings
from vmshift.timestamps import rfc3339

#: The order the daemon runs the steps in: the driver steps need the guest CreateVirtualMachine starts.
EXECUTION_ORDER: tuple[ImportStepName, ...] = (
    ImportStepName.Inspect,
    ImportStepName.CreateVirtualMachine,
    ImportStepName.InstallAgent,
    ImportStepName.RemoveThirdPartyDrivers,
    ImportStepName.InstallSyntheticDrivers,
    ImportStepName.Verify,
)
#: The order status lists them in (the API's order).
STATUS_ORDER: tuple[ImportStepName, ...] = tuple(ImportStepName)
DONE_STATES = frozenset({StepState.Succeeded, StepState.Skipped})

#: The OVA magic: "ustar" at offset 257 of the first tar header.
_TAR_MAGIC_OFFSET = 257


class ImportFailure(StrEnum):
    """Why an import failed (the Ready/Stalled reason), or why it waits (Stalled only)."""

    InvalidDescriptor = "InvalidDescriptor"  # the OVF/OVA is malformed, hostile or incomplete
    InvalidInventory = "InvalidInventory"  # the physical inventory does not validate
    SourceTooLarge = "SourceTooLarge"  # the source cannot fit a VirtualMachine
    SourceNotFound = "SourceNotFound"  # the ConfigMap or its key is missing (waits; not final)
    TargetNamespaceNotFound = "TargetNamespaceNotFound"  # spec.target.namespace does not exist (waits; not final)
    TargetNamespaceNotAllowed = "TargetNamespaceNotAllowed"  # spec.target.namespace is not the import's own
    TargetExists = "TargetExists"  # a VirtualMachine of the target name exists and is not this import's
    VirtualMachineRejected = "VirtualMachineRejected"  # the API server refused the VirtualMachine (schema, CEL)
    VirtualMachineLost = "VirtualMachineLost"  # the VirtualMachine created was deleted or replaced
    VirtualMachineFailed = "VirtualMachineFailed"  # it reached phase Failed
    StartTimeout = "StartTimeout"  # it did not run within the deadline
    AgentUnreachable = "AgentUnreachable"  # the agent holding the guest did not answer in time
    AgentRefused = "AgentRefused"  # the agent refused a driver change
    VerificationFailed = "VerificationFailed"  # after the swap the guest is not on synthetic drivers only


class ImportFailed(Exception):
    """The import cannot go on: ``reason`` from ImportFailure, ``message`` a sentence a person can act on."""

    def __init__(self, reason: ImportFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SourceMissing(Exception):
    """The source is not there yet (ConfigMap or key missing): wait, do not fail."""


def finished(status: Mapping[str, Any] | None) -> bool:
    """Whether the import ended (phase Succeeded or Failed): the daemon's filter."""
    return (status or {}).get("phase") in (ImportPhase.Succeeded.value, ImportPhase.Failed.value)


# --------------------------------------------------------------------------------------------------
# Step bookkeeping


class Steps:
    """The six steps as status shows them; every change returns nothing and is read back with ``dump``.

    Built from a previous ``status.steps`` (any order, any subset, unknown names dropped), so a
    restarted daemon continues from what status says.
    """

    def __init__(self, previous: Sequence[Mapping[str, Any]] | None = None) -> None:
        known = {str(s.get("name")): dict(s) for s in previous or () if s.get("name") in STATUS_ORDER}
        self._steps: dict[str, dict[str, Any]] = {}
        for name in STATUS_ORDER:
            step = known.get(name.value) or {}
            state = step.get("state") if step.get("state") in StepState.__members__ else StepState.Pending.value
            self._steps[name.value] = {
                "name": name.value, "state": state, "startedAt": step.get("startedAt"),
                "finishedAt": step.get("finishedAt"), "message": step.get("message"),
            }

    def state(self, name: ImportStepName) -> StepState:
        return StepState(self._steps[name.value]["state"])

    def done(self, name: ImportStepName) -> bool:
        return self.state(name) in DONE_STATES

    def message(self, name: ImportStepName) -> str | None:
        message: str | None = self._steps[name.value]["message"]
        return message

    def running(self) -> ImportStepName | None:
        return next((n for n in EXECUTION_ORDER if self.state(n) is StepState.Running), None)

    def next(self) -> ImportStepName | None:
        """The first step, in execution order, still to run (or to resume); None when all are done."""
        return next((n for n in EXECUTION_ORDER if not self.done(n)), None)

    def plan(self, name: ImportStepName, message: str) -> None:
        """Describe a step that has not started yet (what it will do)."""
        if self.state(name) is StepState.Pending:
            self._steps[name.value]["message"] = message

    def start(self, name: ImportStepName, message: str, now: datetime | None = None) -> None:
        """Mark ``name`` Running; a step already Running keeps its startedAt (a resumed step)."""
        step = self._steps[name.value]
        if step["state"] != StepState.Running.value or not step["startedAt"]:
            step["startedAt"] = rfc3339(now)
        step.update(state=StepState.Running.value, finishedAt=None, message=message)

    def _end(self, name: ImportStepName, state: StepState, message: str, now: datetime | None) -> None:
        step = self._steps[name.value]
        when = rfc3339(now)
        step.update(state=state.value, finishedAt=when, message=message)
        if not step["startedAt"]:
            step["startedAt"] = when

    def succeed(self, name: ImportStepName, message: str, now: datetime | None = None) -> None:
        self._end(name, StepState.Succeeded, message, now)

    def skip(self, name: ImportStepName, message: str, now: datetime | None = None) -> None:
        self._end(name, StepState.Skipped, message, now)

    def fail(self, name: ImportStepName, message: str, now: datetime | None = None) -> None:
        self._end(name, StepState.Failed, message, now)

    def dump(self) -> list[dict[str, Any]]:
        """``status.steps`` in the API's order, without unset fields."""
        return [{k: v for k, v in self._steps[n.value].items() if v is not None} for n in STATUS_ORDER]


class PatchPacer:
    """At most one status patch per ``interval`` seconds: how long to wait before the next one."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.last: float | None = None

    def delay(self, now: float) -> float:
        return 0.0 if self.last is None else max(0.0, self.last + self.interval - now)

    def mark(self, now: float) -> None:
        self.last = now


# --------------------------------------------------------------------------------------------------
# Source resolution


@dataclass(frozen=True)
class ConfigMapKey:
    namespace: str
    name: str
    key: str

    def __str__(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name} key {self.key}"


def configmap_key(spec: Mapping[str, Any], namespace: str) -> ConfigMapKey | None:
    """The ConfigMap key the descriptor lives in, or None (inline OVF, or a physical inventory)."""
    ref = ((spec.get("source") or {}).get("ovf") or {}).get("configMapRef")
    if not ref:
        return None
    return ConfigMapKey(namespace, str(ref.get("name", "")), str(ref.get("key", "")))


def is_tar(data: bytes) -> bool:
    """Whether ``data`` starts like a POSIX tar archive (an OVA)."""
    return data[_TAR_MAGIC_OFFSET:_TAR_MAGIC_OFFSET + 5] == b"ustar"


def inspect_source(spec: Mapping[str, Any], namespace: str, fetched: str | bytes | None = None) -> SourceMachine:
    """Read the import's source: inline OVF, the ConfigMap's value (``fetched``: text, an OVF in bytes,
    or an OVA tar), or the physical inventory. ImportFailed for a bad source; SourceMissing when the
    ConfigMap's value was not found (``fetched`` is None)."""
    source = spec.get("source") or {}
    limits = XmlLimits(max_bytes=MAX_OVF_BYTES)
    if source.get("physical") is not None:
        try:
            return inspect_physical(source["physical"])
        except PhysicalInventoryError as exc:
            raise ImportFailed(ImportFailure.InvalidInventory,
                               f"spec.source.physical is refused: {exc}. Correct the inventory and create the "
                               f"import again.") from None
    ovf = source.get("ovf") or {}
    configuration = ovf.get("configuration")
    try:
        if ovf.get("inline") is not None:
            return parse_ovf(ovf["inline"], configuration=configuration, source="spec.source.ovf.inline",
                             limits=limits)
        where = configmap_key(spec, namespace)
        if where is None:
            raise ImportFailed(ImportFailure.InvalidDescriptor,
                               "spec.source names neither ovf.inline, ovf.configMapRef nor physical.")
        if fetched is None:
            raise SourceMissing(f"{where} does not exist (or has no such key in data or binaryData); the import "
                                f"waits for it. Create it, or correct spec.source.ovf.configMapRef.")
        if isinstance(fetched, bytes) and is_tar(fetched):
            return read_ova(io.BytesIO(fetched), configuration=configuration, xml_limits=limits)
        return parse_ovf(fetched, configuration=configuration, source=str(where), limits=limits)
    except OvfError as exc:  # OvaError included
        raise ImportFailed(ImportFailure.InvalidDescriptor,
                           f"{exc}. Nothing was created: fix the descriptor and create the import again.") from None


def target_namespace_refusal(spec: Mapping[str, Any], namespace: str) -> ImportFailed | None:
    """Why the import may not create its VM where spec.target.namespace says, or None (pure).

    The operator can create VMs in any namespace, the import's author perhaps not: creating one in
    another namespace on their behalf would hand them rights they lack (as KubeVirt's and CDI's
    imports do, a VirtualMachineImport fills its own namespace only).
    """
    wanted = (spec.get("target") or {}).get("namespace")
    if not wanted or wanted == namespace:
        return None
    return ImportFailed(ImportFailure.TargetNamespaceNotAllowed,
                        f"spec.target.namespace is {wanted}, but an import creates its VirtualMachine in its own "
                        f"namespace {namespace} only: creating it in {wanted} would need rights there that the "
                        f"operator cannot check. Remove spec.target.namespace, or create the "
                        f"VirtualMachineImport in namespace {wanted}.")


def conversion_target(spec: Mapping[str, Any], namespace: str) -> ConversionTarget:
    """The planner's target from spec.target (namespace defaulted to the import's)."""
    target = spec.get("target") or {}
    return ConversionTarget(
        name=target["name"],
        namespace=target.get("namespace") or namespace,
        volume=target["volume"],
        compatibility=bool(target.get("compatibility", False)),
        placement=dict(target.get("placement") or {}),
        priority=int(target.get("priority", 0)),
        cpus=target.get("cpus"),
        memory_mib=target.get("memoryMiB"),
    )


def make_plan(spec: Mapping[str, Any], namespace: str, fetched: str | bytes | None = None) -> ConversionPlan:
    """Inspect the source and plan its conversion; ImportFailed or SourceMissing when it cannot be."""
    source = inspect_source(spec, namespace, fetched)
    try:
        return plan_conversion(source, conversion_target(spec, namespace))
    except ConversionRefused as exc:
        raise ImportFailed(ImportFailure.SourceTooLarge, f"{exc} Nothing was created.") from None


# --------------------------------------------------------------------------------------------------
# The VirtualMachine


def vm_manifest(plan: ConversionPlan, import_name: str, import_namespace: str, import_uid: str) -> dict[str, Any]:
    """The VirtualMachine the import creates: the plan's spec, the source's drivers (the guest arrives
    with them), labelled with the import's uid; owned by the import when in its namespace (an owner
    reference cannot cross namespaces: the garbage collector would delete the VM at once)."""
    target = plan.target
    metadata: dict[str, Any] = {
        "name": target.name,
        "namespace": target.namespace,
        "labels": {IMPORT_UID_LABEL: import_uid},
        "annotations": {DRIVERS_ANNOTATION: ",".join(plan.drivers_before),
                        IMPORT_ANNOTATION: f"{import_namespace}/{import_name}"},
    }
    if target.namespace == import_namespace:
        metadata["ownerReferences"] = [{
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineImport", "name": import_name,
            "uid": import_uid, "controller": True, "blockOwnerDeletion": True,
        }]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "metadata": metadata,
            "spec": vm_spec(plan)}


def owned_by(body: Mapping[str, Any], import_uid: str) -> bool:
    """Whether the VirtualMachine ``body`` is the one the import ``import_uid`` created."""
    meta = body.get("metadata") or {}
    if (meta.get("labels") or {}).get(IMPORT_UID_LABEL) == import_uid:
        return True
    return any(o.get("uid") == import_uid for o in meta.get("ownerReferences") or [])


@dataclass(frozen=True)
class ImportedVm:
    """What the import daemon watches of a VirtualMachine an import created (from the VM cache)."""

    namespace: str
    name: str
    uid: str
    import_uid: str
    phase: str | None
    host: str | None
    reason: str | None
    message: str | None
    deleting: bool
    cpus: int | None = None
    memory_mib: int | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def imported_vm(body: Mapping[str, Any]) -> ImportedVm:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    return ImportedVm(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""),
        import_uid=(meta.get("labels") or {}).get(IMPORT_UID_LABEL, ""),
        phase=status.get("phase"), host=status.get("host"), reason=status.get("reason"),
        message=status.get("message"), deleting=bool(meta.get("deletionTimestamp")),
        cpus=spec.get("cpus"), memory_mib=spec.get("memoryMiB"),
    )


def vm_reference(vm: ImportedVm | Mapping[str, Any]) -> dict[str, Any]:
    """``status.virtualMachine`` for the VM created."""
    if isinstance(vm, ImportedVm):
        name, namespace, uid = vm.name, vm.namespace, vm.uid
    else:
        meta = vm.get("metadata") or {}
        name, namespace, uid = meta.get("name", ""), meta.get("namespace", ""), meta.get("uid", "")
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "name": name, "namespace": namespace,
            "uid": uid}


def throughput(ceilings: GuestIoCeilings) -> dict[str, int]:
    """``status.throughputBefore``/``throughputAfter`` from an agent's I/O ceilings."""
    return {"networkMbps": ceilings.network_mbps, "diskMBps": ceilings.disk_mbps}


# --------------------------------------------------------------------------------------------------
# Conditions


def progressing(previous: Sequence[Mapping[str, Any]], reason: str, message: str, generation: int,
                now: datetime | None = None) -> list[dict[str, Any]]:
    """Work under way: Ready=False, Reconciling=True (no Stalled)."""
    conditions = cond.ready(previous, False, reason, message, observed_generation=generation, now=now)
    conditions = cond.reconciling(conditions, True, reason, message, observed_generation=generation, now=now)
    return cond.dump(conditions)


def waiting(previous: Sequence[Mapping[str, Any]], reason: str, message: str, generation: int,
            now: datetime | None = None) -> list[dict[str, Any]]:
    """Cannot progress until the world changes: Ready=False, Stalled=True (no Reconciling)."""
    conditions = cond.ready(previous, False, reason, message, observed_generation=generation, now=now)
    conditions = cond.stalled(conditions, True, reason, message, observed_generation=generation, now=now)
    return cond.dump(conditions)


def succeeded(previous: Sequence[Mapping[str, Any]], message: str, generation: int,
              now: datetime | None = None) -> list[dict[str, Any]]:
    conditions = cond.ready(previous, True, "Succeeded", message, observed_generation=generation, now=now)
    conditions = cond.reconciling(conditions, False, "Succeeded", message, observed_generation=generation, now=now)
    conditions = cond.stalled(conditions, False, "Succeeded", message, observed_generation=generation, now=now)
    return cond.dump(conditions)


def failed(previous: Sequence[Mapping[str, Any]], reason: ImportFailure, message: str, generation: int,
           now: datetime | None = None) -> list[dict[str, Any]]:
    """The end of a failed import: Ready=False and Stalled=True with the failure's reason."""
    return waiting(previous, reason.value, message, generation, now)
