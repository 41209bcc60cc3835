"""What the plugin's commands decide: parsing flags, the objects to create, which migration a name
means, exit statuses. Pure: no I/O.

Every bad input raises :class:`UsageError` with a sentence naming what is wrong and what is accepted.
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import yaml

from vmshift.api.common import API_VERSION
from vmshift.api.labels import VM_LABEL
from vmshift.api.reasons import MigrationMode, MigrationPhase

#: Who created the object, as kubectl plugins conventionally say it.
CREATED_BY = {"app.kubernetes.io/created-by": "kubectl-vmshift"}

#: Exit statuses. 2 is also what argparse uses for a bad command line.
EXIT_OK = 0
EXIT_FAILED = 1  # the migration, drain or import did not succeed (or was cancelled)
EXIT_USAGE = 2  # bad input: unknown VM or host, a malformed flag, a refused file
EXIT_INTERRUPTED = 130  # Ctrl-C, and the migration was cancelled on request


class UsageError(ValueError):
    """A bad input, with a message that names it and says what is accepted."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, None: 1.0}


def parse_downtime_ms(text: str) -> int:
    """``50ms``, ``0.2s``, ``1m`` or a bare number of milliseconds, as whole milliseconds (1 to 600000)."""
    match = _DURATION.match(text)
    if match is None:
        raise UsageError(f"--max-downtime {text!r} is not a duration: write it like 50ms, 0.5s or 2m")
    value = round(float(match.group(1)) * _UNIT_MS[match.group(2)])
    if not 1 <= value <= 600_000:
        raise UsageError(f"--max-downtime {text!r} is {value} ms: it must be between 1 ms and 10 minutes (600000 ms)")
    return value


def parse_mode(text: str) -> MigrationMode:
    for mode in MigrationMode:
        if mode.value.lower() == text.lower():
            return mode
    raise UsageError(f"--mode {text!r} is not a migration mode: use Auto, Live or Quick")


def migration_body(vm: str, namespace: str, *, target: str | None, mode: MigrationMode,
                   max_downtime_ms: int | None, reason: str | None = None) -> dict[str, Any]:
    """The VirtualMachineMigration ``kubectl vmshift migrate`` creates (named after the VM plus a suffix)."""
    spec: dict[str, Any] = {"vmName": vm, "mode": mode.value}
    if target:
        spec["targetHost"] = target
    if max_downtime_ms is not None:
        spec["maxDowntimeMs"] = max_downtime_ms
    spec["reason"] = reason or "kubectl vmshift migrate"
    return {
        "apiVersion": API_VERSION, "kind": "VirtualMachineMigration",
        "metadata": {"generateName": f"{vm[:240]}-", "namespace": namespace, "labels": {VM_LABEL: vm, **CREATED_BY}},
        "spec": spec,
    }


def phase_of(migration: Mapping[str, Any]) -> MigrationPhase:
    return MigrationPhase((migration.get("status") or {}).get("phase") or MigrationPhase.Pending)


def created_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def migrations_of(migrations: Iterable[Mapping[str, Any]], vm: str) -> list[Mapping[str, Any]]:
    """The migrations of ``vm`` (by spec.vmName), oldest first."""
    return sorted((m for m in migrations if (m.get("spec") or {}).get("vmName") == vm), key=created_key)


def active_migration(migrations: Iterable[Mapping[str, Any]], vm: str) -> Mapping[str, Any] | None:
    """The newest unfinished migration of ``vm``, if any."""
    unfinished = [m for m in migrations_of(migrations, vm) if not phase_of(m).finished]
    return unfinished[-1] if unfinished else None


def cancel_target(name: str, namespace: str, migrations: Sequence[Mapping[str, Any]], vm_exists: bool) -> str:
    """The migration ``kubectl vmshift cancel NAME`` deletes: NAME itself when a migration has that name,
    else the unfinished migration of the VM NAME. UsageError says why there is none."""
    for m in migrations:
        if m["metadata"]["name"] == name:
            if phase_of(m).finished:
                raise UsageError(f"migration {namespace}/{name} already ended ({phase_of(m).value}): nothing to "
                                 f"cancel")
            return name
    active = active_migration(migrations, name)
    if active is not None:
        return str(active["metadata"]["name"])
    if vm_exists:
        raise UsageError(f"VirtualMachine {namespace}/{name} is not migrating: nothing to cancel "
                         f"(see kubectl vmshift history {name})")
    raise UsageError(f"there is no VirtualMachine or VirtualMachineMigration named {name} in namespace {namespace}")


def exit_status(phase: MigrationPhase) -> int:
    return EXIT_OK if phase is MigrationPhase.Succeeded else EXIT_FAILED


@dataclass(frozen=True)
class DrainOutcome:
    """Where a drain stands as the plugin reports it: ``done`` (nothing left to do) and the exit status."""

    done: bool
    status: int
    state: str


def drain_outcome(host: Mapping[str, Any], *, since: str | None) -> DrainOutcome:
    """Whether the drain of ``host`` has ended: Completed (0) or Blocked (1); a drain that started before
    ``since`` (an earlier one, still in status) does not count."""
    drain = (host.get("status") or {}).get("drain") or {}
    state = str(drain.get("state") or "")
    started = str(drain.get("startedAt") or "")
    current = bool(drain.get("trigger")) and (since is None or started >= since)
    if current and state == "Completed":
        return DrainOutcome(True, EXIT_OK, state)
    if current and state == "Blocked":
        return DrainOutcome(True, EXIT_FAILED, state)
    return DrainOutcome(False, EXIT_OK, state or "Pending")


# --- import -----------------------------------------------------------------------------------------

_DNS_LABEL_CHARS = re.compile(r"[^a-z0-9-]+")


