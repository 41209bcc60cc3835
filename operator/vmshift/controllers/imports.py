"""VirtualMachineImport controller: a daemon per unfinished import walks its steps and shows each in status.

Acts only: the decisions (what the source is, which drivers each step changes, what Verify
accepts, the conditions) are plain functions in ``importsteps``. Talks to the API server through
``kubeapi`` and to agents only through HypervisorClient (via the runtime's agent directory).

How the steps map to actions. The API fixes the names and their order in status (Inspect,
InstallAgent, RemoveThirdPartyDrivers, InstallSyntheticDrivers, CreateVirtualMachine, Verify), but
an agent can only change the drivers of a guest that exists, so the daemon runs them in
``EXECUTION_ORDER``: Inspect reads the source and plans; CreateVirtualMachine creates the
VirtualMachine (owned by the import, annotated with the source's drivers so the guest arrives with
them), waits until the VM controller runs it, and records ``throughputBefore`` from the agent; the
three driver steps then call ``change_drivers`` on the agent holding that guest; Verify asks the agent
again and records ``throughputAfter``. Status keeps the API's order; each step's ``startedAt`` and
``finishedAt`` say when it really ran, and its message names the guest and host it acted on.

Status is patched at most about once a second, so each step stays visible while it runs.

Crash safety: everything is re-derived from status and the world. A restarted daemon skips the
steps status shows done, resumes the one shown Running, adopts the VirtualMachine carrying this
import's uid label (a second one cannot be created: the name is fixed and taken), and computes each
driver change from the agent's inventory of the guest, so a step run twice changes nothing. A
failure after the VirtualMachine exists deletes it; so does deleting an unfinished import.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, TypeVar

import kopf
from kubernetes.client.exceptions import ApiException

from vmshift.api import conditions as cond
from vmshift.api.vmimport import ImportPhase, StepState
from vmshift.api.vmimport import ImportStepName as Step
from vmshift.controllers import events, kubeapi
from vmshift.controllers.importsteps import (
    DRIVERS_ANNOTATION,
    EXECUTION_ORDER,
    GROUP,
    IMPORT_UID_LABEL,
    VERSION,
    ImportedVm,
    ImportFailed,
    ImportFailure,
    PatchPacer,
    SourceMissing,
    Steps,
    configmap_key,
    failed,
    finished,
    imported_vm,
    make_plan,
    owned_by,
    progressing,
    succeeded,
    target_namespace_refusal,
    throughput,
    vm_manifest,
    vm_reference,
    waiting,
)
from vmshift.controllers.indexes import VMS, Store, one, ready
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import uid_of
from vmshift.conversion import ConversionPlan, plan_report
from vmshift.conversion.driversteps import DRIVER_STEPS, DriverEdit, describe_change, driver_problems, planned_messages
from vmshift.hypervisor.client import AgentError, AgentUnreachableError, HypervisorClient
from vmshift.hypervisor.protocol import DriverChange, VmInfo, VmState
from vmshift.timestamps import rfc3339

#: Seconds between status patches (at most).
PATCH_INTERVAL = 1.0
#: How long the VirtualMachine may take to run (placement, start) before the import fails.
START_TIMEOUT_SECONDS = 600.0
#: How long the agent holding the guest may be unreachable (or the guest busy migrating) during a step.
AGENT_TIMEOUT_SECONDS = 180.0
#: How long a VirtualMachine just created may be missing from the index before it counts as lost.
INDEX_GRACE_SECONDS = 30.0
#: Waits between reads of a ConfigMap that does not exist yet.
SOURCE_RETRY_SECONDS = (2.0, 5.0, 10.0, 30.0)
POLL_SECONDS = 0.5
#: Guest states in which its drivers can be changed, and the one Verify wants.
CHANGEABLE = frozenset({VmState.Running, VmState.Defined, VmState.Stopped, VmState.Saved})
RUNNING = frozenset({VmState.Running})

T = TypeVar("T")


class _Stopping(Exception):
    """Kopf asked the daemon to stop: the operator exits, or the import was deleted."""


@VMS.index
def imported_vms(body: Mapping[str, Any]) -> dict[str, ImportedVm]:
    """The VirtualMachines imports created (only those carry the label), by namespace/name."""
    if IMPORT_UID_LABEL not in (body["metadata"].get("labels") or {}):
        return {}
    vm = imported_vm(body)
    return {vm.key: vm}


#: Clean-ups that outlive the daemon that started them.
_background: set[asyncio.Task[None]] = set()


async def _annotate_vm(namespace: str, name: str, annotations: dict[str, str]) -> None:
    """Merge ``annotations`` into a VirtualMachine the import owns."""
    await kubeapi.patch("virtualmachines", namespace, name, {"metadata": {"annotations": annotations}})


def _api_message(exc: ApiException) -> str:
    """The message of the API server's Status in ``exc``, else its reason."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


