"""Status merge patches checked against the kind's status model before they are sent.

Pure: no I/O. The API server prunes a status key its schema does not know, silently: a misspelt
key would simply never appear. Every status patch the operator writes goes through
:func:`status_patch`, which parses it with the kind's status model (unknown keys are refused at
every depth, values are validated) and dumps it back the way the CRD stores it. A ``None`` value is
kept: in a merge patch it clears the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from vmshift.api.common import ConditionsStatus
from vmshift.api.host import HostStatus
from vmshift.api.migration import VirtualMachineMigrationStatus
from vmshift.api.migrationpolicy import MigrationPolicyStatus
from vmshift.api.remediationpolicy import RemediationPolicyStatus
from vmshift.api.virtualmachine import VirtualMachineStatus
from vmshift.api.vmimport import VirtualMachineImportStatus

#: The status model of each kind, by plural.
STATUS_MODELS: dict[str, type[ConditionsStatus]] = {
    "hosts": HostStatus,
    "virtualmachines": VirtualMachineStatus,
    "virtualmachinemigrations": VirtualMachineMigrationStatus,
    "migrationpolicies": MigrationPolicyStatus,
    "remediationpolicies": RemediationPolicyStatus,
    "virtualmachineimports": VirtualMachineImportStatus,
}


class StatusPatchError(ValueError):
    """A status patch holds a key its model does not have, or a value the model refuses."""


def status_patch(plural: str, patch: Mapping[str, Any]) -> dict[str, Any]:
    """``patch`` parsed by the status model of ``plural`` and dumped in the API's form (pure).

    Raises :class:`StatusPatchError` naming each unknown key or refused value.
    """
    model = STATUS_MODELS.get(plural)
    if model is None:
        raise StatusPatchError(f"no status model for {plural!r}")
    unknown = sorted(set(patch) - set(model.model_fields))
    if unknown:
        raise StatusPatchError(f"{model.__name__} has no field(s) {', '.join(unknown)}")
    present = {key: value for key, value in patch.items() if value is not None}
    try:
        parsed = model.model_validate(present)
    except ValidationError as exc:
        where = "; ".join(f"status.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise StatusPatchError(f"{model.__name__} refuses the patch: {where}") from None
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return {key: dumped.get(key) if key in present else None for key in patch}