def dns_name(text: str) -> str:
    """A DNS label made from a file name: lower case, other characters as '-', at most 63."""
    name = _DNS_LABEL_CHARS.sub("-", text.lower()).strip("-")[:63].strip("-")
    if not name:
        raise UsageError(f"cannot make a name from {text!r}: pass --name")
    return name


def choose_volume(hosts: Iterable[Mapping[str, Any]]) -> str:
    """The shared volume the most hosts mount (ties: by name): where an import writes its disks by default."""
    counts: Counter[str] = Counter()
    for h in hosts:
        counts.update(((h.get("spec") or {}).get("storage") or {}).get("sharedVolumes") or ())
    if not counts:
        raise UsageError("no Host mounts a shared volume to write the imported disks to: pass --volume")
    return sorted(counts, key=lambda v: (-counts[v], v))[0]


@dataclass(frozen=True)
class ImportRequest:
    """What ``kubectl vmshift import`` creates: a ConfigMap holding the file (None for an inventory,
    which goes inline) and the VirtualMachineImport."""

    configmap: dict[str, Any] | None
    vm_import: dict[str, Any]
    kind: str  # "OVF", "OVA" or "physical inventory"


def import_request(filename: str, data: bytes, *, namespace: str, name: str | None, volume: str,
                   compatibility: bool = False) -> ImportRequest:
    """The objects that import ``filename`` (an .ovf, an .ova or a physical inventory in YAML)."""
    # Imported here: the API's import models and the conversion code are heavy, and only import needs them.
    from vmshift.api.vmimport import MAX_OVF_BYTES
    from vmshift.controllers.importsteps import is_tar

    path = PurePath(filename)
    suffix = path.suffix.lower()
    vm_name = dns_name(name or path.stem)
    key = dns_name(path.stem) + suffix if suffix in (".ovf", ".ova") else ""
    source: dict[str, Any]
    configmap: dict[str, Any] | None = None
    meta = {"name": f"{vm_name}-source", "namespace": namespace, "labels": dict(CREATED_BY)}
    if suffix == ".ovf":
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise UsageError(f"{filename} is not text: an OVF descriptor is XML (a packaged VM is an .ova)") from None
        if len(data) > MAX_OVF_BYTES:
            raise UsageError(f"{filename} is {len(data)} bytes: an OVF descriptor may be at most {MAX_OVF_BYTES}")
        configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {key: text}}
        source, kind = {"ovf": {"configMapRef": {"name": meta["name"], "key": key}}}, "OVF"
    elif suffix == ".ova":
        if not is_tar(data):
            raise UsageError(f"{filename} is not an OVA: an OVA is an uncompressed tar archive")
        if len(data) > MAX_OVF_BYTES - 4096:
            raise UsageError(f"{filename} is {len(data)} bytes: a ConfigMap holds at most about 1 MiB; import the "
                             f"descriptor (.ovf) alone instead")
        configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                     "binaryData": {key: base64.b64encode(data).decode()}}
        source, kind = {"ovf": {"configMapRef": {"name": meta["name"], "key": key}}}, "OVA"
    elif suffix in (".yaml", ".yml", ".json"):
        source, kind = {"physical": inventory(filename, data)}, "physical inventory"
    else:
        raise UsageError(f"{filename}: cannot tell what to import from {suffix or 'no extension'}; give an .ovf "
                         f"descriptor, an .ova package or a physical inventory (.yaml)")
    body = {
        "apiVersion": API_VERSION, "kind": "VirtualMachineImport",
        "metadata": {"name": vm_name, "namespace": namespace, "labels": dict(CREATED_BY)},
        "spec": {"source": source, "target": {"name": vm_name, "volume": volume, "compatibility": compatibility}},
    }
    return ImportRequest(configmap, body, kind)


def inventory(filename: str, data: bytes) -> dict[str, Any]:
    """A physical inventory from YAML (the inventory itself, or under a top-level ``physical`` key),
    checked against the API's model so a mistake is named before anything is created."""
    from pydantic import ValidationError

    from vmshift.api.vmimport import PhysicalInventory

    try:
        loaded = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise UsageError(f"{filename} is not valid YAML: {exc}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("physical"), dict):
        loaded = loaded["physical"]
    if not isinstance(loaded, dict):
        raise UsageError(f"{filename} does not hold a physical inventory (a mapping with hostname, cpus, memoryMiB, "
                         f"disks, nics, os)")
    try:
        PhysicalInventory.model_validate(loaded)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'inventory'}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"{filename} is not a valid physical inventory: {problems}") from None
    return dict(loaded)


def release_annotation(host: str, host_status: Mapping[str, Any], policy: Mapping[str, Any] | None) -> str:
    """The annotation that releases the remediation holding ``host`` (its RemediationPolicy's
    spec.release.annotation). UsageError when nothing holds the host or its policy releases by itself."""
    from vmshift.api.remediationpolicy import ReleaseMode, RemediationPolicySpec

    remediation = host_status.get("remediation") or {}
    name = remediation.get("policy")
    if not name:
        raise UsageError(f"no remediation holds {host}: there is nothing to release (kubectl vmshift uncordon "
                         f"{host} returns a cordoned host to service)")
    if policy is None:
        raise UsageError(f"the RemediationPolicy {name} holding {host} no longer exists; the operator ends its "
                         f"remediation by itself")
    release = RemediationPolicySpec.model_validate(policy.get("spec") or {}).release
    if release.mode is not ReleaseMode.Annotation:
        raise UsageError(f"RemediationPolicy {name} releases {host} by itself once its alerts stay resolved for "
                         f"{release.holdSeconds} s (release.mode {release.mode.value}); an annotation does not end it")
    return release.annotation
