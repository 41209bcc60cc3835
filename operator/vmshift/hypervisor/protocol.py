"""The agent's management API, version 1: every request and response body, as pydantic models.

Pure: no I/O. The one place that documents what an agent (one simulated hypervisor host) accepts
and answers; the server (server.py) validates with these models and the client (client.py) parses
with them, so both sides always agree. JSON field names are camelCase, units live in the names.

Conventions of the API:

- Base path ``/v1``; every call carries ``Authorization: Bearer <token>``.
- Errors are ``{"error": {"code": "...", "message": "..."}}`` with a 4xx/5xx status; ``code`` is one
  of :class:`ErrorCode`.
- ``GET  /v1/host`` -> :class:`HostInfo`.
- ``GET  /v1/report`` -> :class:`HostReport`: host and VMs in one answer (the operator's poll).
- ``GET  /v1/vms`` -> :class:`VmList`; ``PUT /v1/vms/{vmId}`` (:class:`VmDefinition`, idempotent)
  -> :class:`VmInfo` (201 when created, 200 when it already existed); ``GET``/``DELETE
  /v1/vms/{vmId}`` (``?force=true`` deletes a running VM); ``POST /v1/vms/{vmId}/start|stop|save|restore``
  -> :class:`VmInfo`; ``PUT /v1/vms/{vmId}/drivers`` (:class:`DriverChange`) -> :class:`VmInfo`.
- ``POST /v1/migrations/incoming`` on the target (:class:`IncomingMigrationRequest`) ->
  :class:`IncomingMigrationGrant`; ``POST /v1/migrations`` on the source (:class:`MigrationRequest`)
  -> 202 :class:`MigrationStatus`; ``GET /v1/migrations`` -> :class:`MigrationList`; ``GET
  /v1/migrations/{id}`` -> :class:`MigrationStatus`; ``GET /v1/migrations/{id}/events`` streams
  :class:`MigrationStatus` lines (NDJSON) until the migration ends; ``DELETE /v1/migrations/{id}``
  cancels it (409 once past the commit point); ``POST /v1/migrations/{id}/switchover`` on the source
  (no body) -> :class:`MigrationStatus`: the go for a switchover it holds (``readyToSwitchOver``).
- ``POST /v1/sensors`` (:class:`SensorChange`) -> :class:`HostInfo`.

Semantics an operator can rely on:

- Capacity: every VM defined on a host holds its cpus and memory (``allocated``), whatever its
  state, except tombstones (``MigratedAway``); an incoming migration holds them as ``reserved``
  until it succeeds (then allocated) or fails (then freed). Define and incoming refuse with 409
  ``InsufficientResources`` rather than overcommit.
- A VM's CPU ``features`` are fixed when it starts (the host's set, or the compatibility baseline)
  and travel with it; a target refuses (409 ``IncompatibleProcessor``) a guest whose features it
  lacks or whose vendor differs, and (409 ``StorageNotShared``) disks it cannot reach.
- Migration phases: ``Pending`` (target reserved, no stream yet), ``Transferring``,
  ``SwitchingOver``, then ``Succeeded``/``Failed``/``Cancelled``. A migration reaches its commit
  point when the target resumes the guest; before it, any failure or cancel leaves the VM running
  on the source; after it, the VM belongs to the target and cancel answers 409 ``PastCommitPoint``.
  ``committed`` says which side of that point a migration ended on.
- Switchover go: a live migration asked with ``switchoverWaitSeconds`` > 0 does not pause its guest
  the moment pre-copy converges. It reports ``readyToSwitchOver`` (phase still ``Transferring``, the
  guest running) and goes on sending the pages dirtied meanwhile until ``POST .../switchover`` says
  go, so the caller can show ``SwitchingOver`` before the pause; then it pauses after its next round,
  as it would have without the wait. If no go comes within ``switchoverWaitSeconds`` (the caller is
  down) it switches over anyway and reports ``switchoverAcknowledged`` false. A cancel before the go
  leaves the guest running on the source, as any cancel before the commit point does.
- Health: a failed fan is a Warning (Critical when half or more failed); a failed power supply a
  Warning (Critical when all failed); temperature >= 70 C Warning, >= 85 C Critical; corrected
  memory errors >= 100 Warning, >= 1000 Critical. ``healthy`` is false while any problem exists.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from vmshift import limits
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.drivers import DriverName
from vmshift.precopy.convergence import DEFAULTS as CONVERGENCE
from vmshift.precopy.convergence import ConvergencePolicy
from vmshift.sensors import NOMINAL_FAN_RPM, Reading, fan_failed

API_VERSION = "v1"
API_PREFIX = f"/{API_VERSION}"

#: What a VM id may look like: it appears in URLs and derives the guest's page contents.
VM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
_VM_ID_RE = re.compile(VM_ID_PATTERN)


def valid_vm_id(vm_id: str) -> bool:
    """True when ``vm_id`` is usable as a VM id (letters, digits, ``.``, ``_``, ``-``)."""
    return bool(_VM_ID_RE.match(vm_id))


def _alias(name: str) -> str:
    """snake_case -> camelCase, keeping binary units readable (memory_mib -> memoryMiB)."""
    camel = to_camel(name)
    for plain, unit in (("Mibps", "MiBps"), ("Mib", "MiB"), ("Gib", "GiB")):
        camel = camel.replace(plain, unit)
    return camel


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=_alias, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


class Request(_Wire):
    """A body the agent accepts: unknown fields are refused, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")


