"""Hypothesis strategies for every object the CRDs in crds/ admit, built from their OpenAPI schemas.

Each CRD's ``openAPIV3Schema`` (the one the API server validates with) becomes a strategy
(``schema_strategy``): types, enums, patterns, lengths, bounds, list-map keys; objects hold only
the properties they name (the API server prunes the rest), and after generation the schema's
``default``s are filled in the way the API server defaults a stored object. The CEL rules
(``x-kubernetes-validations``) are not JSON Schema: an object is kept only if the API's pydantic
model, which states the same rules, accepts its spec, so what comes out is what a user can create.
"""

from __future__ import annotations

import copy
import functools
import string
from datetime import UTC
from pathlib import Path
from typing import Any

import yaml
from hypothesis import assume
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from vmshift.api.host import HostSpec
from vmshift.api.migration import VirtualMachineMigrationSpec
from vmshift.api.migrationpolicy import MigrationPolicySpec
from vmshift.api.remediationpolicy import RemediationPolicySpec
from vmshift.api.virtualmachine import VirtualMachineSpec
from vmshift.api.vmimport import VirtualMachineImportSpec

CRDS = Path(__file__).resolve().parents[2] / "crds"

#: plural -> (kind, namespaced, the spec's model that states the CEL rules)
KINDS: dict[str, tuple[str, bool, type[BaseModel]]] = {
    "hosts": ("Host", False, HostSpec),
    "virtualmachines": ("VirtualMachine", True, VirtualMachineSpec),
    "virtualmachinemigrations": ("VirtualMachineMigration", True, VirtualMachineMigrationSpec),
    "migrationpolicies": ("MigrationPolicy", False, MigrationPolicySpec),
    "remediationpolicies": ("RemediationPolicy", False, RemediationPolicySpec),
    "virtualmachineimports": ("VirtualMachineImport", True, VirtualMachineImportSpec),
}


@functools.cache
def openapi(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"{plural}.vmshift.io.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**6) | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)


def schema_strategy(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Every value an OpenAPI v3 structural schema (as the API server reads it) admits, leaning to the
    edges: lengths and bounds at their limits, optional fields absent or present. CEL rules
    (``x-kubernetes-validations``) are not applied here; ``objects`` checks them through the model.

    (hypothesis-jsonschema would do this for JSON Schema, but its 0.23.1 uses Hypothesis internals
    that the pinned Hypothesis no longer has.)"""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if node.get("x-kubernetes-int-or-string"):
        return st.integers(0, 2**31) | st.text(max_size=12)
    kind = node.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = node.get("minimum"), node.get("maximum")
        if low is not None and node.get("exclusiveMinimum"):
            low += 1
        return st.integers(low if low is not None else -(2**53), high if high is not None else 2**53)
    if kind == "number":
        return st.floats(node.get("minimum"), node.get("maximum"), allow_nan=False, allow_infinity=False,
                         exclude_min=bool(node.get("exclusiveMinimum")) and node.get("minimum") is not None)
    if kind == "string" and node.get("format") == "date-time":  # the API server checks RFC 3339
        return st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z"))
    if kind == "string":
        low, high = node.get("minLength", 0), node.get("maxLength")
        if "pattern" in node:
            strategy = st.from_regex(node["pattern"], fullmatch=True)
            return strategy.filter(lambda v: low <= len(v) and (high is None or len(v) <= high))
        return st.text(min_size=low, max_size=min(high if high is not None else 40, 40) if low <= 40 else low)
    if kind == "array":
        items = schema_strategy(node.get("items") or {})
        low = node.get("minItems", 0)
        high = min(node.get("maxItems", 4), max(low, 4))
        keys = node.get("x-kubernetes-list-map-keys")
        if keys:
            return st.lists(items, min_size=low, max_size=high,
                            unique_by=lambda v: tuple(str(v.get(k)) for k in keys))
        if node.get("x-kubernetes-list-type") == "set":
            return st.lists(items, min_size=low, max_size=high, unique_by=lambda v: repr(v))
        return st.lists(items, min_size=low, max_size=high)
    if kind == "object" or "properties" in node:
        props = node.get("properties") or {}
        required = set(node.get("required") or ())
        extra = node.get("additionalProperties")
        if not props and isinstance(extra, dict):
            return st.dictionaries(st.text(min_size=1, max_size=20), schema_strategy(extra), max_size=3)
        if not props and node.get("x-kubernetes-preserve-unknown-fields"):
            return st.dictionaries(st.text(max_size=8), JSON, max_size=3)
        return st.fixed_dictionaries(
            {k: schema_strategy(v) for k, v in props.items() if k in required},
            optional={k: schema_strategy(v) for k, v in props.items() if k not in required})
    return JSON


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill in ``default``s as the API server does for a stored object (objects that are present only)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in list(value):
                if key not in props:
                    value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


@functools.cache
def _part_strategy(plural: str, part: str) -> st.SearchStrategy[Any]:
    return schema_strategy(openapi(plural)["properties"][part])


DNS_LABEL = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
LABELS = st.dictionaries(st.text(string.ascii_lowercase + "./-", min_size=1, max_size=20),
                         st.text(string.ascii_letters + "-_.", max_size=20), max_size=4)


@st.composite
def objects(draw: st.DrawFn, plural: str, *, with_status: bool = True) -> dict[str, Any]:
    """One object of ``plural`` as the API server would store it: metadata, a spec the schema and its
    CEL rules admit (defaults filled in) and, if ``with_status``, any status the schema admits."""
    kind, namespaced, model = KINDS[plural]
    schema = openapi(plural)
    spec = apply_defaults(schema["properties"]["spec"], draw(_part_strategy(plural, "spec")))
    try:
        model.model_validate(spec)
    except ValidationError:
        assume(False)  # a CEL rule refuses it: the API server would not store it
    name = draw(DNS_LABEL)
    meta: dict[str, Any] = {"name": name, "uid": draw(st.uuids()).hex, "labels": draw(LABELS),
                            "generation": draw(st.integers(1, 2**31)),
                            "creationTimestamp": "2026-01-01T00:00:00Z"}
    if namespaced:
        meta["namespace"] = draw(DNS_LABEL)
    body: dict[str, Any] = {"apiVersion": "vmshift.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}
    if with_status and "status" in schema["properties"]:
        status = draw(_part_strategy(plural, "status") | st.just({}))
        body["status"] = apply_defaults(schema["properties"]["status"], status)
    return body
