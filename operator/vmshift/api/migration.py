"""The VirtualMachineMigration kind (namespaced): one request to move one VM, and how the move went.

Pure: no I/O. Models only; the migration controller drives the agents and fills the status.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field

from vmshift.api.common import (
    AGE_COLUMN,
    DNS_LABEL,
    ApiModel,
    CelRule,
    ConditionsStatus,
    PrinterColumn,
    Resource,
    ResourceInfo,
    cel,
    list_map,
)
from vmshift.api.migrationpolicy import MigrationStrategy
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase

#: The number of rounds kept in status.rounds (the oldest are dropped).
MAX_ROUND_HISTORY = 50

VM_NAME_IMMUTABLE = CelRule(
    rule="self == oldSelf",
    message="vmName is immutable: create a new migration to move another VM",
)
MODE_IMMUTABLE = CelRule(
    rule="self == oldSelf",
    message="mode is immutable: delete this migration and create a new one",
)
TARGET_IMMUTABLE = CelRule(
    rule="has(self.targetHost) == has(oldSelf.targetHost) && "
    "(!has(self.targetHost) || self.targetHost == oldSelf.targetHost)",
    message="targetHost is immutable: delete this migration and create a new one",
    fieldPath=".targetHost",
)


class VirtualMachineMigrationSpec(ApiModel):
    """Which VM to move, where, and within which limits. The VM, target and mode never change after creation."""

    model_config = ConfigDict(json_schema_extra=cel(TARGET_IMMUTABLE))

    vmName: str = Field(
        description="Name of the VirtualMachine to move, in the migration's namespace. Immutable.",
        min_length=1,
        max_length=253,
        json_schema_extra=cel(VM_NAME_IMMUTABLE),
    )
    targetHost: str | None = Field(
        None,
        description="The Host to move the VM to. Unset: the scheduler picks the best compatible host. "
        "Immutable.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
    )
    mode: MigrationMode = Field(
        MigrationMode.Auto,
        description="Live (pre-copy; pause of milliseconds), Quick (save, copy, restore; the pause is the "
        "whole copy) or Auto (the VM's spec.migration.mode, then its policy's ladder). Default Auto. "
        "Immutable.",
        json_schema_extra=cel(MODE_IMMUTABLE),
    )
    reason: str | None = Field(
        None,
        description="Why the VM is moved, for people and events (e.g. \"rebalance\", \"maintenance of h-3\").",
        max_length=1024,
    )
    maxDowntimeMs: int | None = Field(
        None,
        description="The longest pause of the guest this migration may cause, in milliseconds. Unset: the "
        "VM's, else its policy's. 1 to 600000.",
        ge=1,
        le=600000,
    )
    timeoutSeconds: int | None = Field(
        None,
        description="Give up (and leave the VM where it was) after this many seconds. Unset: the policy's "
        "completionTimeoutPerGiBSeconds times the guest's memory in GiB. 1 to 86400.",
        ge=1,
        le=86400,
    )


class MigrationProgress(ApiModel):
    """Where the transfer stands."""

    round: int | None = Field(None, description="The pre-copy round under way; 0 is the full copy.", ge=0)
    transferredMiB: float | None = Field(None, description="Memory sent so far, in MiB.", ge=0)
    remainingMiB: float | None = Field(None, description="Dirty memory still to send, in MiB.", ge=0)
    dirtyRateMiBps: float | None = Field(None, description="How fast the guest dirties memory, in MiB/s.", ge=0)
    throughputMbps: float | None = Field(None, description="Transfer rate, in megabits per second.", ge=0)
    percent: int | None = Field(None, description="Estimated completion, 0 to 100.", ge=0, le=100)
    etaSeconds: float | None = Field(None, description="Estimated seconds until switchover.", ge=0)
    throttlePercent: int | None = Field(
        None, description="CPU throttle applied by AutoConverge, in percent.", ge=0, le=100
    )


class MigrationRound(ApiModel):
    """One pre-copy round."""

    round: int = Field(description="Index of the round; 0 is the full copy.", ge=0)
    strategy: MigrationStrategy | None = Field(None, description="The ladder rung the round ran under.")
    sentMiB: float | None = Field(None, description="Memory sent in the round, in MiB.", ge=0)
    durationMs: float | None = Field(None, description="How long the round took, in milliseconds.", ge=0)
    dirtiedMiB: float | None = Field(None, description="Memory the guest dirtied during the round, in MiB.",
                                     ge=0)


class MigrationFailure(ApiModel):
    """Why the migration did not succeed."""

    reason: FailureReason = Field(
        description="A word from a closed set: IncompatibleProcessor, InsufficientResources, "
        "TargetUnschedulable, StorageNotShared, NotConverging, Timeout, AgentUnreachable, SourceLost, "
        "TargetLost, AlreadyMigrating, PlacementConstraint, Cancelled, VirtualMachineNotRunning, "
        "MemoryMismatch (the memory that arrived differs from the source's; the target discarded it), "
        "InvalidSpec (the migration's spec is refused by its model: the message names the field)."
    )
    message: str = Field(
        "", description="What went wrong, naming the hosts and VM, and what a person can do.", max_length=32768
    )


class VirtualMachineMigrationStatus(ConditionsStatus):
    """How the move goes. Conditions: Ready (finished successfully), Reconciling (in flight), Stalled."""

    phase: MigrationPhase | None = Field(
        None,
        description="Pending (accepted, waiting for its turn), Validating (admitted: checked again, target "
        "prepared), Transferring (memory is copied while the VM runs), SwitchingOver (the copy has converged: the "
        "VM is paused on the source for the final copy and resumed on the target; a live migration always "
        "passes through it, shown before the pause), Succeeded, Failed or Cancelled.",
    )
    sourceHost: str | None = Field(None, description="The host the VM was on when the migration started.")
    targetHost: str | None = Field(None, description="The host the VM is moving to (chosen or requested).")
    mode: MigrationMode | None = Field(None, description="The mode in use: Live or Quick.")
    strategy: MigrationStrategy | None = Field(None, description="The ladder rung in use.")
    policy: str | None = Field(None, description="The MigrationPolicy applied.")
    progress: MigrationProgress | None = Field(None, description="Where the transfer stands.")
    rounds: list[MigrationRound] = Field(
        default_factory=list,
        description=f"The last {MAX_ROUND_HISTORY} pre-copy rounds, oldest first.",
        max_length=MAX_ROUND_HISTORY,
        json_schema_extra=list_map("round"),
    )
    downtimeMs: float | None = Field(None, description="How long the guest was paused, in milliseconds.", ge=0)
    durationMs: float | None = Field(None, description="How long the migration took, in milliseconds.", ge=0)
    memoryVerified: bool | None = Field(
        None, description="Whether the target's memory digest matched the source's at switchover."
    )
    inDoubt: bool | None = Field(
        None, description="True while the switchover is in doubt: the source sent it but cannot ask the target "
        "whether it resumed the guest (a partition, a dead host), so the guest stays paused on the source until "
        "the target's agent answers. The condition Ready says what to do.",
    )
    switchoverAcknowledged: bool | None = Field(
        None, description="Live migrations: true when the source paused the VM on the operator's go, after "
        "SwitchingOver was written here; false when the source heard no go within a few seconds (the operator "
        "was down or slow) and switched over without it, so the phase may not have been shown before the pause.",
    )
    startedAt: datetime | None = Field(None, description="When the transfer started.")
    finishedAt: datetime | None = Field(None, description="When the migration ended.")
    failure: MigrationFailure | None = Field(None, description="Why it did not succeed, when it did not.")


class VirtualMachineMigration(Resource):
    """A request to move one VM to another host. Deleting it while in flight cancels it; the VM stays."""

    resource: ClassVar[ResourceInfo] = ResourceInfo(
        plural="virtualmachinemigrations",
        singular="virtualmachinemigration",
        scope="Namespaced",
        shortNames=("vsmig",),
        printerColumns=(
            PrinterColumn("VM", "string", ".spec.vmName", "The VM being moved."),
            PrinterColumn("Phase", "string", ".status.phase", "Where the migration stands."),
            PrinterColumn("Source", "string", ".status.sourceHost", "The host the VM leaves."),
            PrinterColumn("Target", "string", ".status.targetHost", "The host the VM moves to."),
            PrinterColumn("Progress", "integer", ".status.progress.percent", "Estimated completion in %."),
            PrinterColumn("Downtime", "number", ".status.downtimeMs", "Pause of the guest in ms."),
            PrinterColumn("Mode", "string", ".status.mode", "The mode in use.", priority=1),
            PrinterColumn("Reason", "string", ".status.failure.reason", "Why it failed.", priority=1),
            AGE_COLUMN,
        ),
    )

    kind: Literal["VirtualMachineMigration"] = Field("VirtualMachineMigration",
                                                     description="VirtualMachineMigration.")
    spec: VirtualMachineMigrationSpec = Field(description="Which VM to move, where, and within which limits.")
    status: VirtualMachineMigrationStatus | None = Field(None, description="How the move goes.")