class Response(_Wire):
    """A body the agent answers with: clients ignore fields they do not know (newer agents)."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------------------------------
# Errors


class ErrorCode(StrEnum):
    """The ``error.code`` values. Failure reasons of migrations reuse FailureReason's words."""

    Unauthorized = "Unauthorized"
    BadRequest = "BadRequest"
    Invalid = "Invalid"
    NotFound = "NotFound"
    MethodNotAllowed = "MethodNotAllowed"
    PayloadTooLarge = "PayloadTooLarge"
    Conflict = "Conflict"
    InvalidState = "InvalidState"
    InsufficientResources = "InsufficientResources"
    IncompatibleProcessor = "IncompatibleProcessor"
    StorageNotShared = "StorageNotShared"
    AlreadyMigrating = "AlreadyMigrating"
    PastCommitPoint = "PastCommitPoint"
    Internal = "Internal"


class ErrorBody(Response):
    code: str = Field(description="A CamelCase word from ErrorCode that programs can switch on.")
    message: str = Field(description="A sentence saying what was wrong and what to do about it.")


class ErrorResponse(Response):
    error: ErrorBody


# --------------------------------------------------------------------------------------------------
# Host


class Resources(Response):
    cpus: int = Field(description="Virtual processors.")
    memory_mib: int = Field(description="Memory in MiB.")


class FanStatus(Response):
    index: int
    rpm: float = Field(0.0, ge=0, description="Speed in revolutions per minute (a failed fan turns slower than "
                       "sensors.LIMITS.fan_min_rpm). Absent in a report: the nominal speed when ok, else 0.")
    ok: bool = Field(True, description="False when the fan has failed.")

    @model_validator(mode="before")
    @classmethod
    def _rpm_or_ok(cls, data: object) -> object:
        if isinstance(data, dict) and "rpm" not in data:
            return {**data, "rpm": NOMINAL_FAN_RPM if data.get("ok", True) else 0.0}
        if isinstance(data, dict) and "ok" not in data:
            return {**data, "ok": not fan_failed(float(data["rpm"]))}
        return data


class PowerSupplyStatus(Response):
    index: int
    ok: bool
    watts: float = Field(0.0, ge=0, description="Output in watts: the working supplies share the host's draw; "
                         "a failed one gives nothing.")


class Sensors(Response):
    fans: list[FanStatus]
    power_supplies: list[PowerSupplyStatus]
    temperature_c: float = Field(description="Inlet temperature in degrees Celsius.")
    corrected_memory_errors: int = Field(0, description="Corrected (ECC) memory errors counted since boot.")
    corrected_memory_errors_per_hour: float = Field(
        0.0, ge=0, description="Corrected (ECC) memory errors in the last hour (a sliding window): what the "
        "thresholds judge.")

    def reading(self) -> Reading:
        """These sensors as the pure verdicts (vmshift.sensors) read them."""
        return Reading(fan_rpm=tuple(f.rpm for f in self.fans), psu_ok=tuple(p.ok for p in self.power_supplies),
                       psu_watts=tuple(p.watts for p in self.power_supplies), temperature_c=self.temperature_c,
                       corrected_errors_per_hour=self.corrected_memory_errors_per_hour)


class Severity(StrEnum):
    Warning = "Warning"
    Critical = "Critical"


