"""The MigrationPolicy kind (cluster-scoped): how the VMs it selects move, and what happens when they will not.

Pure: no I/O. Models only; the migration controller reads the policy that selects a VM.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from vmshift.api.common import (
    AGE_COLUMN,
    READY_COLUMN,
    ApiModel,
    CelRule,
    ConditionsStatus,
    LabelSelector,
    PrinterColumn,
    Resource,
    ResourceInfo,
    cel,
    list_atomic,
    list_set,
)


class MigrationStrategy(StrEnum):
    """One rung of the fallback ladder: how memory is moved."""

    #: Iterative pre-copy: copy all memory, then the pages dirtied meanwhile, round after round.
    PreCopy = "PreCopy"
    #: Pre-copy while throttling the guest's CPU, so it dirties memory more slowly than it is sent.
    AutoConverge = "AutoConverge"
    #: Save the guest, copy its state, restore it: always finishes; the pause is the whole copy.
    Quick = "Quick"
    #: QEMU driver only: run the guest on the target at once and let it pull the pages it still lacks.
    #: Always finishes with a short pause, but from the switch on the guest lives on the target: a target
    #: lost before every page arrived loses the guest. The simulated driver has no post-copy (a rung it
    #: reaches fails NotConverging, the VM stays).
    PostCopy = "PostCopy"


LADDER_UNIQUE = CelRule(
    rule="self.all(s, self.exists_one(t, t == s))",
    message="ladder must not name a strategy twice",
)
QUICK_IS_LAST = CelRule(
    rule="!self.exists(s, s == 'Quick') || self[size(self) - 1] == 'Quick'",
    message="Quick always finishes, so it can only be the last rung of the ladder",
)
POSTCOPY_IS_LAST = CelRule(
    rule="!self.exists(s, s == 'PostCopy') || self[size(self) - 1] == 'PostCopy'",
    message="PostCopy always finishes, so it can only be the last rung of the ladder (and not with Quick)",
)
QUICK_NEEDS_ALLOW = CelRule(
    rule="!self.ladder.exists(s, s == 'Quick') || self.allowQuick",
    message="ladder names Quick but allowQuick is false: set allowQuick: true or remove Quick from the ladder",
    fieldPath=".allowQuick",
)
OUTBOUND_WITHIN_CLUSTER = CelRule(
    rule="self.parallelOutboundMigrationsPerHost <= self.parallelMigrationsPerCluster",
    message="parallelOutboundMigrationsPerHost must not exceed parallelMigrationsPerCluster",
    fieldPath=".parallelOutboundMigrationsPerHost",
)
THRESHOLD_WITHIN_DOWNTIME = CelRule(
    rule="self.switchoverThresholdMs <= self.maxDowntimeMs",
    message="switchoverThresholdMs must not exceed maxDowntimeMs: the switchover itself would break the "
    "downtime budget",
    fieldPath=".switchoverThresholdMs",
)
STALL_WITHIN_ROUNDS = CelRule(
    rule="self.stallRounds <= self.maxRounds",
    message="stallRounds must not exceed maxRounds",
    fieldPath=".stallRounds",
)
INITIAL_WITHIN_MAX = CelRule(
    rule="self.initialPercent <= self.maxPercent",
    message="initialPercent must not exceed maxPercent",
    fieldPath=".initialPercent",
)
SELECTOR_NAMESPACES_XOR = CelRule(
    rule="!(has(self.namespaces) && size(self.namespaces) > 0 && has(self.namespaceSelector))",
    message="use either namespaces or namespaceSelector, not both",
    fieldPath=".namespaceSelector",
)


class MigrationPolicySelector(ApiModel):
    """Which VMs the policy applies to. Every part given must match; an empty selector matches every VM."""

    model_config = ConfigDict(json_schema_extra=cel(SELECTOR_NAMESPACES_XOR))

    namespaces: list[str] = Field(
        default_factory=list,
        description="Names of the namespaces whose VMs are selected. Empty: any namespace (unless "
        "namespaceSelector is given). Not together with namespaceSelector.",
        max_length=256,
        json_schema_extra=list_set(),
    )
    namespaceSelector: LabelSelector | None = Field(
        None, description="Selects namespaces by their labels. Not together with namespaces."
    )
    vmSelector: LabelSelector | None = Field(None, description="Selects VMs by their labels.")

    @model_validator(mode="after")
    def _namespaces_xor(self) -> MigrationPolicySelector:
        if self.namespaces and self.namespaceSelector is not None:
            raise ValueError(SELECTOR_NAMESPACES_XOR.message)
        return self


class AutoConverge(ApiModel):
    """How the AutoConverge rung throttles the guest's CPU."""

    model_config = ConfigDict(json_schema_extra=cel(INITIAL_WITHIN_MAX))

    initialPercent: int = Field(
        20, description="CPU throttle applied when AutoConverge starts, in percent. Default 20; 1 to 99.",
        ge=1, le=99,
    )
    stepPercent: int = Field(
        10,
        description="How much the throttle rises after each round that does not converge, in percent. "
        "Default 10; 1 to 99.",
        ge=1,
        le=99,
    )
    maxPercent: int = Field(
        99, description="The highest throttle, in percent. Default 99; 1 to 99.", ge=1, le=99
    )


