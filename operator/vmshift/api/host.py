"""The Host kind (cluster-scoped): one hypervisor, its capacity, its agent, and what the operator sees on it.

Pure: no I/O. Models only; the host controller fills the status.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from vmshift.api.common import (
    AGE_COLUMN,
    DNS_LABEL,
    READY_COLUMN,
    ApiModel,
    CelRule,
    ConditionsStatus,
    PrinterColumn,
    Resource,
    ResourceInfo,
    SecretKeyReference,
    list_atomic,
    list_map,
    list_set,
)
from vmshift.api.reasons import FailureReason
from vmshift.api.remediationpolicy import RemediationAction
from vmshift.processor import cpu_models


def _known_cpu_model(model: str) -> str:
    if model not in cpu_models():
        raise ValueError(
            f"unknown CPU model {model!r}: expected an x86-64 microarchitecture known to archspec, "
            f"such as haswell, cascadelake, icelake, sapphirerapids, zen2, zen3, zen4"
        )
    return model


#: A CPU model name: one of archspec's x86-64 microarchitectures (the CRD lists them as an enum).
CpuModelName = Annotated[str, AfterValidator(_known_cpu_model), Field(json_schema_extra={"enum": list(cpu_models())})]

#: Shared volume and LUN names: DNS labels, so they read the same in every manifest.
VolumeName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


class HostCpu(ApiModel):
    """The host's processor."""

    model: CpuModelName = Field(
        description="The processor's microarchitecture, as archspec names it (e.g. haswell, cascadelake, "
        "icelake, sapphirerapids, zen2, zen3, zen4). It fixes the vendor and the instruction-set "
        "features guests started here can see."
    )
    cores: int = Field(
        description="Logical processors the host offers to guests. Each VM cpu takes one. 1 to 4096.",
        ge=1,
        le=4096,
    )


class HostStorage(ApiModel):
    """The storage this host reaches."""

    sharedVolumes: list[VolumeName] = Field(
        default_factory=list,
        description="Cluster Shared Volumes mounted on this host. A VM disk on a shared volume can move "
        "live to every host that mounts the same volume. Names are DNS labels; at most 64.",
        max_length=64,
        json_schema_extra=list_set(),
    )
    passthroughLuns: list[VolumeName] = Field(
        default_factory=list,
        description="Pass-through SAN LUNs this host sees. A VM disk on a LUN can move to every host "
        "that sees the same LUN; its path switches at switchover. At most 256.",
        max_length=256,
        json_schema_extra=list_set(),
    )


class HostAgent(ApiModel):
    """How the operator reaches the host's agent (the simulated hypervisor)."""

    endpoint: str = Field(
        description="Base URL of the agent's HTTP API, e.g. http://h-icelake-1-agent.vmshift-system:8443. "
        "The agent is the truth about which guests run on the host.",
        min_length=1,
        max_length=2048,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
    )
    tokenSecretRef: SecretKeyReference | None = Field(
        None,
        description="The key of a Secret in the operator's namespace (vmshift-system) holding this host's agent "
        "token, sent as a bearer token to spec.agent.endpoint and nowhere else. Required to reach the agent: "
        "the operator reads tokens from no other namespace and sends no other credential (a Secret "
        "elsewhere fails with TokenSecretOutsideOperatorNamespace, none with AgentTokenMissing). The Secret's "
        "annotation vmshift.io/agent-hosts must name this Host (names separated by commas, or *), so a "
        "Host's author cannot have another host's token sent elsewhere (TokenSecretNotForHost).",
    )


#: The Host name appears as a label value and in VM status: keep it a DNS label.
HOST_NAME_IS_DNS_LABEL = CelRule(
    rule="self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
    message="a Host's name must be a DNS label (at most 63 lowercase letters, digits and '-'), "
    "because VMs and labels refer to it",
)


class HostSpec(ApiModel):
    """What the hypervisor host offers and how the operator may use it."""

    cpu: HostCpu = Field(description="The host's processor: model and logical cores.")
    memoryMiB: int = Field(
        description="Memory the host offers to guests, in MiB. At least 1; at most 64 TiB (67108864).",
        ge=1,
        le=67108864,
    )
    migrationBandwidthMbps: int = Field(
        10000,
        description="Bandwidth of the host's migration network, in megabits per second, shared by all "
        "its concurrent migrations. Default 10000 (10 Gbit/s); 1 to 800000.",
        ge=1,
        le=800000,
    )
    storage: HostStorage = Field(
        default_factory=HostStorage, description="Shared volumes and pass-through LUNs the host reaches."
    )
    unschedulable: bool = Field(
        False,
        description="Cordon: when true no new VM is placed here and no migration comes in; VMs already "
        "here keep running. Default false.",
    )
    maintenance: bool = Field(
        False,
        description="Maintenance mode: when true the host is cordoned and every VM is moved away (drain). "
        "Progress is in status.drain. Set it back to false to return the host to service. Default false.",
    )
    maxConcurrentMigrations: int = Field(
        2,
        description="How many live migrations may run at once to or from this host (as Hyper-V's setting "
        "of the same meaning). Default 2; 1 to 64.",
        ge=1,
        le=64,
    )
    agent: HostAgent | None = Field(
        None,
        description="The host's agent. Without it the operator cannot start or move guests here and "
        "reports the host Unreachable.",
    )


