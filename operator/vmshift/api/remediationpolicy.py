"""The RemediationPolicy kind (cluster-scoped): which health alerts lead to which action on the host they name.

Pure: no I/O. Models only; the remediation engine matches alerts and sensor signals against them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from vmshift.api.common import (
    AGE_COLUMN,
    QUALIFIED_NAME,
    READY_COLUMN,
    ApiModel,
    CelRule,
    ConditionsStatus,
    PrinterColumn,
    Resource,
    ResourceInfo,
    cel,
    list_map,
    list_set,
)
from vmshift.api.labels import RELEASE_ANNOTATION

#: The annotation a person sets on a Host to end a remediation when release.mode is Annotation.


class RemediationAction(StrEnum):
    """What a remediation does to the host an alert names."""

    #: Cordon the host: no new VMs and no inbound migrations; VMs already there stay.
    Quarantine = "Quarantine"
    #: Move the VMs at or above priorityThreshold away, most important first, and quarantine the host.
    EvacuateCritical = "EvacuateCritical"
    #: Put the host in maintenance: drain every VM.
    Maintenance = "Maintenance"


class ReleaseMode(StrEnum):
    """What ends a remediation."""

    #: The alerts resolve and stay resolved for holdSeconds.
    AlertResolved = "AlertResolved"
    #: A person sets the release annotation on the Host.
    Annotation = "Annotation"


MATCH_NOT_EMPTY = CelRule(
    rule="has(self.alertname) || has(self.severity) || (has(self.labels) && size(self.labels) > 0)",
    message="match needs at least one of alertname, severity or labels; an empty match would act on every alert",
)
EVACUATE_NEEDS_THRESHOLD = CelRule(
    rule="self.action != 'EvacuateCritical' || has(self.priorityThreshold)",
    message="priorityThreshold is required when action is EvacuateCritical",
    fieldPath=".priorityThreshold",
    reason="FieldValueRequired",
)
CORRELATION_NEEDS_TWO = CelRule(
    rule="size(self.signals) >= 2",
    message="correlation needs at least two signals; for a single signal use match alone",
    fieldPath=".signals",
)


class AlertMatch(ApiModel):
    """Which alerts the policy reacts to: every field given must match the alert's labels."""

    model_config = ConfigDict(json_schema_extra=cel(MATCH_NOT_EMPTY))

    alertname: str | None = Field(
        None,
        description="The alert's alertname label: one the hosts' agents raise (FanFailure, PowerSupplyFailure, "
        "HighTemperature, CorrectedMemoryErrors) or one Alertmanager sends.",
        min_length=1,
        max_length=253,
    )
    severity: str | None = Field(None, description="The alert's severity label, e.g. critical.",
                                 min_length=1, max_length=63)
    labels: dict[str, str] = Field(
        default_factory=dict, description="Other labels the alert must carry with exactly these values."
    )
    hostLabel: str = Field(
        "host",
        description="The alert label whose value is the name of the Host to act on. Default host.",
        min_length=1,
        max_length=317,
        pattern=QUALIFIED_NAME,
    )

    @model_validator(mode="after")
    def _not_empty(self) -> AlertMatch:
        if self.alertname is None and self.severity is None and not self.labels:
            raise ValueError(MATCH_NOT_EMPTY.message)
        return self


class Correlation(ApiModel):
    """Act only when several signals about one host arrive close together."""

    model_config = ConfigDict(json_schema_extra=cel(CORRELATION_NEEDS_TWO))

    signals: list[str] = Field(
        description="Signals that must all be active on the host: alertnames from Alertmanager, or sensor "
        "kinds the host's agent reports unhealthy (Fan, PowerSupply, Temperature, CorrectedMemoryErrors). "
        "At least 2, at most 16.",
        max_length=16,
        json_schema_extra=list_set(),
    )
    windowSeconds: int = Field(
        300,
        description="All signals must have started within this many seconds of each other. Default 300; "
        "1 to 86400.",
        ge=1,
        le=86400,
    )

    @model_validator(mode="after")
    def _two_signals(self) -> Correlation:
        if len(set(self.signals)) < 2:
            raise ValueError(CORRELATION_NEEDS_TWO.message)
        return self