class HealthSignal(StrEnum):
    Fan = "Fan"
    PowerSupply = "PowerSupply"
    Temperature = "Temperature"
    CorrectedMemoryErrors = "CorrectedMemoryErrors"


class HealthProblem(Response):
    signal: HealthSignal
    severity: Severity
    message: str


class Health(Response):
    healthy: bool = Field(description="False when any sensor reports a problem.")
    problems: list[HealthProblem]


class HostInfo(Response):
    """``GET /v1/host``: what the host is, what it holds, and how its hardware feels."""

    name: str
    cpu_model: str = Field(description="archspec microarchitecture name, e.g. icelake.")
    vendor: str = Field(description="Intel or AMD.")
    features: list[str] = Field(description="Every CPU feature flag the host offers, sorted.")
    cores: int
    memory_mib: int
    migration_bandwidth_mbps: float = Field(description="The host's migration link rate in Mbit/s (0: unlimited).")
    shared_volumes: list[str]
    passthrough_luns: list[str]
    allocated: Resources = Field(description="Held by VMs defined here (every state but MigratedAway "
                                 "and Incoming).")
    reserved: Resources = Field(description="Held for incoming migrations that have not finished.")
    vms: int = Field(description="VMs defined here (as counted in allocated).")
    sensors: Sensors
    health: Health
    boot_id: str = Field(description="Changes each time the agent process starts.")
    migration_port: int = Field(description="TCP port of the migration listener.")
    migrations: int = Field(0, description="Migrations in flight on this host (either role).")
    migration_stream_mbps: float | None = Field(None, description="Mbit/s one outgoing migration stream carried "
                                                "unshaped (best of the last few such rounds); None before any.")
    migration_streams_together_mbps: float | None = Field(None, description="The same for several at once, together.")
    driver: str = Field("simulated", description="What runs the guests: simulated, or qemu (real guests).")
    accelerator: str | None = Field(None, description="QEMU driver: kvm or tcg, once chosen.")
    cpu_models: list[str] = Field(default_factory=list, description="QEMU driver: the CPU models QEMU offers "
                                  "that this host can run (query-cpu-definitions), once known.")


# --------------------------------------------------------------------------------------------------
# Virtual machines


class VmState(StrEnum):
    Defined = "Defined"  # created, never started (or redefined)
    Running = "Running"
    Paused = "Paused"  # stopped executing for a moment (switchover of a migration)
    Saved = "Saved"  # execution state saved, memory kept; restore resumes it
    Stopped = "Stopped"  # powered off: memory gone
    Incoming = "Incoming"  # a migration target still receiving; not running anywhere here yet
    MigratedAway = "MigratedAway"  # tombstone on the source after a committed migration


class DiskSpec(Request):
    """One virtual disk: exactly one of ``volume``, ``passthroughLun`` or ``local``."""

    name: str = Field(min_length=1, max_length=253)
    size_gib: float = Field(gt=0, le=limits.MAX_DISK_GIB, description="Size in GiB.")
    volume: str | None = Field(None, description="A Cluster Shared Volume the disk lives on.")
    passthrough_lun: str | None = Field(None, description="A pass-through LUN the disk is.")
    local: bool = Field(False, description="A disk on the host's local storage (cannot move).")

    @model_validator(mode="after")
    def _one_backing(self) -> Self:
        backings = [b for b in (self.volume is not None, self.passthrough_lun is not None, self.local) if b]
        if len(backings) != 1:
            raise ValueError(f"disk {self.name!r}: set exactly one of volume, passthroughLun, local")
        return self


class WorkloadSpec(Request):
    """How the simulated guest writes its memory."""

    dirty_rate_mib_ps: float = Field(
        0.0, ge=0, le=limits.MAX_DIRTY_RATE_MIBPS, alias="dirtyRateMiBps",
        description="Page writes per second, in MiB/s (each write dirties one 4 KiB page).",
    )
    working_set_mib: float = Field(
        0.0, ge=0, description="Size of the hot set in MiB; 0 or more than memory means all memory.",
    )
    hot_fraction: float = Field(
        0.95, ge=0, le=1, description="Share of writes that land in the hot set (the rest go anywhere).",
    )
    prefill_mib: float = Field(
        0.0, ge=0, description="MiB of memory (from the start) the guest has written when it boots; the "
        "rest are zero pages. Lets tests and benchmarks move non-zero memory without a long warm-up.",
    )