class HostPhase(StrEnum):
    """The host's state in one word, for people."""

    Ready = "Ready"
    Cordoned = "Cordoned"
    Draining = "Draining"
    Maintenance = "Maintenance"
    Degraded = "Degraded"
    Unreachable = "Unreachable"


class HostResources(ApiModel):
    """An amount of host resources."""

    cpus: int = Field(0, description="Logical processors.", ge=0)
    memoryMiB: int = Field(0, description="Memory in MiB.", ge=0)


class HostMigrations(ApiModel):
    """Migrations in flight that involve this host."""

    inbound: int = Field(0, description="Migrations coming in to this host.", ge=0)
    outbound: int = Field(0, description="Migrations leaving this host.", ge=0)
    streamMbps: float | None = Field(
        None,
        description="What one migration stream out of this host really carries, in Mbit/s, as its agent measured "
        "it: the highest rate among its last few outgoing pre-copy rounds that the link's shaper did not hold. A "
        "stream's sender and receiver are bound by their CPUs and may carry less than "
        "spec.migrationBandwidthMbps; the drain planner then runs several migrations at once, each expected to "
        "carry at most this much. Unset until a migration out of the host has sent such a round, and again when "
        "none did in the last 10 minutes (the machine's load may have changed since).",
        ge=0,
    )
    streamsTogetherMbps: float | None = Field(
        None,
        description="What several migration streams out of this host carried together, in Mbit/s, as its agent "
        "measured it: the highest total among its last few rounds sent while other outgoing streams sent all "
        "along. Streams that share the same CPUs carry less than the sum of their single rates. Shown for "
        "information: the drain planner plans on streamMbps only. Unset until several have sent at once, and "
        "again when none did in the last 10 minutes.",
        ge=0,
    )


class HostProcessor(ApiModel):
    """The processor as the operator resolved it from spec.cpu.model."""

    model: str | None = Field(None, description="The microarchitecture the features were read for.")
    vendor: Literal["Intel", "AMD"] | None = Field(
        None, description="The processor vendor: Intel or AMD. Guests never move across vendors."
    )
    features: list[str] = Field(
        default_factory=list,
        description="Instruction-set features of the processor (archspec's flag names), sorted.",
        json_schema_extra=list_atomic(),
    )


class SensorKind(StrEnum):
    """What a hardware sensor measures."""

    Fan = "Fan"
    PowerSupply = "PowerSupply"
    Temperature = "Temperature"
    CorrectedMemoryErrors = "CorrectedMemoryErrors"


class HardwareAlert(StrEnum):
    """The alerts a host's agent raises from its sensors: the ``alertname`` label RemediationPolicies
    match (``spec.match.alertname``, ``spec.correlation.signals``). The one list of these names;
    samples, rules and docs use it."""

    #: One fan stopped (warning), or at least half of them (critical).
    FanFailure = "FanFailure"
    #: A power supply failed: the host has lost power redundancy (critical).
    PowerSupplyFailure = "PowerSupplyFailure"
    #: Inlet temperature over the warning limit (warning) or the critical one (critical).
    HighTemperature = "HighTemperature"
    #: Corrected (ECC) memory errors per hour over the warning limit (warning) or the critical one.
    CorrectedMemoryErrors = "CorrectedMemoryErrors"

    @property
    def sensor(self) -> SensorKind:
        """The sensor kind the alert comes from (its ``signal`` label)."""
        return {
            HardwareAlert.FanFailure: SensorKind.Fan,
            HardwareAlert.PowerSupplyFailure: SensorKind.PowerSupply,
            HardwareAlert.HighTemperature: SensorKind.Temperature,
            HardwareAlert.CorrectedMemoryErrors: SensorKind.CorrectedMemoryErrors,
        }[self]


class SensorHealth(StrEnum):
    """The verdict on a sensor reading."""

    OK = "OK"
    Warning = "Warning"
    Critical = "Critical"


