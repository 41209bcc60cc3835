"""V2V/P2V conversion (read a foreign machine, plan its import). Pure: no Kubernetes, no network.

The readers read only the file or data they are given. The import controller calls
``read_ovf``/``parse_ovf``/``read_ova``/``inspect_physical`` to get a ``SourceMachine``, then
``plan_conversion``, ``vm_spec`` and ``plan_report``.
"""

from vmshift.conversion.ova import OvaError, OvaLimits, read_ova
from vmshift.conversion.ovf import OvfError, parse_ovf, read_ovf, read_ovf_stream
from vmshift.conversion.physical import (
    MachineInventory,
    PhysicalInventoryError,
    inspect_physical,
    parse_inventory,
)
from vmshift.conversion.plan import (
    ConversionPlan,
    ConversionTarget,
    StepName,
    plan_conversion,
    plan_report,
    vm_spec,
)
from vmshift.conversion.safexml import XmlLimits
from vmshift.conversion.source import OvfDescriptor, PhysicalDescriptor, SourceMachine

__all__ = [
    "ConversionPlan",
    "ConversionTarget",
    "MachineInventory",
    "OvaError",
    "OvaLimits",
    "OvfDescriptor",
    "OvfError",
    "PhysicalDescriptor",
    "PhysicalInventoryError",
    "SourceMachine",
    "StepName",
    "XmlLimits",
    "inspect_physical",
    "parse_inventory",
    "parse_ovf",
    "plan_conversion",
    "plan_report",
    "read_ova",
    "read_ovf",
    "read_ovf_stream",
    "vm_spec",
]
