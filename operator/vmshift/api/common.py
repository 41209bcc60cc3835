"""Building blocks shared by every vmshift API kind: the base model, conditions, references, selectors.

Pure: no I/O. These models are the single source of the CRD schemas (``crdgen`` reads them), so
every field carries the sentence ``kubectl explain`` prints. CEL rules that the API server
enforces are attached here as data (:class:`CelRule`); the models check the same rules in Python
so that the operator and the tests see the same errors as ``kubectl apply``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GROUP = "vmshift.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: A DNS-1123 label: what Kubernetes accepts as a name inside a namespace, a label value, a port name.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1123 subdomain: what Kubernetes accepts as an object name.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A qualified name (optionally prefixed): label keys, annotation keys, condition types.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


# --- CEL rules as data -----------------------------------------------------------------------------


#: The ``reason`` a CEL rule may report: it picks the error's wording ("Invalid value", "Required value"...).
CelReason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"]


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` entry: a CEL expression the API server checks on apply.

    ``fieldPath`` (relative to the object the rule sits on, e.g. ``.workload.workingSetMiB``)
    makes the API server report the error on that field instead of on the object;
    ``messageExpression`` (CEL returning a string) lets the message name the values involved, with
    ``message`` as its fallback.
    """

    rule: str
    message: str
    fieldPath: str | None = None
    reason: CelReason | None = None
    messageExpression: str | None = None

    def schema(self) -> dict[str, str]:
        entry = {"rule": self.rule, "message": self.message}
        if self.messageExpression is not None:
            entry["messageExpression"] = self.messageExpression
        if self.fieldPath is not None:
            entry["fieldPath"] = self.fieldPath
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry


def cel(*rules: CelRule) -> dict[str, Any]:
    """JSON-schema extras carrying CEL rules, for ``ConfigDict(json_schema_extra=...)`` or ``Field``."""
    return {"x-kubernetes-validations": [r.schema() for r in rules]}


