"""Closed enumerations shared by the API, the scheduler and the agents.

Pure: no I/O. Users alert on these words, so they are part of the API; add
members only with a note, rename none.
"""

from __future__ import annotations

from enum import StrEnum


class FailureReason(StrEnum):
    """Why a migration (or a placement) could not happen."""

    IncompatibleProcessor = "IncompatibleProcessor"
    InsufficientResources = "InsufficientResources"
    TargetUnschedulable = "TargetUnschedulable"
    StorageNotShared = "StorageNotShared"
    NotConverging = "NotConverging"
    Timeout = "Timeout"
    AgentUnreachable = "AgentUnreachable"
    SourceLost = "SourceLost"
    TargetLost = "TargetLost"
    AlreadyMigrating = "AlreadyMigrating"
    #: Added to the first list because needed: a selector or anti-affinity rule excludes the target;
    #: a cancel/delete ended the migration; the VM named does not exist or runs nowhere.
    PlacementConstraint = "PlacementConstraint"
    Cancelled = "Cancelled"
    VirtualMachineNotRunning = "VirtualMachineNotRunning"
    #: Added: the memory that arrived is not the memory the source paused with (a digest mismatch,
    #: or a page whose bytes do not match its version); the target discarded its copy.
    MemoryMismatch = "MemoryMismatch"
    #: Added: the object's spec is refused by its model (one stored before a rule changed): the
    #: operator acts on no spec it cannot read, and says which field is wrong.
    InvalidSpec = "InvalidSpec"


class MigrationMode(StrEnum):
    Auto = "Auto"
    Live = "Live"
    Quick = "Quick"


class MigrationPhase(StrEnum):
    Pending = "Pending"
    Validating = "Validating"
    Transferring = "Transferring"
    SwitchingOver = "SwitchingOver"
    Succeeded = "Succeeded"
    Failed = "Failed"
    Cancelled = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in (MigrationPhase.Succeeded, MigrationPhase.Failed, MigrationPhase.Cancelled)
