"""Physical inventories (P2V): validation, and the normalized description they become."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vmshift.conversion import MachineInventory, PhysicalInventoryError, inspect_physical
from vmshift.conversion.source import Bus, OsFamily, SourceKind

GiB = 1024**3

INVENTORY: dict[str, Any] = {
    "hostname": "db01.example.com",
    "manufacturer": "Dell Inc.",
    "model": "PowerEdge R740",
    "cpus": {"sockets": 2, "cores": 8, "threads": 2, "model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"},
    "memoryMiB": 65536,
    "disks": [
        {"name": "sda", "sizeGiB": 476.9, "bus": "SATA"},
        {"name": "sdb", "sizeGiB": 1024, "bus": "sas"},
        {"name": "sdc", "sizeGiB": 14.5, "bus": "USB"},
    ],
    "nics": [
        {"name": "eno1", "macAddress": "00:1A:2B:3C:4D:5E", "speedMbps": 1000, "driver": "e1000e"},
        {"name": "eno2", "macAddress": "00-1a-2b-3c-4d-5f", "speedMbps": 10000, "driver": "ixgbe"},
    ],
    "drivers": ["ahci", "megaraid_sas", "e1000e", "vmware-tools"],
    "os": "Windows Server 2019 Datacenter",
}


def test_inventory_becomes_a_source_machine() -> None:
    got = inspect_physical(INVENTORY)
    assert got.kind is SourceKind.Physical
    assert got.name == got.hostname == "db01.example.com"
    assert (got.manufacturer, got.model) == ("Dell Inc.", "PowerEdge R740")
    assert got.cpu_model == "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"
    assert (got.sockets, got.cores_per_socket, got.threads_per_core) == (2, 8, 2)
    assert got.cpus == 32  # one vCPU per logical processor
    assert got.memory_mib == 65536
    # sizes in GiB become whole bytes, rounded up; the USB disk stays behind
    assert [(d.name, d.capacity_bytes, d.bus) for d in got.disks] == [
        ("sda", 512067475866, Bus.SATA),  # ceil(476.9 * 2^30)
        ("sdb", 1024 * GiB, Bus.SAS),
    ]
    assert [c.bus for c in got.controllers] == [Bus.SATA, Bus.SAS]
    assert [(n.name, n.mac_address, n.speed_mbps, n.drivers) for n in got.nics] == [
        ("eno1", "00:1A:2B:3C:4D:5E", 1000, ["e1000e"]),
        ("eno2", "00-1a-2b-3c-4d-5f", 10000, ["ixgbe"]),
    ]
    # reported drivers first, then NIC drivers the list did not name
    assert got.drivers == ["ahci", "megaraid_sas", "e1000e", "vmware-tools", "ixgbe"]
    assert got.driver_evidence["ixgbe"] == "bound to NIC eno2"
    assert got.third_party_drivers == ["megaraid_sas", "vmware-tools", "ixgbe"]
    assert (got.os.name, got.os.family) == ("Windows Server 2019 Datacenter", OsFamily.Windows)
    assert any("USB disk sdc" in w for w in got.warnings)
    assert any("megaraid_sas, ixgbe" in w and "unknown to the catalog" in w for w in got.warnings)


def test_model_instance_and_mapping_read_alike() -> None:
    assert inspect_physical(MachineInventory.model_validate(INVENTORY)) == inspect_physical(INVENTORY)


def test_san_disks_are_carried_with_a_hint() -> None:
    inv = copy.deepcopy(INVENTORY)
    inv["disks"] = [{"name": "lun0", "sizeGiB": 100, "bus": "FC"}]
    got = inspect_physical(inv)
    assert got.disks[0].bus is Bus.FibreChannel
    assert any("SAN LUN" in w and "passthroughLun" in w for w in got.warnings)


def _broken(**changes: Any) -> dict[str, Any]:
    """INVENTORY with ``a__0__b=value`` meaning ``inv["a"][0]["b"] = value``."""
    inv = copy.deepcopy(INVENTORY)
    for path, value in changes.items():
        target: Any = inv
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(leaf) if leaf.isdigit() else leaf] = value
    return inv


@pytest.mark.parametrize(
    ("inventory", "expected"),
    [
        (_broken(cpus__sockets=0), "cpus.sockets: Input should be greater than or equal to 1"),
        (_broken(memoryMiB=-1), "memoryMiB: Input should be greater than or equal to 1"),
        (_broken(nics__0__macAddress="not-a-mac"), "nics.0.macAddress: String should match pattern"),
        (_broken(disks__1__bus="floppy"), "disks.1.bus: Input should be"),
        (_broken(disks__1__sizeGiB=0), "disks.1.sizeGiB: Input should be greater than 0"),
        (_broken(disks__1__name="sda"), "disk sda listed more than once"),
        (_broken(nics__1__macAddress="00:1a:2b:3c:4d:5e"), "MAC address 00:1a:2b:3c:4d:5e listed more than once"),
        (_broken(hostname=""), "hostname: String should have at least 1 character"),
        (_broken(colour="blue"), "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_inventory_is_refused_naming_the_field(inventory: dict[str, Any], expected: str) -> None:
    with pytest.raises(PhysicalInventoryError) as err:
        inspect_physical(inventory)
    assert str(err.value).startswith("physical inventory refused: ")
    assert expected in str(err.value)


def test_missing_fields_are_named() -> None:
    with pytest.raises(PhysicalInventoryError) as err:
        inspect_physical({"hostname": "x"})
    for name in ("cpus", "memoryMiB", "os"):
        assert f"{name}: Field required" in str(err.value)


def test_the_api_shape_is_accepted_as_is() -> None:
    """The controller passes spec.source.physical of a VirtualMachineImport straight through."""
    vmimport = pytest.importorskip("vmshift.api.vmimport")
    inv = _broken(disks__1__bus="SAS")  # the API takes the bus names exactly; this reader is lenient
    api = vmimport.PhysicalInventory.model_validate(inv)
    assert inspect_physical(api.model_dump(mode="json", exclude_none=True)) == inspect_physical(INVENTORY)


def test_defaults_one_socket_one_thread() -> None:
    got = inspect_physical({"hostname": "h", "cpus": {"cores": 6}, "memoryMiB": 4096, "os": "Debian 12"})
    assert (got.cpus, got.sockets, got.threads_per_core, got.cpu_model) == (6, 1, 1, None)
    assert got.os.family is OsFamily.Linux
    assert got.disks == [] and any("no disk" in w for w in got.warnings)