class VmDefinition(Request):
    """``PUT /v1/vms/{vmId}``: define a VM (idempotent; a running VM only accepts workload changes)."""

    name: str = Field(min_length=1, max_length=253)
    namespace: str = Field("default", min_length=1, max_length=253)
    cpus: int = Field(ge=1, le=limits.MAX_VM_CPUS)
    memory_mib: int = Field(ge=1, le=limits.MAX_VM_MEMORY_MIB, description="Guest memory in MiB (4 KiB pages).")
    compatibility: bool = Field(False, description="Processor compatibility mode: the guest sees only "
                                "the baseline feature set.")
    disks: list[DiskSpec] = Field(default_factory=list, max_length=limits.MAX_VM_DISKS)
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    drivers: list[DriverName] = Field(default_factory=list, max_length=limits.MAX_DRIVERS)


class StartRequest(Request):
    """``POST /v1/vms/{vmId}/start`` (the body is optional): how the guest starts."""

    baseline_features: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=1024,
        description="In processor compatibility mode, the features the guest may see: the baseline the "
        "operator computed from the hosts the VM may run on. The guest gets those the host has. Unset: "
        "the x86_64_v2 level. Ignored without compatibility, and by a guest that is already running.")


class GuestIoCeilings(Response):
    network_mbps: int = Field(description="Best network throughput the guest's drivers allow, Mbit/s.")
    disk_mbps: int = Field(alias="diskMBps", description="Best disk throughput the drivers allow, MB/s.")


class WorkloadInfo(Response):
    dirty_rate_mib_ps: float = Field(alias="dirtyRateMiBps")
    working_set_mib: float
    hot_fraction: float
    prefill_mib: float = 0.0


class DiskInfo(Response):
    name: str
    size_gib: float
    volume: str | None = None
    passthrough_lun: str | None = None
    local: bool = False


class VmInfo(Response):
    """``GET /v1/vms/{vmId}``: a VM as this host sees it."""

    id: str
    name: str
    namespace: str
    state: VmState
    features: list[str] = Field(description="CPU features fixed when the guest started (empty before).")
    digest: str = Field(description="Incremental digest of guest memory, 16 hex digits.")
    heartbeat: int = Field(description="Guest heartbeat counter (100 per second of guest run time).")
    drivers: list[str]
    io_ceilings: GuestIoCeilings
    memory_mib: int
    cpus: int
    compatibility: bool
    disks: list[DiskInfo]
    workload: WorkloadInfo
    throttle_percent: float = Field(description="Auto-converge throttle applied to the guest's writes.")
    migration_id: str | None = Field(None, description="The migration in flight for this VM, if any.")


class VmList(Response):
    vms: list[VmInfo]


class HostReport(Response):
    """``GET /v1/report``: what ``GET /v1/host`` and ``GET /v1/vms`` answer, taken at one moment."""

    host: HostInfo
    vms: list[VmInfo]


class DriverChange(Request):
    """``PUT /v1/vms/{vmId}/drivers``: what the guest-side conversion agent installs and removes."""

    install: list[DriverName] = Field(default_factory=list, max_length=limits.MAX_DRIVERS)
    remove: list[DriverName] = Field(default_factory=list, max_length=limits.MAX_DRIVERS)


# --------------------------------------------------------------------------------------------------
# Migrations


class MigrationRole(StrEnum):
    source = "source"
    target = "target"


class IncomingVm(VmDefinition):
    """The VM a target must prepare: its definition plus what the running guest is fixed to."""

    vm_id: str = Field(pattern=VM_ID_PATTERN)
    features: list[str] = Field(description="CPU features the guest was started with.")
    vendor: str | None = Field(None, description="CPU vendor of the source host; refused if different.")


class IncomingMigrationRequest(Request):
    """``POST /v1/migrations/incoming`` on the target: reserve room and issue a one-time ticket."""

    migration_id: str = Field(pattern=VM_ID_PATTERN)
    vm: IncomingVm
    mode: MigrationMode = MigrationMode.Live
    reservation_seconds: float | None = Field(None, gt=0, le=3600, description="How long the reservation "
                                              "waits for the stream (default: the agent's setting, 30 s).")

    @model_validator(mode="after")
    def _concrete_mode(self) -> Self:
        if self.mode is MigrationMode.Auto:
            raise ValueError("mode must be Live or Quick: the operator resolves Auto before calling agents")
        return self


