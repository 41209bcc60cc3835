"""An agent whose guests are real: ``HypervisorHost`` with a ``GuestDriver`` (``--driver qemu``).

The bookkeeping (capacity, states, tickets, the compatibility and storage checks, sensors, the
migration records) stays the base class's and runs first, so every refusal happens before the
driver is asked; then the driver does the act, and a driver that fails undoes the bookkeeping and
answers 502 with its message. Migrations use the QEMU source and target of the migration package.
What a VM reports as its heartbeat and digest is the real guest's: its counter and the checksum of
its memory region, read from its serial console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from vmshift.api.reasons import FailureReason
from vmshift.hypervisor.driver import CpuChoice, DriverError, GuestDriver, SavedState
from vmshift.hypervisor.guest import Guest
from vmshift.hypervisor.host import HypervisorHost
from vmshift.hypervisor.hostconfig import ApiError, HostConfig
from vmshift.hypervisor.migration.qemu_source import QemuSourceMigration
from vmshift.hypervisor.migration.qemu_target import QemuTargetMigration
from vmshift.hypervisor.migration.source import SourceMigration
from vmshift.hypervisor.migration.target import TargetMigration
from vmshift.hypervisor.protocol import (
    ErrorCode,
    HostInfo,
    IncomingMigrationGrant,
    IncomingMigrationRequest,
    MigrationRequest,
    VmDefinition,
    VmInfo,
    VmState,
)
from vmshift.hypervisor.qemu import cpu as cpumodels

log = logging.getLogger("vmshift.agent")

#: The state file of a guest saved in place (POST /v1/vms/{id}/save), in its driver directory.
SAVED_STATE = "saved.state"


def driver_failed(vm_id: str, action: str, exc: DriverError) -> ApiError:
    return ApiError(502, ErrorCode.Internal, f"the hypervisor could not {action} VM {vm_id}: {exc}")


class DrivenHost(HypervisorHost):
    """A host whose guests a ``GuestDriver`` runs (the QEMU driver)."""

    def __init__(self, config: HostConfig, driver: GuestDriver) -> None:
        super().__init__(config)
        self.driver = driver
        self.accelerator: str | None = None
        self.cpu_models: list[str] = []

    async def discover(self) -> None:
        """Choose the accelerator (logged once by the driver) and learn the CPU models QEMU offers."""
        accelerator = getattr(self.driver, "accelerator", None)
        if accelerator is not None:
            choice = await accelerator()
            self.accelerator = str(choice.accel.value)
        offers = await self.driver.cpu_models()
        self.cpu_models = [o.name for o in offers if o.usable]
        log.info("host %s: QEMU offers %d CPU models this host can run (of %d)", self.config.name,
                 len(self.cpu_models), len(offers))

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.driver.close()

    def host_info(self) -> HostInfo:
        return super().host_info().model_copy(update={
            "driver": self.driver.name, "accelerator": self.accelerator, "cpu_models": list(self.cpu_models)})

    def _info(self, guest: Guest) -> VmInfo:
        if guest.state is VmState.Running and guest.migration_id is None and self.driver.exited(guest.vm_id):
            log.warning("VM %s: its QEMU process ended without being stopped; it is Stopped (its console ends: %s)",
                        guest.vm_id, self.driver.last_words(guest.vm_id) or "nothing but ticks")
            guest.stop()
        info = guest.info()
        if guest.state is VmState.MigratedAway:
            return info
        # The real guest's counter and region checksum (0 and zeros before its first tick on this host).
        beat = self.driver.beat(guest.vm_id) or (0, "0" * 16)
        return info.model_copy(update={"heartbeat": beat[0], "digest": beat[1][:16]})

    # -- the guests' life cycle ---------------------------------------------------------------------------

    def _cpu(self, guest: Guest) -> CpuChoice:
        try:
            model = cpumodels.choose(self.config.cpu_model, guest.definition.compatibility).model
        except ValueError as exc:
            raise ApiError(409, ErrorCode.IncompatibleProcessor, f"cannot start VM {guest.vm_id}: {exc}") from None
        return CpuChoice(model=model, features=guest.features)

    async def define(self, vm_id: str, body: VmDefinition) -> tuple[VmInfo, bool]:
        info, created = self.define_vm(vm_id, body)
        guest = self.vms[vm_id]
        if guest.state in (VmState.Defined, VmState.Stopped):
            try:
                await self.driver.define(vm_id, guest.definition)
            except DriverError as exc:
                if created and self.vms.get(vm_id) is guest:
                    del self.vms[vm_id]
                    guest.release(VmState.Stopped)
                raise ApiError(409, ErrorCode.Invalid, f"the QEMU driver refused VM {vm_id}: {exc}") from None
        return info, created

    async def start(self, vm_id: str, *, baseline: frozenset[str] | None = None) -> VmInfo:
        guest = self._guest(vm_id)
        before = guest.state
        if before is VmState.Saved:
            return await self.restore(vm_id)
        self._cpu(guest)  # refuses a host model QEMU has none for before anything changes
        info = self.start_vm(vm_id, baseline=baseline)
        if before is VmState.Running:
            return info
        try:
            await self.driver.start(vm_id, self._cpu(guest))
        except DriverError as exc:
            guest.stop()
            raise driver_failed(vm_id, "start", exc) from None
        return self._info(guest)

    async def stop(self, vm_id: str) -> VmInfo:
        guest = self._guest(vm_id)
        before = guest.state
        info = self.stop_vm(vm_id)
        if before in (VmState.Running, VmState.Paused, VmState.Saved):
            try:
                await self.driver.stop(vm_id)
            except DriverError as exc:
                raise driver_failed(vm_id, "stop", exc) from None
        return info

    def _state_file(self, guest: Guest, action: str, needs: VmState) -> Path:
        """The file ``action`` (save or restore) writes or reads the guest's state in, once it is sure the
        guest is not migrating and is ``needs``; ApiError otherwise."""
        self._not_migrating(guest, action)
        if guest.state is not needs:
            raise self._bad_state(guest, action)
        directory = self.config.driver_dir or self.config.shared_dir
        assert directory is not None
        return directory / guest.vm_id / SAVED_STATE

    async def save(self, vm_id: str) -> VmInfo:
        guest = self._guest(vm_id)
        if guest.state is VmState.Saved:
            return self._info(guest)
        path = self._state_file(guest, "save", VmState.Running)
        try:
            await self.driver.save(vm_id, path)
        except DriverError as exc:
            raise driver_failed(vm_id, "save", exc) from None
        self.save_vm(vm_id)
        return self._info(guest)

    async def restore(self, vm_id: str) -> VmInfo:
        guest = self._guest(vm_id)
        if guest.state is VmState.Running:
            return self._info(guest)
        path = self._state_file(guest, "restore", VmState.Saved)
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
            await self.driver.restore(vm_id, SavedState(path=path, size_bytes=size, cpu=self._cpu(guest)))
        except (OSError, DriverError) as exc:
            raise driver_failed(vm_id, "restore", DriverError(str(exc))) from None
        self.restore_vm(vm_id)
        return self._info(guest)

    async def delete(self, vm_id: str, force: bool = False) -> None:
        self.delete_vm(vm_id, force)
        with contextlib.suppress(DriverError):
            await self.driver.delete(vm_id)

    # -- migrations -----------------------------------------------------------------------------------------

    async def prepare(self, request: IncomingMigrationRequest) -> IncomingMigrationGrant:
        vm = request.vm
        try:
            cpu = cpumodels.for_incoming(frozenset(vm.features), vm.compatibility)
        except ValueError as exc:
            raise ApiError(409, ErrorCode.IncompatibleProcessor,
                           f"host {self.config.name} cannot receive VM {vm.vm_id}: {exc}") from None
        grant = self.prepare_incoming(request)
        migration = self.migrations[request.migration_id]
        assert isinstance(migration, QemuTargetMigration)
        migration.cpu = cpu
        try:
            await migration.prepare()
        except DriverError as exc:
            migration.cancel(FailureReason.TargetLost, f"the target's QEMU could not be readied: {exc}")
            raise driver_failed(vm.vm_id, "receive", exc) from None
        return grant

    def _new_target(self, guest: Guest, request: IncomingMigrationRequest, ticket: str,
                    ttl: float) -> TargetMigration:
        cpu = CpuChoice(model=cpumodels.BASELINE_MODEL, features=guest.features)  # replaced in prepare()
        return QemuTargetMigration(self, guest, request.migration_id, request.mode, ticket, ttl, self.driver, cpu,
                                   self.config.shared_dir)

    def _new_source(self, guest: Guest, request: MigrationRequest, bandwidth_mbps: float) -> SourceMigration:
        if guest.state is not VmState.Running:
            raise ApiError(409, ErrorCode.InvalidState, f"cannot migrate VM {guest.vm_id}: it is "
                           f"{guest.state.value}; a QEMU guest moves only while it runs")
        return QemuSourceMigration(self, guest, request, bandwidth_mbps, self.driver, self.config.shared_dir,
                                   self.config.qemu_switchover_hold_seconds)