class Release(ApiModel):
    """What ends the remediation and returns the host to service."""

    mode: ReleaseMode = Field(
        ReleaseMode.AlertResolved,
        description="AlertResolved: the alerts resolve and stay resolved for holdSeconds. Annotation: a "
        "person sets the annotation on the Host (to any value). Default AlertResolved.",
    )
    holdSeconds: int = Field(
        300,
        description="With AlertResolved, how long the alerts must stay resolved, in seconds. Default 300; "
        "0 to 604800.",
        ge=0,
        le=604800,
    )
    annotation: str = Field(
        RELEASE_ANNOTATION,
        description=f"With Annotation, the Host annotation that releases it. Default {RELEASE_ANNOTATION}.",
        min_length=1,
        max_length=317,
        pattern=QUALIFIED_NAME,
    )


class RemediationPolicySpec(ApiModel):
    """Which alerts lead to which action, and what ends it."""

    model_config = ConfigDict(json_schema_extra=cel(EVACUATE_NEEDS_THRESHOLD))

    match: AlertMatch = Field(description="Which alerts the policy reacts to.")
    action: RemediationAction = Field(
        description="What to do to the host the alert names: Quarantine (no new VMs, no inbound "
        "migrations), EvacuateCritical (move VMs with priority at or above priorityThreshold, highest "
        "first, and quarantine) or Maintenance (drain every VM)."
    )
    priorityThreshold: int | None = Field(
        None,
        description="With EvacuateCritical, VMs whose spec.priority is at least this are moved. Required "
        "for EvacuateCritical; 0 to 1000000.",
        ge=0,
        le=1000000,
    )
    correlation: Correlation | None = Field(
        None, description="Act only when several signals arrive together. Unset: the matched alert alone acts."
    )
    debounceSeconds: int = Field(
        60,
        description="A signal must stay active this many seconds before the action starts, so flapping "
        "alerts do nothing. Default 60; 0 to 86400.",
        ge=0,
        le=86400,
    )
    cooldownSeconds: int = Field(
        600,
        description="After a remediation on a host ends, the policy does not act on that host again for "
        "this many seconds. Default 600; 0 to 604800.",
        ge=0,
        le=604800,
    )
    release: Release = Field(default_factory=Release, description="What ends the remediation.")
    suspend: bool = Field(
        False, description="When true the policy matches nothing and starts no action. Default false."
    )

    @model_validator(mode="after")
    def _threshold_for_evacuation(self) -> RemediationPolicySpec:
        if self.action is RemediationAction.EvacuateCritical and self.priorityThreshold is None:
            raise ValueError(EVACUATE_NEEDS_THRESHOLD.message)
        return self


class ActiveRemediation(ApiModel):
    """A host this policy is acting on."""

    host: str = Field(description="The Host acted on.", min_length=1, max_length=63)
    since: datetime | None = Field(None, description="When the action started.")
    alerts: list[str] = Field(default_factory=list, description="The alertnames and signals behind it.",
                              json_schema_extra=list_set())


class RemediationPolicyStatus(ConditionsStatus):
    """What the policy is doing. Conditions: Ready (accepted), Reconciling, Stalled."""

    active: list[ActiveRemediation] = Field(
        default_factory=list,
        description="Hosts the policy is acting on now.",
        json_schema_extra=list_map("host"),
    )
    lastTriggeredAt: datetime | None = Field(None, description="When the policy last started an action.")


class RemediationPolicy(Resource):
    """Turns hardware health alerts into actions on the host they name: quarantine, evacuate the
    critical VMs, or drain. Cluster-scoped."""

    resource: ClassVar[ResourceInfo] = ResourceInfo(
        plural="remediationpolicies",
        singular="remediationpolicy",
        scope="Cluster",
        shortNames=("vsrp",),
        printerColumns=(
            PrinterColumn("Action", "string", ".spec.action", "What the policy does to the host."),
            PrinterColumn("Alert", "string", ".spec.match.alertname", "The alertname it reacts to."),
            PrinterColumn("Severity", "string", ".spec.match.severity", "The severity it reacts to."),
            PrinterColumn("Threshold", "integer", ".spec.priorityThreshold", "Lowest priority evacuated."),
            PrinterColumn("Release", "string", ".spec.release.mode", "What ends it.", priority=1),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    kind: Literal["RemediationPolicy"] = Field("RemediationPolicy", description="RemediationPolicy.")
    spec: RemediationPolicySpec = Field(description="Which alerts lead to which action, and what ends it.")
    status: RemediationPolicyStatus | None = Field(None, description="What the policy is doing.")