class SensorReading(ApiModel):
    """One hardware sensor of the host, as its agent last reported it."""

    name: str = Field(description="Name of the sensor, unique on the host, e.g. fan-1, psu-2, cpu-temp.",
                      min_length=1, max_length=63)
    kind: SensorKind = Field(
        description="What the sensor measures: Fan, PowerSupply, Temperature or CorrectedMemoryErrors."
    )
    value: float | None = Field(
        None,
        description="The reading in the sensor's unit: RPM for a fan, watts for a power supply, degrees "
        "Celsius for a temperature, errors per hour for corrected memory errors.",
    )
    health: SensorHealth = Field(description="The agent's verdict on the reading: OK, Warning or Critical.")
    message: str | None = Field(None, description="What is wrong, when health is not OK.", max_length=1024)


class DrainState(StrEnum):
    """Where a drain stands."""

    Running = "Running"
    Completed = "Completed"
    Blocked = "Blocked"
    Cancelled = "Cancelled"


class BlockedVirtualMachine(ApiModel):
    """A VM the drain cannot move, and why."""

    vm: str = Field(description="The VM, as namespace/name.", min_length=1, max_length=317)
    reason: FailureReason = Field(description="Why it cannot move, from the closed set of failure reasons.")
    message: str = Field("", description="What blocks it and what a person can do.", max_length=4096)


class DrainStatus(ApiModel):
    """Progress of the drain started by spec.maintenance (or by a remediation)."""

    state: DrainState | None = Field(
        None,
        description="Running (VMs are being moved), Completed (nothing left to move), Blocked (only VMs "
        "that cannot move are left; see blocked; the Host's Stalled condition is True) or Cancelled "
        "(maintenance was turned off, or the remediation ended, before the drain completed).",
    )
    total: int = Field(0, description="VMs the drain moves: those moved so far plus those still on the host "
                       "that it covers (every VM, or those at or above minPriority).", ge=0)
    moved: int = Field(0, description="VMs moved away so far.", ge=0)
    inFlight: int = Field(0, description="VMs being moved right now.", ge=0)
    failed: int = Field(0, description="Migration attempts that failed (each VM is retried up to a limit).",
                        ge=0)
    blocked: list[BlockedVirtualMachine] = Field(
        default_factory=list,
        description="VMs the drain cannot move, with the reason; the drain does not spin on them.",
        json_schema_extra=list_map("vm"),
    )
    startedAt: datetime | None = Field(None, description="When the drain started.")
    finishedAt: datetime | None = Field(None, description="When the drain completed or was cancelled.")
    trigger: str | None = Field(
        None,
        description="What keeps the drain open: spec.maintenance, or the RemediationPolicy acting on the host "
        "and its action. Unset once the host is back in service; the numbers then stay as the record of "
        "the last drain.",
        max_length=512,
    )
    minPriority: int | None = Field(
        None,
        description="Only VMs whose spec.priority is at least this leave the host (an EvacuateCritical "
        "remediation). Unset: every VM leaves.",
    )
    strategy: str | None = Field(
        None,
        description="How the planner runs the drain: how many migrations at once and how they share the "
        "host's migration link, chosen by simulating the candidates when the drain started.",
        max_length=256,
    )
    expectedSeconds: float | None = Field(
        None, description="The planner's estimate of the whole drain when it started, in seconds.", ge=0
    )
    lowerBoundSeconds: float | None = Field(
        None,
        description="No schedule of the same moves could finish sooner than this, in seconds (the bytes every "
        "move must send over the host's migration link).",
        ge=0,
    )


class AlertSource(StrEnum):
    """Where a health signal came from."""

    #: The host's agent reported it from its hardware sensors.
    Agent = "Agent"
    #: Alertmanager posted it to the operator's webhook receiver.
    Alertmanager = "Alertmanager"


class AlertRef(ApiModel):
    """An alert that contributed to a remediation."""

    alertname: str = Field(description="The alert's alertname label.", min_length=1, max_length=253)
    severity: str | None = Field(None, description="The alert's severity label.", max_length=63)
    startsAt: datetime | None = Field(None, description="When the alert started firing (as Alertmanager "
                                      "says, or when the operator first saw the sensor reading).")
    source: AlertSource | None = Field(
        None, description="Where the alert came from: Agent (hardware sensors) or Alertmanager (the webhook)."
    )