class IncomingMigrationGrant(Response):
    ticket: str = Field(description="One-time HMAC ticket; the stream must present it within expiresInSeconds.")
    host: str = Field(description="Address of the target's migration listener.")
    port: int
    bandwidth_mbps: float = Field(description="The target's configured migration bandwidth, Mbit/s (0: unlimited).")
    expires_in_seconds: float = Field(30.0, description="The reservation lapses if no stream arrives by then.")


class MigrationTarget(Request):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    ticket: str = Field(min_length=1, max_length=1024)
    bandwidth_mbps: float = Field(ge=0, description="The target's migration bandwidth in Mbit/s (0: "
                                  "unlimited); the stream is shaped to the slower of the two hosts.")


class AutoConvergeSettings(Request):
    """Throttle the guest's writes step by step when pre-copy rounds stop shrinking."""

    enabled: bool = False
    initial_percent: float = Field(CONVERGENCE.throttle_initial_percent, gt=0, le=100,
                                   description="Throttle of the first auto-converge round.")
    step_percent: float = Field(CONVERGENCE.throttle_step_percent, gt=0, le=100,
                                description="Added after each further round that does not shrink.")
    max_percent: float = Field(CONVERGENCE.throttle_max_percent, gt=0, le=99.9)


class LinkShareSettings(Request):
    """How a migration shares its source's migration link with the others the source sends at the same time.

    The planner of a drain decides the shares; the source agent enforces them: among the migrations
    that carry one, the lowest ``rank`` gets weight 1 and each other ``ratio ** (lowest - rank)``; a
    migration without one gets weight 1. The link is divided by weight (weighted max-min: a migration
    its own cap holds back leaves the rest to the others), again whenever one starts or ends.
    """

    rank: int = Field(ge=0, le=1_000_000, description="Position in the drain's order (0 first).")
    ratio: float = Field(1.0, ge=1, le=1000, description="How many times the share of the next rank each rank "
                         "gets (1: equal shares).")


class MigrationRequest(Request):
    """``POST /v1/migrations`` on the source: move a VM to a target that issued a ticket."""

    migration_id: str = Field(pattern=VM_ID_PATTERN)
    vm_id: str = Field(pattern=VM_ID_PATTERN)
    mode: MigrationMode = MigrationMode.Live
    target: MigrationTarget
    threshold_ms: float = Field(CONVERGENCE.threshold_ms, gt=0, le=60_000, description="Switch over when the "
                                "remaining dirty set would cross the link in less than this.")
    max_rounds: int = Field(CONVERGENCE.max_rounds, ge=1, le=1000)
    stall_rounds: int = Field(CONVERGENCE.stall_rounds, ge=1, le=1000, description="Rounds in a row that "
                              "shrink the remaining set by less than 5 % before the ladder steps in.")
    auto_converge: AutoConvergeSettings = Field(default_factory=AutoConvergeSettings)
    fallback_to_quick: bool = Field(False, description="When pre-copy cannot converge, pause the guest and "
                                    "copy the rest (a quick migration of what the target lacks).")
    fallback_to_postcopy: bool = Field(False, description="When pre-copy cannot converge, run the guest on the "
                                       "target and let it pull the rest (QEMU driver only: a source under "
                                       "the simulated driver fails NotConverging instead).")
    max_downtime_ms: float | None = Field(None, gt=0, description="Refuse a fallback whose predicted pause "
                                          "exceeds this.")
    bandwidth_mbps: float | None = Field(None, gt=0, description="A cap below both hosts' rates.")
    link_share: LinkShareSettings | None = Field(None, description="This migration's share of the source's link while "
                                         "others send too; unset: an equal share.")
    timeout_seconds: float | None = Field(None, gt=0, description="Fail with Timeout if not committed by then.")
    switchover_wait_seconds: float = Field(0.0, ge=0, le=20, description="Once pre-copy has converged, keep "
                                           "sending rounds (the guest runs on) for at most this long until POST "
                                           "/v1/migrations/{id}/switchover says go; 0: switch over at once. At "
                                           "most 20: an idle guest sends nothing meanwhile, and a target gives "
                                           "up on a stream silent for 30 s.")

    @model_validator(mode="after")
    def _concrete_mode(self) -> Self:
        if self.mode is MigrationMode.Auto:
            raise ValueError("mode must be Live or Quick: the operator resolves Auto before calling agents")
        return self

    def convergence(self) -> ConvergencePolicy:
        """The rules the source's convergence decision follows for this migration."""
        auto = self.auto_converge
        return ConvergencePolicy(
            threshold_ms=self.threshold_ms, max_rounds=self.max_rounds, stall_rounds=self.stall_rounds,
            auto_converge=auto.enabled, throttle_initial_percent=auto.initial_percent,
            throttle_step_percent=auto.step_percent, throttle_max_percent=auto.max_percent,
            fallback_to_quick=self.fallback_to_quick, fallback_to_postcopy=self.fallback_to_postcopy,
            max_downtime_ms=self.max_downtime_ms)