class MigrationPolicySpec(ApiModel):
    """Limits and fallbacks for the migrations of the selected VMs."""

    model_config = ConfigDict(
        json_schema_extra=cel(QUICK_NEEDS_ALLOW, OUTBOUND_WITHIN_CLUSTER, THRESHOLD_WITHIN_DOWNTIME,
                              STALL_WITHIN_ROUNDS)
    )

    selector: MigrationPolicySelector = Field(
        default_factory=MigrationPolicySelector,
        description="Which VMs the policy applies to. Empty: every VM. A VM may also name a policy in "
        "spec.migration.policy, which wins over selectors.",
    )
    precedence: int = Field(
        0,
        description="When several policies select a VM, the one with the highest precedence applies "
        "(ties: the most specific selector, the one matching the most labels; then the alphabetically "
        "first name). Default 0; 0 to 1000.",
        ge=0,
        le=1000,
    )
    switchoverThresholdMs: int = Field(
        1,
        description="Switch over once the remaining dirty memory would transfer in less than this many "
        "milliseconds (Hyper-V switches over under a millisecond). Default 1; 1 to 60000; at most "
        "maxDowntimeMs.",
        ge=1,
        le=60000,
    )
    maxDowntimeMs: int = Field(
        300,
        description="The longest pause of the guest a migration may cause, in milliseconds; a VM's own "
        "spec.migration.maxDowntimeMs overrides it. Default 300 (QEMU's default); 1 to 600000.",
        ge=1,
        le=600000,
    )
    maxRounds: int = Field(
        30,
        description="Pre-copy rounds before the ladder steps down to the next strategy. Default 30; 1 to 1000.",
        ge=1,
        le=1000,
    )
    stallRounds: int = Field(
        3,
        description="Consecutive rounds in which the remaining memory does not shrink after which the "
        "migration is stalled and the ladder steps down. Default 3; 1 to 100; at most maxRounds.",
        ge=1,
        le=100,
    )
    ladder: list[MigrationStrategy] = Field(
        default_factory=lambda: [MigrationStrategy.PreCopy, MigrationStrategy.AutoConverge],
        description="Strategies to try in order when a live migration does not converge: PreCopy, "
        "AutoConverge, Quick, PostCopy. Each at most once; Quick only last and only with allowQuick; "
        "PostCopy (QEMU driver only) only last, never with Quick. When the last rung fails the migration "
        "fails and the VM stays where it was, except after a switch to PostCopy: from then on the guest "
        "runs on the target and pulls the rest, its memory split between the hosts, so if the target or "
        "the link fails before the rest arrived the guest runs nowhere (the migration fails TargetLost, "
        "the VM Failed with reason PostCopyLost, its source kept paused for a person to decide); use "
        "PostCopy only for guests that can afford that. Default [PreCopy, AutoConverge].",
        min_length=1,
        max_length=3,
        json_schema_extra={**list_atomic(), **cel(LADDER_UNIQUE, QUICK_IS_LAST, POSTCOPY_IS_LAST)},
    )
    autoConverge: AutoConverge = Field(
        default_factory=AutoConverge, description="How the AutoConverge rung throttles the guest's CPU."
    )
    allowQuick: bool = Field(
        False,
        description="Whether the ladder may end in a quick migration, pausing the guest for the whole copy "
        "of its memory. Default false: a migration that does not converge fails and the VM stays.",
    )
    bandwidthMbps: int | None = Field(
        None,
        description="Bandwidth one migration may use, in megabits per second. Unset: as much of the "
        "hosts' migrationBandwidthMbps as is free. 1 to 800000.",
        ge=1,
        le=800000,
    )
    parallelMigrationsPerCluster: int = Field(
        5,
        description="Migrations of the selected VMs that may run at once in the whole cluster (as "
        "KubeVirt's setting). Default 5; 1 to 10000.",
        ge=1,
        le=10000,
    )
    parallelOutboundMigrationsPerHost: int = Field(
        2,
        description="Migrations of the selected VMs that may leave one host at once (as KubeVirt's "
        "setting; the host's maxConcurrentMigrations also applies). Default 2; 1 to 64.",
        ge=1,
        le=64,
    )
    progressTimeoutSeconds: int = Field(
        150,
        description="A migration whose remaining memory has not shrunk for this many seconds is cancelled "
        "(as KubeVirt's progressTimeout). Default 150; 1 to 86400.",
        ge=1,
        le=86400,
    )
    completionTimeoutPerGiBSeconds: int = Field(
        150,
        description="A migration is cancelled when it takes longer than this many seconds per GiB of guest "
        "memory (as KubeVirt's completionTimeoutPerGiB: a 4 GiB guest with 150 gets 600 s). Default 150; "
        "1 to 86400.",
        ge=1,
        le=86400,
    )

    @model_validator(mode="after")
    def _consistent(self) -> MigrationPolicySpec:
        if len(set(self.ladder)) != len(self.ladder):
            raise ValueError(LADDER_UNIQUE.message)
        if MigrationStrategy.Quick in self.ladder:
            if self.ladder[-1] is not MigrationStrategy.Quick:
                raise ValueError(QUICK_IS_LAST.message)
            if not self.allowQuick:
                raise ValueError(QUICK_NEEDS_ALLOW.message)
        if MigrationStrategy.PostCopy in self.ladder and self.ladder[-1] is not MigrationStrategy.PostCopy:
            raise ValueError(POSTCOPY_IS_LAST.message)
        for rule, broken in (
            (OUTBOUND_WITHIN_CLUSTER, self.parallelOutboundMigrationsPerHost > self.parallelMigrationsPerCluster),
            (THRESHOLD_WITHIN_DOWNTIME, self.switchoverThresholdMs > self.maxDowntimeMs),
            (STALL_WITHIN_ROUNDS, self.stallRounds > self.maxRounds),
            (INITIAL_WITHIN_MAX, self.autoConverge.initialPercent > self.autoConverge.maxPercent),
        ):
            if broken:
                raise ValueError(rule.message)
        return self