class HostRemediation(ApiModel):
    """The remediation acting on this host, if any."""

    policy: str = Field(description="The RemediationPolicy that acts.", min_length=1, max_length=253)
    action: RemediationAction = Field(description="What it does: Quarantine, EvacuateCritical or Maintenance.")
    since: datetime | None = Field(None, description="When the action started.")
    alerts: list[AlertRef] = Field(default_factory=list, description="The alerts and signals behind it.")
    priorityThreshold: int | None = Field(
        None, description="With EvacuateCritical, the lowest spec.priority of the VMs moved away.", ge=0
    )
    reason: str | None = Field(
        None, description="The policy's last decision about this host, in one CamelCase word (e.g. Triggered, "
        "AlertsFiring, Holding, AwaitingRelease).", max_length=128
    )
    message: str | None = Field(None, description="The last decision as a sentence: what holds the action and "
                                "what ends it.", max_length=4096)


class PastRemediation(ApiModel):
    """The last remediation that acted on this host and has ended."""

    policy: str = Field(description="The RemediationPolicy that acted.", min_length=1, max_length=253)
    action: RemediationAction = Field(description="What it did: Quarantine, EvacuateCritical or Maintenance.")
    since: datetime | None = Field(None, description="When the action started.")
    endedAt: datetime | None = Field(None, description="When it ended. The policy's cooldownSeconds count from "
                                     "here.")
    reason: str | None = Field(None, description="Why it ended, in one CamelCase word (AlertsResolved, "
                               "ReleasedByAnnotation, Superseded, PolicyDeleted).", max_length=128)
    message: str | None = Field(None, description="Why it ended, as a sentence.", max_length=4096)


class HostStatus(ConditionsStatus):
    """What the operator observes on the host. Conditions: Ready, Schedulable, HardwareHealthy (False
    while the agent's sensors report trouble or Alertmanager reports an alert firing for the host),
    Draining, Reconciling, Stalled."""

    phase: HostPhase | None = Field(
        None,
        description="The host's state in one word: Ready, Cordoned (unschedulable), Draining (maintenance "
        "in progress), Maintenance (drained), Degraded (hardware trouble) or Unreachable (agent silent).",
    )
    allocated: HostResources | None = Field(None, description="CPUs and memory taken by the VMs placed here.")
    vms: int | None = Field(None, description="Number of VMs on this host.", ge=0)
    migrations: HostMigrations | None = Field(None, description="Migrations in flight to and from this host.")
    processor: HostProcessor | None = Field(None, description="Vendor and features of the host's processor.")
    sensors: list[SensorReading] = Field(
        default_factory=list,
        description="Hardware sensors as the agent last reported them. Simulated on every agent, also on one "
        "that runs real guests under QEMU (--driver qemu): a shared test machine has no sensors to read.",
        max_length=128,
        json_schema_extra=list_map("name"),
    )
    lastHeartbeatTime: datetime | None = Field(
        None,
        description="When the agent last answered, as of the last change of this status: every status write "
        "carries it, but the operator does not write only to move it (an idle fleet costs the API server "
        "nothing). While the host is Unreachable: when its agent was last heard.",
    )
    drain: DrainStatus | None = Field(None, description="Progress of the current or last drain.")
    remediation: HostRemediation | None = Field(
        None,
        description="The remediation acting on this host, if any. While it is set the host takes no new VMs "
        "and no inbound migrations (every action quarantines).",
    )
    lastRemediation: PastRemediation | None = Field(
        None, description="The last remediation that ended on this host, and why."
    )


class Host(Resource):
    """A hypervisor host: its processor, memory, storage and agent. Cluster-scoped."""

    resource: ClassVar[ResourceInfo] = ResourceInfo(
        plural="hosts",
        singular="host",
        scope="Cluster",
        shortNames=("hv", "vshost"),
        printerColumns=(
            PrinterColumn("Phase", "string", ".status.phase", "The host's state in one word."),
            PrinterColumn("CPU", "string", ".spec.cpu.model", "Processor microarchitecture."),
            PrinterColumn("Vendor", "string", ".status.processor.vendor", "Processor vendor."),
            PrinterColumn("Cores", "integer", ".spec.cpu.cores", "Logical processors.", priority=1),
            PrinterColumn("Memory", "integer", ".spec.memoryMiB", "Memory in MiB.", priority=1),
            PrinterColumn("VMs", "integer", ".status.vms", "VMs on the host."),
            READY_COLUMN,
            AGE_COLUMN,
        ),
        rootRules=(HOST_NAME_IS_DNS_LABEL,),
    )

    kind: Literal["Host"] = Field("Host", description="Host.")
    spec: HostSpec = Field(description="What the host offers and how the operator may use it.")
    status: HostStatus | None = Field(None, description="What the operator observes on the host.")