def list_map(*keys: str) -> dict[str, Any]:
    """JSON-schema extras for a list whose items are unique by ``keys`` (merged per item by SSA)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def list_set() -> dict[str, Any]:
    """JSON-schema extras for a list of unique scalars whose order carries no meaning."""
    return {"x-kubernetes-list-type": "set"}


def list_atomic() -> dict[str, Any]:
    """JSON-schema extras for a list replaced as a whole (order matters; one owner)."""
    return {"x-kubernetes-list-type": "atomic"}


def merge_extras(*extras: dict[str, Any]) -> dict[str, Any]:
    """Combine several JSON-schema extras; CEL rule lists are concatenated."""
    merged: dict[str, Any] = {}
    for extra in extras:
        for key, value in extra.items():
            if key == "x-kubernetes-validations":
                merged[key] = [*merged.get(key, []), *value]
            else:
                merged[key] = value
    return merged


def exactly_one(*present: bool) -> bool:
    """True when exactly one of the flags is set (the Python twin of the CEL 'one of' rules)."""
    return sum(1 for p in present if p) == 1


# --- base models -----------------------------------------------------------------------------------


class ApiModel(BaseModel):
    """Base of every part of a vmshift resource: camelCase names as in the API, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=False)

    def to_api(self) -> dict[str, Any]:
        """The JSON form the API server stores: unset optional fields left out, enums as strings."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry: a column ``kubectl get`` shows."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    jsonPath: str
    description: str
    priority: int = 0
    format: str | None = None

    def schema(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.jsonPath,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        if self.format:
            column["format"] = self.format
        return column


READY_COLUMN = PrinterColumn(
    "Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Whether the Ready condition is True."
)
AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since the object was created.")


@dataclass(frozen=True)
class ResourceInfo:
    """How a kind is served: its plural, scope and how ``kubectl`` names and shows it."""

    plural: str
    singular: str
    scope: Literal["Namespaced", "Cluster"]
    shortNames: tuple[str, ...]
    printerColumns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = ("vmshift",)
    #: Extra CEL rules on the whole object (e.g. on metadata.name, the only metadata CEL may read).
    rootRules: tuple[CelRule, ...] = ()


class ObjectMeta(BaseModel):
    """The standard object metadata, as far as vmshift reads it; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str | None = Field(None, description="Name of the object, unique in its namespace (or cluster).")
    namespace: str | None = Field(None, description="Namespace of the object; unset for cluster-scoped kinds.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels, used by selectors.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    generation: int | None = Field(None, description="Sequence number of the spec, set by the API server.")
    uid: str | None = Field(None, description="Unique id of the object, set by the API server.")
    resourceVersion: str | None = Field(None, description="Version of the stored object.")
    creationTimestamp: datetime | None = Field(None, description="When the object was created.")
    deletionTimestamp: datetime | None = Field(None, description="When deletion was requested.")
    finalizers: list[str] = Field(default_factory=list, description="Finalizers that hold deletion.")


class Resource(ApiModel):
    """Base of the top-level kinds: apiVersion, kind and metadata as in every Kubernetes object.

    Subclasses declare ``spec`` and ``status`` and a :class:`ResourceInfo` in ``resource``.
    """

    model_config = ConfigDict(extra="ignore")

    resource: ClassVar[ResourceInfo]

    apiVersion: str = Field(API_VERSION, description="Versioned schema of this representation of an object.")
    kind: str = Field(description="The REST resource this object represents.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")


# --- conditions ------------------------------------------------------------------------------------


ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType(StrEnum):
    """Condition types vmshift writes. Ready, Reconciling and Stalled follow kstatus on every kind."""

    Ready = "Ready"
    Reconciling = "Reconciling"
    Stalled = "Stalled"
    # Host
    Schedulable = "Schedulable"
    HardwareHealthy = "HardwareHealthy"
    Draining = "Draining"
    # VirtualMachine
    Placed = "Placed"
    Migratable = "Migratable"
    #: Compatibility mode: whether the guest sees the fleet's current baseline (False: restart pending).
    ProcessorBaseline = "ProcessorBaseline"


class Condition(ApiModel):
    """One aspect of the object's state, in the form of metav1.Condition."""

    type: str = Field(
        description="Type of the condition in CamelCase, e.g. Ready, Reconciling, Stalled, Schedulable.",
        max_length=316,
        pattern=QUALIFIED_NAME,
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        description="A CamelCase word saying why the condition has its status; tools may alert on it.",
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    )
    message: str = Field(
        "",
        description="A sentence for people: what happened, to which objects, and what to do about it.",
        max_length=32768,
    )
    observedGeneration: int | None = Field(
        None, description="The metadata.generation of the object this condition was computed from.", ge=0
    )
    lastTransitionTime: datetime = Field(
        description="When the status last changed (not the reason or message), in RFC 3339 UTC."
    )


class ConditionsStatus(ApiModel):
    """Status fields every kind shares: observedGeneration and kstatus conditions."""

    observedGeneration: int | None = Field(
        None,
        description="The metadata.generation the operator last acted on. When it is below "
        "metadata.generation the status describes an older spec.",
        ge=0,
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Conditions in metav1.Condition form, one per type: Ready, Reconciling (work under "
        "way) and Stalled (cannot progress), plus kind-specific types. Reconciling and Stalled are there "
        "only while True (kstatus reads their absence as False).",
        max_length=32,
        json_schema_extra=list_map("type"),
    )


# --- references and selectors ----------------------------------------------------------------------


class ObjectReference(ApiModel):
    """A reference to another object by kind, namespace and name."""

    apiVersion: str | None = Field(None, description="API version of the referent, e.g. vmshift.io/v1alpha1.")
    kind: str | None = Field(None, description="Kind of the referent, e.g. VirtualMachine.")
    name: str = Field(description="Name of the referent.", min_length=1, max_length=253)
    namespace: str | None = Field(
        None, description="Namespace of the referent; unset for cluster-scoped kinds.", max_length=63
    )
    uid: str | None = Field(None, description="UID of the referent, to tell apart objects reusing a name.")


class SecretKeyReference(ApiModel):
    """A key in a Secret in a named namespace."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str = Field(description="Namespace of the Secret.", min_length=1, max_length=63, pattern=DNS_LABEL)
    key: str = Field(
        "token", description="Key in the Secret's data that holds the value. Defaults to token.",
        min_length=1, max_length=253,
    )


class ConfigMapKeyReference(ApiModel):
    """A key in a ConfigMap in the same namespace as the referring object."""

    name: str = Field(description="Name of the ConfigMap.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(description="Key in the ConfigMap's data that holds the value.", min_length=1, max_length=253)


class SelectorOperator(StrEnum):
    """How a label selector requirement compares a label with its values."""

    In = "In"
    NotIn = "NotIn"
    Exists = "Exists"
    DoesNotExist = "DoesNotExist"


VALUES_MATCH_OPERATOR = CelRule(
    rule="(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
    message="values must be non-empty when operator is In or NotIn, and empty when it is Exists or "
    "DoesNotExist",
    fieldPath=".values",
)


class LabelSelectorRequirement(ApiModel):
    """One expression of a label selector: a key, an operator and values."""

    model_config = ConfigDict(json_schema_extra=cel(VALUES_MATCH_OPERATOR))

    key: str = Field(description="The label key the requirement applies to.", min_length=1, max_length=317,
                     pattern=QUALIFIED_NAME)
    operator: SelectorOperator = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] = Field(
        default_factory=list,
        description="The values for In and NotIn (non-empty); must be empty for Exists and DoesNotExist.",
        max_length=64,
        json_schema_extra=list_atomic(),
    )

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        if (self.operator in (SelectorOperator.In, SelectorOperator.NotIn)) != bool(self.values):
            raise ValueError(VALUES_MATCH_OPERATOR.message)
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        return Requirement(self.key, self.operator, frozenset(self.values)).matches(labels)


class LabelSelector(ApiModel):
    """Selects objects by labels: every matchLabels pair and every expression must hold. Empty selects all."""

    matchLabels: dict[str, str] = Field(
        default_factory=dict, description="Labels that must be present with exactly these values."
    )
    matchExpressions: list[LabelSelectorRequirement] = Field(
        default_factory=list,
        description="Requirements on labels, all of which must hold.",
        max_length=32,
        json_schema_extra=list_atomic(),
    )

    def selector(self) -> Selector:
        """This selector as the frozen :class:`Selector` the decisions match with."""
        return Selector(
            tuple(sorted(self.matchLabels.items())),
            tuple(Requirement(e.key, e.operator, frozenset(e.values)) for e in self.matchExpressions),
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with ``labels`` is selected (pure; same semantics as Kubernetes)."""
        return self.selector().matches(labels)


@dataclass(frozen=True)
class Requirement:
    """One label requirement with Kubernetes' semantics: ``In`` needs the key with one of the values,
    ``NotIn`` holds when the key is absent or has none of them, ``Exists``/``DoesNotExist`` look at
    the key only."""

    key: str
    operator: SelectorOperator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is SelectorOperator.Exists:
            return self.key in labels
        if self.operator is SelectorOperator.DoesNotExist:
            return self.key not in labels
        found = self.key in labels and labels[self.key] in self.values
        return found if self.operator is SelectorOperator.In else not found

    def describe(self) -> str:
        """The requirement as ``kubectl get -l`` writes it: ``k in (a,b)``, ``k notin (a)``, ``k``, ``!k``."""
        values = ",".join(sorted(self.values))
        return {
            SelectorOperator.In: f"{self.key} in ({values})",
            SelectorOperator.NotIn: f"{self.key} notin ({values})",
            SelectorOperator.Exists: self.key,
            SelectorOperator.DoesNotExist: f"!{self.key}",
        }[self.operator]


@dataclass(frozen=True)
class Selector:
    """The one label-selector matcher (pure, hashable): every ``match_labels`` pair and every
    requirement must hold, as in Kubernetes; the empty selector selects everything.

    Every selector in vmshift (MigrationPolicy's vmSelector and namespaceSelector, a VM's
    placement.hostSelector, a RemediationPolicy's alert labels) is matched by this class.
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def of(cls, selector: LabelSelector | None) -> Selector:
        """The matcher of an API selector; None (unset) selects everything."""
        return selector.selector() if selector is not None else EVERYTHING

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Selector:
        """A selector of matchLabels only."""
        return cls(tuple(sorted(labels.items())))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.requirements

    @property
    def size(self) -> int:
        """How many terms the selector has: how specific it is."""
        return len(self.match_labels) + len(self.requirements)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.unmet(labels) == []

    def unmet(self, labels: Mapping[str, str]) -> list[str]:
        """The terms ``labels`` fail, as ``kubectl get -l`` writes them (empty: selected)."""
        failed = [f"{k}={v}" for k, v in self.match_labels if labels.get(k) != v]
        return failed + [r.describe() for r in self.requirements if not r.matches(labels)]

    def unmet_keys(self, labels: Mapping[str, str]) -> list[str]:
        """The label keys of the terms ``labels`` fail, sorted, each once."""
        keys = {k for k, v in self.match_labels if labels.get(k) != v}
        return sorted(keys | {r.key for r in self.requirements if not r.matches(labels)})

    def describe(self) -> str:
        """The whole selector as ``kubectl get -l`` writes it; ``everything`` when empty."""
        terms = [f"{k}={v}" for k, v in self.match_labels] + [r.describe() for r in self.requirements]
        return ", ".join(terms) or "everything"


#: The empty selector: selects every object.
EVERYTHING = Selector()