class MigrationPolicyStatus(ConditionsStatus):
    """Whether the policy is in force and which VMs it governs. Conditions: Ready (True, reason
    Accepted when it governs VMs, NoVirtualMachinesSelected when it governs none), Reconciling, Stalled."""

    selectedVirtualMachines: int | None = Field(
        None,
        description="How many VMs this policy governs now: those it selects (or that name it in "
        "spec.migration.policy) and that no policy of higher precedence or more specific selector takes.",
        ge=0,
    )
    selected: list[str] = Field(
        default_factory=list,
        description="The first 20 VMs this policy governs, as namespace/name, sorted.",
        max_length=20,
        json_schema_extra=list_atomic(),
    )


class MigrationPolicy(Resource):
    """How the selected VMs are live-migrated: switchover threshold, downtime budget, round limits,
    the fallback ladder, bandwidth, concurrency and timeouts. Cluster-scoped."""

    resource: ClassVar[ResourceInfo] = ResourceInfo(
        plural="migrationpolicies",
        singular="migrationpolicy",
        scope="Cluster",
        shortNames=("vsmp",),
        printerColumns=(
            PrinterColumn("Ladder", "string", ".spec.ladder", "Strategies tried in order."),
            PrinterColumn("MaxDowntime", "integer", ".spec.maxDowntimeMs", "Downtime budget in ms."),
            PrinterColumn("Quick", "boolean", ".spec.allowQuick", "Whether quick migration may end the ladder."),
            PrinterColumn("Precedence", "integer", ".spec.precedence", "Wins over lower precedence.",
                          priority=1),
            PrinterColumn("VMs", "integer", ".status.selectedVirtualMachines", "VMs the policy applies to."),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    kind: Literal["MigrationPolicy"] = Field("MigrationPolicy", description="MigrationPolicy.")
    spec: MigrationPolicySpec = Field(
        default_factory=MigrationPolicySpec, description="Limits and fallbacks for the selected VMs' migrations."
    )
    status: MigrationPolicyStatus | None = Field(None, description="Whether the policy is in force.")