class ImportJob:
    """One import being driven: its identity, the status it writes, and the plan once inspected."""

    def __init__(self, *, name: str, namespace: str, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status,
                 body: kopf.Body, stopped: kopf.DaemonStopped, index: Store[ImportedVm],
                 logger: kopf.Logger) -> None:
        self.name = name
        self.namespace = namespace
        self.uid: str = meta["uid"]
        self.generation = int(meta.get("generation") or 0)
        self.spec: dict[str, Any] = dict(spec)
        self.body = body
        self.status: dict[str, Any] = dict(status or {})
        self.steps = Steps(self.status.get("steps"))
        self.pacer = PatchPacer(PATCH_INTERVAL)
        self.stopped = stopped
        self.index = index
        self.logger = logger
        self.plan: ConversionPlan | None = None
        target = self.spec.get("target") or {}
        self.vm_namespace: str = target.get("namespace") or namespace
        self.vm_name: str = target.get("name", "")

    @property
    def vm_key(self) -> str:
        return f"{self.vm_namespace}/{self.vm_name}"

    @property
    def vm_uid(self) -> str | None:
        uid: str | None = (self.status.get("virtualMachine") or {}).get("uid")
        return uid

    # -- status ------------------------------------------------------------------------------------

    async def write(self, **fields: Any) -> None:
        """Patch status with ``fields`` and the steps, no sooner than PATCH_INTERVAL after the last patch."""
        self.status.update(fields)
        self.status["steps"] = self.steps.dump()
        self.status["observedGeneration"] = self.generation
        delay = self.pacer.delay(time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)
        await kubeapi.patch_status("virtualmachineimports", self.namespace, self.name, dict(self.status))
        self.pacer.mark(time.monotonic())

    def _conditions(self) -> list[dict[str, Any]]:
        return list(self.status.get("conditions") or [])

    async def _sleep(self, seconds: float) -> None:
        await self.stopped.wait(seconds)
        if self.stopped:
            raise _Stopping()

    # -- the walk ----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not self.status.get("conditions"):
                message = f"Importing {self.spec_kind()} as VirtualMachine {self.vm_key}."
                await self.write(phase=ImportPhase.Pending.value, startedAt=rfc3339(), message=message,
                                 conditions=cond.dump(cond.first_look([], message,
                                                                      observed_generation=self.generation)))
            actions: dict[Step, Callable[[bool], Awaitable[tuple[StepState, str]]]] = {
                Step.Inspect: self._inspect,
                Step.CreateVirtualMachine: self._create,
                Step.InstallAgent: lambda resumed: self._drivers(Step.InstallAgent, resumed),
                Step.RemoveThirdPartyDrivers: lambda resumed: self._drivers(Step.RemoveThirdPartyDrivers, resumed),
                Step.InstallSyntheticDrivers: lambda resumed: self._drivers(Step.InstallSyntheticDrivers, resumed),
                Step.Verify: self._verify,
            }
            refusal = target_namespace_refusal(self.spec, self.namespace) if not self.vm_uid else None
            if refusal is not None:
                raise refusal
            for step in EXECUTION_ORDER:
                if not self.steps.done(step):
                    await self._run_step(step, actions[step])
            await self._succeed()
        except ImportFailed as exc:
            await self._fail(exc)
        except _Stopping:
            await self._stop()

    def spec_kind(self) -> str:
        source = self.spec.get("source") or {}
        if source.get("physical"):
            return f"physical machine {source['physical'].get('hostname', '')}"
        where = configmap_key(self.spec, self.namespace)
        return f"the OVF descriptor in {where}" if where else "the inline OVF descriptor"

    async def _run_step(self, step: Step, action: Callable[[bool], Awaitable[tuple[StepState, str]]]) -> None:
        if self.stopped:
            raise _Stopping()
        resumed = self.steps.state(step) is StepState.Running
        summary = self.steps.message(step) or (f"Resuming {step.value}." if resumed else
                                               f"{step.value} of {self.vm_key}.")
        headline = summary.splitlines()[0]
        self.steps.start(step, summary)
        if resumed:
            self.logger.info(f"import {self.namespace}/{self.name}: resuming step {step.value}")
        else:
            events.info(self.body, reason="StepStarted", message=f"{step.value}: {headline}")
        await self.write(phase=ImportPhase.Running.value, message=f"{step.value}: {headline}",
                         conditions=progressing(self._conditions(), step.value, f"{step.value}: {headline}",
                                                self.generation))
        try:
            state, message = await action(resumed)
        except ImportFailed as exc:
            self.steps.fail(step, exc.message)
            raise
        if state is StepState.Skipped:
            self.steps.skip(step, message)
        else:
            self.steps.succeed(step, message)
        self.logger.info(f"import {self.namespace}/{self.name}: {step.value} {state.value}")

    async def _succeed(self) -> None:
        before = self.status.get("throughputBefore") or {}
        after = self.status.get("throughputAfter") or {}
        entry = self._entry()
        host = entry.host if entry is not None else None
        message = (f"VirtualMachine {self.vm_key} runs on {host or 'its host'} on synthetic drivers: network "
                   f"{before.get('networkMbps')} -> {after.get('networkMbps')} Mbit/s, disk "
                   f"{before.get('diskMBps')} -> {after.get('diskMBps')} MB/s.")
        await self.write(phase=ImportPhase.Succeeded.value, finishedAt=rfc3339(), message=message,
                         conditions=succeeded(self._conditions(), message, self.generation))
        events.info(self.body, reason="Succeeded", message=message)

    async def _fail(self, exc: ImportFailed) -> None:
        deleted = await self._delete_vm()
        message = exc.message
        if deleted:
            message += f" VirtualMachine {self.vm_key}, which the import had created, was deleted."
        extra: dict[str, Any] = {"virtualMachine": None} if deleted else {}
        await self.write(phase=ImportPhase.Failed.value, finishedAt=rfc3339(), message=message,
                         conditions=failed(self._conditions(), exc.reason, message, self.generation), **extra)
        events.warn(self.body, reason=exc.reason.value, message=message)
        self.logger.info(f"import {self.namespace}/{self.name} failed: {exc.reason.value}: {message}")

    async def _stop(self) -> None:
        """Return at once (Kopf holds the import's finalizer until the daemon ends, and rechecks only
        after cancellation_backoff if it does not end instantly). Deleting an unfinished import leaves
        nothing half-made: the VirtualMachine goes too, by the garbage collector through the owner
        reference, and by a task of its own (the only way when it lives in another namespace)."""
        reason = self.stopped.reason
        if reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in reason:
            task = asyncio.create_task(self._delete_after_deletion())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def _delete_after_deletion(self) -> None:
        try:
            if await self._delete_vm():
                self.logger.info(f"import {self.namespace}/{self.name} deleted: deleted {self.vm_key}")
        except Exception as exc:  # a best effort: the garbage collector covers the import's namespace
            self.logger.warning(f"import {self.namespace}/{self.name} deleted; deleting {self.vm_key} failed: {exc}")

    async def _delete_vm(self) -> bool:
        """Delete the VirtualMachine this import created, if it exists; True when one was deleted."""
        if self.steps.state(Step.CreateVirtualMachine) is StepState.Pending and not self.vm_uid:
            return False
        body = await kubeapi.get("virtualmachines", self.vm_namespace, self.vm_name)
        if not body or not owned_by(body, self.uid):
            return False
        await kubeapi.delete("virtualmachines", self.vm_namespace, self.vm_name)
        events.info(self.body, reason="DeletedVirtualMachine",
                    message=f"Deleted VirtualMachine {self.vm_key}: the import did not finish.")
        return True

    # -- Inspect -----------------------------------------------------------------------------------

    async def _ensure_plan(self) -> ConversionPlan:
        """The conversion plan; waits (Stalled) while the ConfigMap holding the descriptor is missing."""
        if self.plan is not None:
            return self.plan
        where = configmap_key(self.spec, self.namespace)
        attempt, told = 0, ""
        while True:
            fetched = await kubeapi.read_configmap_key(where.namespace, where.name, where.key) if where else None
            try:
                # parsing an OVF/OVA (XML, tar, digests of every member) is CPU work: off the event loop
                self.plan = await asyncio.to_thread(make_plan, self.spec, self.namespace, fetched)
                return self.plan
            except SourceMissing as exc:
                if str(exc) != told:
                    told = str(exc)
                    events.warn(self.body, reason=ImportFailure.SourceNotFound.value, message=told)
                    await self.write(message=told, conditions=waiting(
                        self._conditions(), ImportFailure.SourceNotFound.value, told, self.generation))
            await self._sleep(SOURCE_RETRY_SECONDS[min(attempt, len(SOURCE_RETRY_SECONDS) - 1)])
            attempt += 1

    async def _inspect(self, resumed: bool) -> tuple[StepState, str]:
        plan = await self._ensure_plan()
        report = plan_report(plan)
        for step, message in planned_messages(plan, report).items():
            self.steps.plan(step, message)
        self.status["warnings"] = report["warnings"]
        inspect = next(s["message"] for s in report["steps"] if s["name"] == Step.Inspect.value)
        return StepState.Succeeded, inspect

    # -- CreateVirtualMachine ----------------------------------------------------------------------

    def _entry(self) -> ImportedVm | None:
        entry: ImportedVm | None = one(self.index, self.vm_key)
        return entry

    async def _create(self, resumed: bool) -> tuple[StepState, str]:
        entry = self._entry()
        recorded = self.vm_uid
        if recorded:
            if entry is None or entry.uid != recorded:
                body = await kubeapi.get("virtualmachines", self.vm_namespace, self.vm_name)
                if not body or uid_of(body) != recorded:
                    raise self._lost()
            uid = recorded
        elif entry is not None and entry.import_uid == self.uid:
            uid = entry.uid  # created before a crash, not yet recorded: adopt it
        else:
            uid = await self._create_vm()
        if not recorded:
            reference = vm_reference({"metadata": {"name": self.vm_name, "namespace": self.vm_namespace, "uid": uid}})
            await self.write(virtualMachine=reference,
                             message=f"{Step.CreateVirtualMachine.value}: VirtualMachine {self.vm_key} exists; "
                                     f"waiting for it to run.")
        host, info = await self._wait_running(uid)
        self.status["throughputBefore"] = throughput(info.io_ceilings)
        return StepState.Succeeded, (
            f"VirtualMachine {self.vm_key} (uid {uid}) runs on {host} with the source's drivers "
            f"({', '.join(info.drivers) or 'none'}): network {info.io_ceilings.network_mbps} Mbit/s, disk "
            f"{info.io_ceilings.disk_mbps} MB/s, as the agent reports. InstallAgent, RemoveThirdPartyDrivers and "
            f"InstallSyntheticDrivers act on this guest through the agent of the host that holds it.")

    async def _create_vm(self) -> str:
        plan = await self._ensure_plan()
        manifest = vm_manifest(plan, self.name, self.namespace, self.uid)
        attempt, told = 0, ""
        while True:
            try:
                created = await kubeapi.create("virtualmachines", self.vm_namespace, manifest)
                break
            except ApiException as exc:
                if exc.status in (400, 422):
                    raise ImportFailed(ImportFailure.VirtualMachineRejected,
                                       f"The API server refused VirtualMachine {self.vm_key}: "
                                       f"{_api_message(exc)}. Nothing was created; adjust spec.target and "
                                       f"create the import again.") from None
                if exc.status != 404:
                    raise
            message = (f"Namespace {self.vm_namespace} (spec.target.namespace) does not exist; the import waits "
                       f"for it. Create it, or correct spec.target.namespace.")
            if message != told:
                told = message
                events.warn(self.body, reason=ImportFailure.TargetNamespaceNotFound.value, message=message)
                await self.write(message=message, conditions=waiting(
                    self._conditions(), ImportFailure.TargetNamespaceNotFound.value, message, self.generation))
            await self._sleep(SOURCE_RETRY_SECONDS[min(attempt, len(SOURCE_RETRY_SECONDS) - 1)])
            attempt += 1
        if created is None:  # the name is taken: ours from before a crash, or somebody else's
            body = await kubeapi.get("virtualmachines", self.vm_namespace, self.vm_name)
            if not body or not owned_by(body, self.uid):
                raise ImportFailed(ImportFailure.TargetExists,
                                   f"A VirtualMachine named {self.vm_key} already exists and was not created by "
                                   f"this import; nothing was created. Choose another spec.target.name, or delete "
                                   f"that VirtualMachine, and create the import again.")
            created = body
        uid = str((created.get("metadata") or {}).get("uid", ""))
        events.info(self.body, reason="CreatedVirtualMachine",
                    message=f"Created VirtualMachine {self.vm_key} with the source's drivers "
                            f"({', '.join(plan.drivers_before) or 'none'}).")
        return uid

    def _lost(self) -> ImportFailed:
        return ImportFailed(ImportFailure.VirtualMachineLost,
                            f"VirtualMachine {self.vm_key}, created by this import, was deleted or replaced before "
                            f"the conversion finished. Create the import again.")

    async def _alive(self, uid: str, since: float) -> ImportedVm | None:
        """The indexed VM if it is ours and alive; None while a fresh one is not indexed yet; else lost."""
        entry = self._entry()
        if entry is not None and entry.uid == uid and not entry.deleting:
            if entry.phase == "Failed":
                raise ImportFailed(ImportFailure.VirtualMachineFailed,
                                   f"VirtualMachine {self.vm_key} failed: {entry.message or 'no reason given'}.")
            return entry
        if entry is None and time.monotonic() - since < INDEX_GRACE_SECONDS:
            return None
        body = await kubeapi.get("virtualmachines", self.vm_namespace, self.vm_name)
        if body and uid_of(body) == uid and not body["metadata"].get("deletionTimestamp"):
            return imported_vm(body)
        raise self._lost()

    async def _wait_running(self, uid: str) -> tuple[str, VmInfo]:
        """Wait until the VM controller runs the guest; (host, the agent's report of it)."""
        started = time.monotonic()
        told = ""
        while True:
            entry = await self._alive(uid, started)
            if entry is not None and entry.phase == "Running" and entry.host:
                info = await self._agent_report(entry.host, uid)
                if info is not None and info.state in RUNNING:
                    return entry.host, info
            elif entry is not None and entry.reason and entry.message and entry.message != told:
                told = entry.message
                message = (f"VirtualMachine {self.vm_key} does not run yet ({entry.reason}): {entry.message} The "
                           f"import waits up to {START_TIMEOUT_SECONDS:.0f} s from creation.")
                await self.write(message=message, conditions=waiting(self._conditions(), entry.reason, message,
                                                                     self.generation))
            if time.monotonic() - started > START_TIMEOUT_SECONDS:
                why = f" ({entry.reason}: {entry.message})" if entry is not None and entry.message else ""
                raise ImportFailed(ImportFailure.StartTimeout,
                                   f"VirtualMachine {self.vm_key} did not run within {START_TIMEOUT_SECONDS:.0f} s"
                                   f"{why}. Make room on a host that satisfies spec.target.placement, then create "
                                   f"the import again.")
            await self._sleep(POLL_SECONDS)

    async def _agent_report(self, host: str, uid: str) -> VmInfo | None:
        link = runtime().agents.get(host)
        if link is None:
            return None
        try:
            return await link.client.get_vm(uid)
        except AgentError:  # unreachable, or not there (moving): ask again later
            return None

    # -- the driver steps and Verify ---------------------------------------------------------------

    async def _with_guest(self, states: Collection[VmState],
                          act: Callable[[str, HypervisorClient, VmInfo], Awaitable[T]]) -> T:
        """Run ``act`` against the agent that holds the guest (in one of ``states``), retrying while the
        agent is unreachable or the guest moves, for up to AGENT_TIMEOUT_SECONDS."""
        uid = self.vm_uid
        if not uid:
            raise self._lost()
        rt = runtime()
        started = time.monotonic()
        last = "no agent reported the guest yet"
        while True:
            entry = await self._alive(uid, started)
            hosts = [entry.host] if entry is not None and entry.host else []
            hosts += [h for h, _ in rt.agents.locate(uid) if h not in hosts]
            for host in hosts:
                link = rt.agents.get(host)
                if link is None:
                    continue
                try:
                    info = await link.client.get_vm(uid)
                    if info.state not in states:
                        last = f"the agent of {host} reports the guest {info.state.value}"
                        continue
                    return await act(host, link.client, info)
                except AgentUnreachableError as exc:
                    last = f"the agent of {host} does not answer ({exc.message})"
                except AgentError as exc:
                    if exc.status not in (404, 409):
                        raise ImportFailed(ImportFailure.AgentRefused,
                                           f"The agent of {host} refused to act on the guest of {self.vm_key}: "
                                           f"{exc}.") from None
                    last = f"the agent of {host}: {exc.message}"
            if time.monotonic() - started > AGENT_TIMEOUT_SECONDS:
                raise ImportFailed(ImportFailure.AgentUnreachable,
                                   f"The guest of {self.vm_key} could not be reached for "
                                   f"{AGENT_TIMEOUT_SECONDS:.0f} s: {last}. Check the host's agent, then create the "
                                   f"import again.")
            await self._sleep(1.0)

    async def _drivers(self, step: Step, resumed: bool) -> tuple[StepState, str]:
        decide = DRIVER_STEPS[step]

        async def act(host: str, client: HypervisorClient, info: VmInfo) -> tuple[str, VmInfo, DriverEdit | None]:
            change = decide(info.drivers)
            if change is not None:
                info = await client.change_drivers(info.id, DriverChange(install=change.install, remove=change.remove))
            return host, info, change

        host, info, change = await self._with_guest(CHANGEABLE, act)
        where = f"the guest of VirtualMachine {self.vm_key} on {host}"
        now = (f"Drivers now: {', '.join(info.drivers) or 'none'}; I/O ceilings network "
               f"{info.io_ceilings.network_mbps} Mbit/s, disk {info.io_ceilings.disk_mbps} MB/s.")
        # The annotation follows the guest's inventory, so a guest the VM controller ever has to
        # define again (its host lost) comes back converted. Written every time: a crash may have
        # come between a change and its annotation.
        await _annotate_vm(self.vm_namespace, self.vm_name, {DRIVERS_ANNOTATION: ",".join(info.drivers)})
        if change is None:
            if resumed:
                return StepState.Succeeded, f"Already done on {where}. {now}"
            return StepState.Skipped, f"Nothing to do on {where}. {now}"
        events.info(self.body, reason=step.value, message=f"On {where}: {describe_change(change)}.")
        return StepState.Succeeded, f"On {where}: {describe_change(change)}. {now}"

    async def _verify(self, resumed: bool) -> tuple[StepState, str]:
        async def report(host: str, client: HypervisorClient, info: VmInfo) -> tuple[str, VmInfo]:
            return host, info

        host, info = await self._with_guest(RUNNING, report)
        problems = driver_problems(info.drivers)
        entry = self._entry()
        if entry is not None and entry.cpus is not None and entry.cpus != info.cpus:
            problems.append(f"the guest has {info.cpus} vCPUs, the VirtualMachine asks {entry.cpus}")
        if entry is not None and entry.memory_mib is not None and entry.memory_mib != info.memory_mib:
            problems.append(f"the guest has {info.memory_mib} MiB, the VirtualMachine asks {entry.memory_mib}")
        if problems:
            raise ImportFailed(ImportFailure.VerificationFailed,
                               f"The guest of {self.vm_key} on {host} is not converted: {'; '.join(problems)}.")
        self.status["throughputAfter"] = throughput(info.io_ceilings)
        before = self.status.get("throughputBefore") or {}
        return StepState.Succeeded, (
            f"The agent of {host} reports the guest of {self.vm_key} Running with {', '.join(info.drivers)}: no "
            f"third-party or emulated network/storage driver left. Network {before.get('networkMbps')} -> "
            f"{info.io_ceilings.network_mbps} Mbit/s, disk {before.get('diskMBps')} -> "
            f"{info.io_ceilings.disk_mbps} MB/s.")


# The daemon ends itself by writing Succeeded or Failed (which also stops Kopf's filter from
# matching); a deletion or the operator's exit sets ``stopped``, which it sees at its next wait and
# returns at once. cancellation_backoff lets a write in flight finish first; it is also how long Kopf
# waits before looking again at a daemon that did not stop instantly, so it is kept short. An
# unexpected error (API server trouble) restarts it after ``backoff`` seconds, from status, like a
# restarted operator.
@kopf.daemon(GROUP, VERSION, "virtualmachineimports", when=lambda status, **_: not finished(status),
             backoff=5.0, cancellation_backoff=20.0, cancellation_timeout=10.0)
async def drive_import(name: str, namespace: str, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status,
                       body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any) -> None:
    await ready()
    await ImportJob(name=name, namespace=namespace, meta=meta, spec=spec, status=status, body=body, stopped=stopped,
                    index=imported_vms, logger=logger).run()