class RoundInfo(Response):
    round: int
    sent_mib: float
    seconds: float
    dirty_mib: float = Field(description="Distinct MiB dirtied while this round was on the wire.")


class MigrationFailureReport(Response):
    reason: FailureReason
    message: str


class MigrationStatus(Response):
    """A migration as one side sees it; both sides answer for the same migrationId."""

    migration_id: str
    vm_id: str
    role: MigrationRole
    mode: MigrationMode = Field(description="The mode in use (Live turns Quick on fallback).")
    phase: MigrationPhase
    round: int = 0
    transferred_mib: float = 0.0
    remaining_mib: float = 0.0
    dirty_rate_mib_ps: float = Field(0.0, alias="dirtyRateMiBps")
    throughput_mbps: float = 0.0
    percent: float = 0.0
    throttle_percent: float = 0.0
    rounds: list[RoundInfo] = Field(default_factory=list, description="The last rounds (at most 64).")
    postcopy: bool = Field(False, description="QEMU driver, source: the ladder switched to post-copy; the guest "
                           "runs on the target and pulls the pages it still lacks.")
    downtime_ms: float | None = None
    expected_downtime_ms: float | None = Field(None, description="QEMU driver: the pause QEMU expects if it "
                                               "switched over now (query-migrate's expected-downtime).")
    duration_ms: float | None = None
    source_digest: str | None = None
    target_digest: str | None = None
    committed: bool = Field(False, description="True once the source released its copy.")
    in_doubt: bool = Field(False, description="Source only: the switchover was sent but the target cannot be "
                           "asked whether it resumed the guest (a partition, a dead host). The source keeps its "
                           "copy paused and asks again until the target answers, or until POST "
                           "/v1/migrations/{id}/resolve tells it what the target did.")
    ready_to_switch_over: bool = Field(False, description="Source only: pre-copy has converged and the source "
                                       "waits for POST /v1/migrations/{id}/switchover (or the end of "
                                       "switchoverWaitSeconds) to pause the guest; it keeps running and the "
                                       "source keeps sending what it dirties.")
    switchover_acknowledged: bool | None = Field(None, description="Source only, once a migration that waits "
                                                 "for the go has switched over: true when the go came, false when "
                                                 "the wait ran out and the source switched over without it.")
    failure: MigrationFailureReport | None = None
    peer: str | None = Field(None, description="The other host, as host:port when known.")


class ResolveRequest(Request):
    """``POST /v1/migrations/{id}/resolve`` on a source in doubt: what the target says it did.

    Only the target's own statement may be passed on: ``targetResumed`` false means the target
    answered that it had not resumed the guest and never will (it discarded its copy).
    """

    target_resumed: bool


class MigrationList(Response):
    migrations: list[MigrationStatus]


# --------------------------------------------------------------------------------------------------
# Sensors


class ComponentFault(Request):
    index: int = Field(ge=0, le=64)
    failed: bool


class SensorChange(Request):
    """``POST /v1/sensors``: simulate hardware trouble (tests and demos) or heal it.

    ``correctedMemoryErrors`` adds to the counter; ``heal`` restores every sensor to normal first.
    """

    fan: ComponentFault | None = None
    power_supply: ComponentFault | None = None
    temperature_c: Annotated[float, Field(ge=-50, le=150)] | None = None
    corrected_memory_errors: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None
    heal: bool = False

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not (self.heal or self.fan or self.power_supply or self.temperature_c is not None
                or self.corrected_memory_errors is not None):
            raise ValueError("give at least one of fan, powerSupply, temperatureC, correctedMemoryErrors, heal")
        return self


# --------------------------------------------------------------------------------------------------
# Helpers


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of an error response."""
    return {"error": {"code": code, "message": message}}


def mib(pages: int) -> float:
    """4 KiB pages -> MiB."""
    return pages / 256
