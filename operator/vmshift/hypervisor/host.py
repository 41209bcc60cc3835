"""One simulated hypervisor host: its VMs, capacity, sensors and migrations, without HTTP.

The agent's whole behaviour lives here and in guest.py / migration/; server.py only maps HTTP to
these methods. Every refused request raises ApiError with a status, a code from ErrorCode and a
message a person can act on, and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

from vmshift.api.reasons import FailureReason, MigrationMode
from vmshift.hypervisor.guest import Guest
from vmshift.hypervisor.hardware import SensorState
from vmshift.hypervisor.hostconfig import ApiError, HostConfig
from vmshift.hypervisor.migration.priority import SwitchoverGate
from vmshift.hypervisor.migration.source import SourceMigration
from vmshift.hypervisor.migration.streamrate import StreamRates
from vmshift.hypervisor.migration.target import TargetMigration
from vmshift.hypervisor.migration.tickets import TicketIssuer
from vmshift.hypervisor.protocol import (
    DiskSpec,
    DriverChange,
    ErrorCode,
    FanStatus,
    Health,
    HealthProblem,
    HealthSignal,
    HostInfo,
    IncomingMigrationGrant,
    IncomingMigrationRequest,
    MigrationRequest,
    MigrationStatus,
    PowerSupplyStatus,
    Resources,
    SensorChange,
    Sensors,
    Severity,
    VmDefinition,
    VmInfo,
    VmState,
    valid_vm_id,
)
from vmshift.hypervisor.ratelimit import TokenBucket, link_shares
from vmshift.processor import guest_features, processor_info
from vmshift.sensors import IDLE_HOST_WATTS, NORMAL_TEMPERATURE_C, assess, psu_watts

log = logging.getLogger("vmshift.agent")

#: How often running guests' workloads advance when nobody looks at them.
TICK_SECONDS = 0.01
#: Finished migrations kept for GET /v1/migrations.
FINISHED_MIGRATIONS_KEPT = 1000
#: What a running guest adds to the host's power draw: per vCPU and per GiB of memory, in watts.
WATTS_PER_CPU = 12.0
WATTS_PER_GIB = 0.4


Migration = SourceMigration | TargetMigration

#: VM states that hold host capacity.
_HOLDING = frozenset({VmState.Defined, VmState.Running, VmState.Paused, VmState.Saved, VmState.Stopped})


def storage_problems(disks: list[DiskSpec], shared_volumes: tuple[str, ...],
                     passthrough_luns: tuple[str, ...]) -> list[str]:
    """Why the disks cannot be reached from a host with these volumes and LUNs (empty: fine)."""
    problems = []
    for disk in disks:
        if disk.local:
            problems.append(f"disk {disk.name} is on local storage and cannot move")
        elif disk.volume is not None and disk.volume not in shared_volumes:
            problems.append(f"disk {disk.name} is on shared volume {disk.volume}, which this host does not mount")
        elif disk.passthrough_lun is not None and disk.passthrough_lun not in passthrough_luns:
            problems.append(f"disk {disk.name} is pass-through LUN {disk.passthrough_lun}, which this host "
                            "does not see")
    return problems


class HypervisorHost:
    """The hypervisor: VMs, their capacity, the hardware sensors, and the migrations in flight."""

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self.processor = processor_info(config.cpu_model)
        self.boot_id = str(uuid.uuid4())
        self.vms: dict[str, Guest] = {}
        self.migrations: OrderedDict[str, Migration] = OrderedDict()
        self.sensors = SensorState(fans_ok=[True] * config.fans, power_ok=[True] * config.power_supplies)
        #: The clock of the sensors' sliding hour (seconds; tests replace it).
        self.clock: Callable[[], float] = time.monotonic
        self.tickets = TicketIssuer()
        self.egress = TokenBucket.mbps(config.bandwidth_mbps)
        # Inbound streams are already shaped by their sources; this bucket only caps several of
        # them together, so its burst is large enough never to delay a single stream's switchover.
        self.ingress = TokenBucket.mbps(config.bandwidth_mbps, burst_seconds=0.05)
        self.migration_port = 0
        self.switchover_gate = SwitchoverGate()
        self.stream_rates = StreamRates()
        self._ticker: asyncio.Task[None] | None = None
        #: VMs that migrated away, oldest first, with when (monotonic): bounded by prune_tombstones.
        self._tombstones: OrderedDict[str, float] = OrderedDict()

    # -- running ----------------------------------------------------------------------------------

    def start_background(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="workloads")

    async def _tick(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            for guest in list(self.vms.values()):
                guest.advance()
            ticks += 1
            if ticks % 100 == 0:
                self.prune_tombstones()

    def prune_tombstones(self, now: float | None = None) -> int:
        """Forget tombstones past their age or beyond their count; return how many were forgotten."""
        now = time.monotonic() if now is None else now
        forgotten = 0
        while self._tombstones:
            vm_id, since = next(iter(self._tombstones.items()))
            if len(self._tombstones) <= self.config.max_tombstones and now - since < self.config.tombstone_seconds:
                break
            del self._tombstones[vm_id]
            guest = self.vms.get(vm_id)
            if guest is not None and guest.state is VmState.MigratedAway:
                del self.vms[vm_id]
                forgotten += 1
        return forgotten

    async def shutdown(self) -> None:
        """Stop: every migration in flight fails as a lost source or target (nobody cancelled it), so the
        peer and the operator say that this host went away; then the ticker stops."""
        for migration in list(self.migrations.values()):
            if not migration.record.finished:
                lost = FailureReason.TargetLost if isinstance(migration, TargetMigration) else FailureReason.SourceLost
                migration.cancel(lost, f"host {self.config.name} is shutting down (its agent was stopped)")
        tasks = [m.task for m in self.migrations.values() if m.task is not None and not m.task.done()]
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
        if self._ticker is not None:
            self._ticker.cancel()

    # -- capacity -------------------------------------------------------------------------------------

    def _usage(self) -> tuple[Resources, Resources]:
        cpus = memory = rcpus = rmemory = 0
        for guest in self.vms.values():
            if guest.state in _HOLDING:
                cpus += guest.definition.cpus
                memory += guest.definition.memory_mib
            elif guest.state is VmState.Incoming:
                rcpus += guest.definition.cpus
                rmemory += guest.definition.memory_mib
        return Resources(cpus=cpus, memory_mib=memory), Resources(cpus=rcpus, memory_mib=rmemory)

    def _check_capacity(self, cpus: int, memory_mib: int, what: str, replacing: Guest | None = None) -> None:
        allocated, reserved = self._usage()
        used_cpus = allocated.cpus + reserved.cpus
        used_memory = allocated.memory_mib + reserved.memory_mib
        if replacing is not None and (replacing.state in _HOLDING or replacing.state is VmState.Incoming):
            used_cpus -= replacing.definition.cpus
            used_memory -= replacing.definition.memory_mib
        free_cpus = self.config.cores - used_cpus
        free_memory = self.config.memory_mib - used_memory
        lacking = []
        if cpus > free_cpus:
            lacking.append(f"{cpus} cpus (free: {free_cpus} of {self.config.cores})")
        if memory_mib > free_memory:
            lacking.append(f"{memory_mib} MiB of memory (free: {free_memory} of {self.config.memory_mib} MiB)")
        if lacking:
            raise ApiError(409, ErrorCode.InsufficientResources,
                           f"host {self.config.name} cannot hold {what}: it needs {' and '.join(lacking)}; "
                           "free capacity by moving or deleting VMs, or choose another host")

    # -- host ----------------------------------------------------------------------------------------

    def health(self) -> Health:
        problems = [HealthProblem(signal=HealthSignal(p.kind.value), severity=Severity(p.severity.value),
                                  message=p.message) for p in assess(self.sensor_readings().reading())]
        return Health(healthy=not problems, problems=problems)

    def sensor_readings(self) -> Sensors:
        """The sensors in their units: fans in RPM, supplies in watts (sharing the draw of the host and
        its running guests), corrected memory errors since boot and in the last hour."""
        s = self.sensors
        load = IDLE_HOST_WATTS + sum(WATTS_PER_CPU * g.definition.cpus + WATTS_PER_GIB * g.definition.memory_mib / 1024
                                     for g in self.vms.values() if g.state is VmState.Running)
        return Sensors(
            fans=[FanStatus(index=i, ok=ok, rpm=s.fan_rpm(i)) for i, ok in enumerate(s.fans_ok)],
            power_supplies=[PowerSupplyStatus(index=i, ok=ok, watts=w)
                            for i, (ok, w) in enumerate(zip(s.power_ok, psu_watts(load, s.power_ok), strict=True))],
            temperature_c=s.temperature_c,
            corrected_memory_errors=s.corrected_memory_errors,
            corrected_memory_errors_per_hour=s.per_hour(self.clock()),
        )

    def host_info(self) -> HostInfo:
        allocated, reserved = self._usage()
        now = time.monotonic()  # both stream figures leave out the samples older than the same moment
        return HostInfo(
            name=self.config.name,
            cpu_model=self.processor.model,
            vendor=self.processor.vendor,
            features=sorted(self.processor.features),
            cores=self.config.cores,
            memory_mib=self.config.memory_mib,
            migration_bandwidth_mbps=self.config.bandwidth_mbps,
            shared_volumes=list(self.config.shared_volumes),
            passthrough_luns=list(self.config.passthrough_luns),
            allocated=allocated,
            reserved=reserved,
            vms=sum(1 for g in self.vms.values() if g.state in _HOLDING),
            sensors=self.sensor_readings(),
            health=self.health(),
            boot_id=self.boot_id,
            migration_port=self.migration_port,
            migrations=sum(1 for m in self.migrations.values() if not m.record.finished),
            migration_stream_mbps=self.stream_rates.figure_mbps(now),
            migration_streams_together_mbps=self.stream_rates.together_mbps(now),
        )

    def change_sensors(self, change: SensorChange) -> HostInfo:
        s = self.sensors
        for fault, items, what in ((change.fan, s.fans_ok, "fan"), (change.power_supply, s.power_ok,
                                                                     "power supply")):
            if fault is not None and fault.index >= len(items):
                raise ApiError(422, ErrorCode.Invalid, f"host {self.config.name} has {len(items)} {what}s "
                               f"(indexes 0-{len(items) - 1}); there is no {what} {fault.index}")
        if change.heal:
            s.fans_ok = [True] * len(s.fans_ok)
            s.power_ok = [True] * len(s.power_ok)
            s.temperature_c = NORMAL_TEMPERATURE_C
            s.corrected_memory_errors = 0
            s.error_events.clear()
        if change.fan is not None:
            s.fans_ok[change.fan.index] = not change.fan.failed
        if change.power_supply is not None:
            s.power_ok[change.power_supply.index] = not change.power_supply.failed
        if change.temperature_c is not None:
            s.temperature_c = change.temperature_c
        if change.corrected_memory_errors is not None:
            s.corrected_memory_errors += change.corrected_memory_errors
            s.error_events.append((self.clock(), change.corrected_memory_errors))
        return self.host_info()

    # -- VMs ------------------------------------------------------------------------------------------

    def _guest(self, vm_id: str) -> Guest:
        guest = self.vms.get(vm_id)
        if guest is None:
            raise ApiError(404, ErrorCode.NotFound, f"host {self.config.name} has no VM {vm_id!r}")
        return guest

    def _not_migrating(self, guest: Guest, action: str) -> None:
        if guest.migration_id is not None:
            raise ApiError(409, ErrorCode.AlreadyMigrating,
                           f"cannot {action} VM {guest.vm_id}: migration {guest.migration_id} is in flight; "
                           "cancel it first (DELETE /v1/migrations/{id})")

    def list_vms(self) -> list[VmInfo]:
        return [self._info(g) for g in self.vms.values()]

    def get_vm(self, vm_id: str) -> VmInfo:
        return self._info(self._guest(vm_id))

    def _info(self, guest: Guest) -> VmInfo:
        return guest.info()

    # -- the API's entry points: async, as a driver's guests take time to start, stop and move ---------

    async def define(self, vm_id: str, body: VmDefinition) -> tuple[VmInfo, bool]:
        return self.define_vm(vm_id, body)

    async def start(self, vm_id: str, *, baseline: frozenset[str] | None = None) -> VmInfo:
        return self.start_vm(vm_id, baseline=baseline)

    async def stop(self, vm_id: str) -> VmInfo:
        return self.stop_vm(vm_id)

    async def save(self, vm_id: str) -> VmInfo:
        return self.save_vm(vm_id)

    async def restore(self, vm_id: str) -> VmInfo:
        return self.restore_vm(vm_id)

    async def delete(self, vm_id: str, force: bool = False) -> None:
        self.delete_vm(vm_id, force)

    async def prepare(self, request: IncomingMigrationRequest) -> IncomingMigrationGrant:
        return self.prepare_incoming(request)

    def define_vm(self, vm_id: str, body: VmDefinition) -> tuple[VmInfo, bool]:
        """Create or update a VM; True when it was created."""
        if not valid_vm_id(vm_id):
            raise ApiError(400, ErrorCode.BadRequest, f"invalid VM id {vm_id!r}: use letters, digits, '.', "
                           "'_' and '-' (at most 253)")
        existing = self.vms.get(vm_id)
        if existing is not None and existing.state is not VmState.MigratedAway:
            if existing.state is VmState.Incoming:
                raise ApiError(409, ErrorCode.AlreadyMigrating,
                               f"VM {vm_id} is arriving by migration {existing.migration_id}; wait for it")
            if existing.definition == body:
                return existing.info(), False
            if existing.definition.model_copy(update={"workload": body.workload}) == body:
                existing.set_workload(body.workload)
                return existing.info(), False
            if existing.state not in (VmState.Defined, VmState.Stopped):
                raise ApiError(409, ErrorCode.InvalidState,
                               f"VM {vm_id} is {existing.state.value}: only its workload can change while it "
                               "runs; stop it to change cpus, memory, compatibility, disks or drivers")
            self._not_migrating(existing, "redefine")
            self._check_capacity(body.cpus, body.memory_mib, f"VM {vm_id}", replacing=existing)
            replacement = Guest(vm_id, body)
            replacement.state = existing.state
            if existing.memory is not None:
                existing.memory.release()
            self.vms[vm_id] = replacement
            return replacement.info(), False
        self._check_capacity(body.cpus, body.memory_mib, f"VM {vm_id} ({body.cpus} cpus, {body.memory_mib} MiB)")
        if existing is not None:
            existing.release(VmState.MigratedAway)
        guest = Guest(vm_id, body)
        self.vms[vm_id] = guest
        log.info("defined VM %s (%d cpus, %d MiB)", vm_id, body.cpus, body.memory_mib)
        return guest.info(), True

    def start_vm(self, vm_id: str, *, baseline: frozenset[str] | None = None) -> VmInfo:
        """Start (or resume) a guest; ``baseline``: the features a compatibility-mode guest may see."""
        guest = self._guest(vm_id)
        if guest.state is VmState.Running:
            return guest.info()
        self._not_migrating(guest, "start")
        if guest.state is VmState.Saved:
            guest.resume()
        elif guest.state in (VmState.Defined, VmState.Stopped):
            guest.start(guest_features(self.config.cpu_model, guest.definition.compatibility, baseline))
            log.info("started VM %s", vm_id)
        else:
            raise self._bad_state(guest, "start")
        return guest.info()

    def stop_vm(self, vm_id: str) -> VmInfo:
        guest = self._guest(vm_id)
        if guest.state in (VmState.Stopped, VmState.Defined):
            return guest.info()
        self._not_migrating(guest, "stop")
        if guest.state not in (VmState.Running, VmState.Paused, VmState.Saved):
            raise self._bad_state(guest, "stop")
        guest.stop()
        log.info("stopped VM %s", vm_id)
        return guest.info()

    def save_vm(self, vm_id: str) -> VmInfo:
        guest = self._guest(vm_id)
        if guest.state is VmState.Saved:
            return guest.info()
        self._not_migrating(guest, "save")
        if guest.state is not VmState.Running:
            raise self._bad_state(guest, "save")
        guest.save()
        return guest.info()

    def restore_vm(self, vm_id: str) -> VmInfo:
        guest = self._guest(vm_id)
        if guest.state is VmState.Running:
            return guest.info()
        self._not_migrating(guest, "restore")
        if guest.state is not VmState.Saved:
            raise self._bad_state(guest, "restore")
        guest.resume()
        return guest.info()

    def delete_vm(self, vm_id: str, force: bool = False) -> None:
        guest = self._guest(vm_id)
        self._not_migrating(guest, "delete")
        if guest.state is VmState.Incoming:
            raise self._bad_state(guest, "delete")
        if guest.state in (VmState.Running, VmState.Paused, VmState.Saved) and not force:
            raise ApiError(409, ErrorCode.InvalidState,
                           f"VM {vm_id} is {guest.state.value}; stop it first, or delete with ?force=true")
        guest.release(VmState.Stopped)
        del self.vms[vm_id]
        log.info("deleted VM %s", vm_id)

    def change_drivers(self, vm_id: str, change: DriverChange) -> VmInfo:
        guest = self._guest(vm_id)
        if guest.state in (VmState.Incoming, VmState.MigratedAway):
            raise self._bad_state(guest, "change the drivers of")
        drivers = [d for d in guest.drivers if d not in set(change.remove)]
        for name in change.install:
            if name not in drivers:
                drivers.append(name)
        guest.drivers = drivers
        return guest.info()

    def _bad_state(self, guest: Guest, action: str) -> ApiError:
        hint = {
            VmState.Incoming: "it is still arriving by migration",
            VmState.MigratedAway: "it has migrated to another host; act on it there",
            VmState.Paused: "it is paused for a migration switchover",
        }.get(guest.state, f"it is {guest.state.value}")
        return ApiError(409, ErrorCode.InvalidState, f"cannot {action} VM {guest.vm_id}: {hint}")

    # -- migrations: the target's side -------------------------------------------------------------------

    def prepare_incoming(self, request: IncomingMigrationRequest) -> IncomingMigrationGrant:
        vm = request.vm
        existing_migration = self.migrations.get(request.migration_id)
        if existing_migration is not None:
            if (isinstance(existing_migration, TargetMigration) and not existing_migration.connected
                    and not existing_migration.record.finished and existing_migration.guest.vm_id == vm.vm_id):
                return self._grant(existing_migration)
            raise ApiError(409, ErrorCode.Conflict,
                           f"migration {request.migration_id} already exists on host {self.config.name} "
                           f"({existing_migration.record.role.value}, {existing_migration.record.phase.value}); "
                           "use a new migrationId")
        existing = self.vms.get(vm.vm_id)
        if existing is not None and existing.state is not VmState.MigratedAway:
            code = ErrorCode.AlreadyMigrating if existing.state is VmState.Incoming else ErrorCode.Conflict
            raise ApiError(409, code, f"host {self.config.name} already has VM {vm.vm_id} "
                           f"({existing.state.value}); it cannot receive another copy")
        if vm.vendor is not None and vm.vendor != self.processor.vendor:
            raise ApiError(409, ErrorCode.IncompatibleProcessor,
                           f"VM {vm.vm_id} runs on a {vm.vendor} processor and host {self.config.name} has an "
                           f"{self.processor.vendor} {self.processor.model}: a running guest cannot change "
                           "CPU vendor; stop it and start it here instead")
        missing = sorted(set(vm.features) - self.processor.features)
        if missing:
            raise ApiError(409, ErrorCode.IncompatibleProcessor,
                           f"host {self.config.name} ({self.processor.model}) lacks {', '.join(missing)}, which "
                           f"VM {vm.vm_id} was started with; turn on processor compatibility and restart the "
                           "VM, or choose a host with these features")
        problems = storage_problems(vm.disks, self.config.shared_volumes, self.config.passthrough_luns)
        if problems:
            raise ApiError(409, ErrorCode.StorageNotShared,
                           f"host {self.config.name} cannot reach the storage of VM {vm.vm_id}: "
                           f"{'; '.join(problems)}")
        self._check_capacity(vm.cpus, vm.memory_mib, f"incoming VM {vm.vm_id}")
        definition = VmDefinition.model_validate(vm.model_dump(include=set(VmDefinition.model_fields)))
        guest = Guest(vm.vm_id, definition)
        guest.state = VmState.Incoming
        guest.features = frozenset(vm.features)
        guest.migration_id = request.migration_id
        if existing is not None:
            existing.release(VmState.MigratedAway)
        self.vms[vm.vm_id] = guest
        ttl = request.reservation_seconds or self.config.reservation_seconds
        ticket = self.tickets.issue(request.migration_id, vm.vm_id, ttl)
        migration = self._new_target(guest, request, ticket, ttl)
        self._remember(migration)
        log.info("reserved room for incoming VM %s (migration %s)", vm.vm_id, request.migration_id)
        return self._grant(migration)

    def _new_target(self, guest: Guest, request: IncomingMigrationRequest, ticket: str,
                    ttl: float) -> TargetMigration:
        return TargetMigration(self, guest, request.migration_id, request.mode, ticket, ttl)

    def _new_source(self, guest: Guest, request: MigrationRequest, bandwidth_mbps: float) -> SourceMigration:
        return SourceMigration(self, guest, request, bandwidth_mbps)

    def _grant(self, migration: TargetMigration) -> IncomingMigrationGrant:
        return IncomingMigrationGrant(ticket=migration.ticket, host=self.config.advertise_host,
                                      port=self.migration_port, bandwidth_mbps=self.config.bandwidth_mbps,
                                      expires_in_seconds=migration.expires_in)

    # -- migrations: the source's side -------------------------------------------------------------------

    def start_migration(self, request: MigrationRequest) -> tuple[MigrationStatus, bool]:
        """Begin moving a VM; (status, created). Repeating a migrationId returns the existing one."""
        existing = self.migrations.get(request.migration_id)
        if existing is not None:
            if isinstance(existing, SourceMigration) and existing.guest.vm_id == request.vm_id:
                return existing.record.status(), False
            raise ApiError(409, ErrorCode.Conflict,
                           f"migration {request.migration_id} already exists here for VM "
                           f"{existing.guest.vm_id} as {existing.record.role.value}; use a new migrationId")
        guest = self._guest(request.vm_id)
        if guest.migration_id is not None:
            raise ApiError(409, ErrorCode.AlreadyMigrating,
                           f"VM {guest.vm_id} is already migrating (migration {guest.migration_id}); wait for "
                           "it or cancel it")
        allowed = (VmState.Running,) if request.mode is MigrationMode.Live else (VmState.Running, VmState.Saved)
        if guest.state not in allowed or guest.memory is None:
            raise ApiError(409, ErrorCode.InvalidState,
                           f"cannot {request.mode.value.lower()}-migrate VM {guest.vm_id}: it is "
                           f"{guest.state.value} (a {request.mode.value} migration needs "
                           f"{' or '.join(s.value for s in allowed)})")
        rates = [r for r in (self.config.bandwidth_mbps, request.target.bandwidth_mbps, request.bandwidth_mbps)
                 if r is not None and r > 0]
        migration = self._new_source(guest, request, min(rates) if rates else 0.0)
        guest.migration_id = request.migration_id
        self._remember(migration)
        migration.start()
        self._share_link()
        log.info("migration %s: %s VM %s to %s:%d", request.migration_id, request.mode.value, guest.vm_id,
                 request.target.host, request.target.port)
        return migration.record.status(), True

    def list_migrations(self) -> list[MigrationStatus]:
        return [m.record.status() for m in self.migrations.values()]

    def migration(self, migration_id: str) -> Migration:
        migration = self.migrations.get(migration_id)
        if migration is None:
            raise ApiError(404, ErrorCode.NotFound, f"host {self.config.name} knows no migration {migration_id!r}")
        return migration

    def cancel_migration(self, migration_id: str) -> MigrationStatus:
        migration = self.migration(migration_id)
        if migration.record.finished:
            return migration.record.status()
        if not migration.cancel(FailureReason.Cancelled,
                                f"migration {migration_id} was cancelled on host {self.config.name}; the VM "
                                "stays where it was"):
            raise ApiError(409, ErrorCode.PastCommitPoint,
                           f"migration {migration_id} is past its commit point: the VM now belongs to the "
                           "target and the migration will finish")
        return migration.record.status()

    def resolve_migration(self, migration_id: str, target_resumed: bool) -> MigrationStatus:
        """Settle a source in doubt with what its target states it did (the operator passes it on)."""
        migration = self.migration(migration_id)
        if not isinstance(migration, SourceMigration) or not migration.settle(target_resumed):
            raise ApiError(409, ErrorCode.InvalidState,
                           f"migration {migration_id} on host {self.config.name} is not a source in doubt "
                           f"({migration.record.role.value}, {migration.record.phase.value}); nothing to resolve")
        return migration.record.status()

    def switchover_migration(self, migration_id: str) -> MigrationStatus:
        """The caller's go for a source's held switchover (harmless once it is under way or over)."""
        migration = self.migration(migration_id)
        if not isinstance(migration, SourceMigration):
            raise ApiError(409, ErrorCode.InvalidState,
                           f"migration {migration_id} on host {self.config.name} is a {migration.record.role.value}; "
                           "only its source switches over")
        migration.hold.go()
        return migration.record.status()

    def _remember(self, migration: Migration) -> None:
        self.migrations[migration.migration_id] = migration
        finished = [k for k, m in self.migrations.items() if m.record.finished]
        for key in finished[:max(0, len(finished) - FINISHED_MIGRATIONS_KEPT)]:
            del self.migrations[key]

    # -- MigrationHost (called by the migration package) -------------------------------------------------

    def release_source_vm(self, guest: Guest) -> None:
        guest.release(VmState.MigratedAway)
        self._tombstones.pop(guest.vm_id, None)
        self._tombstones[guest.vm_id] = time.monotonic()
        self.prune_tombstones()
        log.info("VM %s migrated away; its memory was released", guest.vm_id)

    def discard_incoming(self, guest: Guest) -> None:
        if self.vms.get(guest.vm_id) is guest:
            del self.vms[guest.vm_id]
        guest.release(VmState.Stopped)
        guest.migration_id = None

    def activate_incoming(self, guest: Guest, state: VmState) -> None:
        guest.migration_id = None
        guest.throttle_percent = 0.0
        if state is VmState.Saved:
            guest.state = VmState.Saved
        else:
            guest.resume()

    def migration_ended(self, migration: Migration) -> None:
        """A source that ends frees its share of the link for the others; finished migrations stay listed
        (bounded)."""
        if isinstance(migration, SourceMigration):
            self._share_link(ended=migration)

    def _share_link(self, ended: SourceMigration | None = None) -> None:
        """Shape each sending migration to its share of this host's migration link (``LinkShareSettings``)."""
        sending = [m for m in self.migrations.values()
                   if isinstance(m, SourceMigration) and m is not ended and not m.record.finished]
        shares = link_shares([(m.request.link_share, m.bandwidth_mbps) for m in sending], self.egress.rate)
        for m, rate in zip(sending, shares, strict=True):
            m.rate = rate
            m.bucket.set_rate(rate)

    def find_incoming(self, migration_id: str) -> TargetMigration | None:
        migration = self.migrations.get(migration_id)
        return migration if isinstance(migration, TargetMigration) else None
