"""The OVF reader over every real-world descriptor of the shared test corpus (testdata/ovf), checked in full."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmshift.conversion import OvfError, parse_ovf, read_ovf, read_ovf_stream
from vmshift.conversion.source import Bus, MediaKind, OsFamily, OvfDescriptor

GiB = 1024**3


@dataclass
class Expected:
    name: str
    version: str
    cpus: int
    memory_mib: int
    disks: list[tuple[str, int, Bus, str, str]]  # name, bytes, bus, controller, file
    nics: list[tuple[str, str, str]]  # name, network, adapter
    drivers: list[str]
    remove: list[str]
    os: tuple[str, OsFamily, int]
    family: str | None
    configuration: str | None = None
    configurations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # substrings, one per expected warning
    media: list[tuple[str, MediaKind, str | None]] = field(default_factory=list)


VALID = {
    "vmware.ovf": Expected(
        name="vmw", version="1.x", cpus=2, memory_mib=1536,
        disks=[("Hard disk 1", 1 * GiB, Bus.SCSI, "SCSI controller 0", "input.vmdk")],
        nics=[(f"Network adapter {i}", "lanethernet0", "E1000") for i in range(1, 5)],
        # "virtio lsilogic" SCSI, two IDE, the VMCI device, E1000 NICs, vmw:Config tools.* settings
        drivers=["virtio-scsi", "lsilogic", "ide", "vmci", "e1000", "vmware-tools"],
        remove=["virtio-scsi", "vmci", "vmware-tools"],
        os=("Red Hat Enterprise Linux 6 (64-bit)", OsFamily.Linux, 80), family="vmx-08",
        warnings=[],  # its video card has enable3DSupport=false: nothing lost
    ),
    "ubuntu.2.0.ovf": Expected(
        name="ubuntu", version="2.0", cpus=1, memory_mib=512,
        disks=[("disk1", 8589934592, Bus.SATA, "sataController0", "ubuntu.2.0-disk1.vmdk")],
        nics=[("Ethernet adapter on 'NAT'", "NAT", "E1000")],
        drivers=["ide", "ahci", "e1000", "vbox-guest-additions"],
        remove=["vbox-guest-additions"],
        os=("Ubuntu_64", OsFamily.Linux, 94), family="virtualbox-2.2",
        warnings=["USB controller InstanceID 6", "sound card InstanceID 7"],
        media=[("cdrom1", MediaKind.CD, None)],
    ),
    "v0.9.ovf": Expected(
        name="v0.9", version="0.9", cpus=1, memory_mib=8192,
        disks=[("disk1", 1073741824, Bus.SCSI, "scsiController0", "input.vmdk")],
        nics=[("ethernet0", "bridged", "PCNet32")],
        drivers=["lsilogic", "ide", "pcnet"],
        remove=[],
        os=("other26xLinux64Guest", OsFamily.Linux, 107), family="vmx-04",
        warnings=["USB controller InstanceID 3"],
        media=[("cdrom1", MediaKind.CD, None)],
    ),
    "csr1000v.ovf": Expected(
        name="Cisco CSR 1000V Cloud Services Router", version="1.x", cpus=1, memory_mib=4096,
        disks=[("Hard Drive", 1 * GiB, Bus.SCSI, "SCSI Controller 0", "input.vmdk")],
        nics=[(f"GigabitEthernet{i}", f"GigabitEthernet{i}", "VMXNET3") for i in (1, 2, 3)],
        drivers=["virtio-scsi", "lsilogic", "ide", "vmxnet3", "virtio-net"],
        remove=["virtio-scsi", "vmxnet3", "virtio-net"],
        os=("Cisco IOS-XE Software", OsFamily.Linux, 100),
        family="vmx-08 vmx-09 vmx-10 vmx-11 Cisco:Internal:VMCloud-01",
        configuration="1CPU-4GB", configurations=["1CPU-4GB", "2CPU-4GB", "4CPU-4GB", "4CPU-8GB"],
        warnings=["serial port InstanceID 9", "serial port InstanceID 10", "holds 'input.iso'"],
        media=[("CD-ROM 1", MediaKind.CD, "input.iso"), ("CD-ROM 2", MediaKind.CD, None)],
    ),
    "input.ovf": Expected(
        name="test", version="1.x", cpus=4, memory_mib=4096,
        disks=[("Hard Drive", 1 * GiB, Bus.SCSI, "SCSI Controller 0", "input.vmdk")],
        nics=[(f"GigabitEthernet{i}", "VM Network", "VMXNET3") for i in (1, 2, 3)],
        drivers=["lsilogic", "ide", "vmxnet3"],
        remove=["vmxnet3"],
        os=("DEVELOPMENT IMAGE", OsFamily.Linux, 100), family="vmx-07 vmx-08",
        configuration="4CPU-4GB-3NIC", configurations=["1CPU-1GB-1NIC", "2CPU-2GB-1NIC", "4CPU-4GB-3NIC"],
        warnings=["serial port InstanceID 9", "serial port InstanceID 10", "holds 'input.iso'"],
        media=[("CD-ROM 1", MediaKind.CD, "input.iso"), ("CD-ROM 2", MediaKind.CD, None)],
    ),
}
REFUSED = {"minimal.ovf", "invalid.ovf"}


def test_every_shared_descriptor_is_covered(ovf_dir: Path) -> None:
    present = {p.name for p in ovf_dir.glob("*.ovf")}
    assert present == set(VALID) | REFUSED, "a descriptor in the shared test data has no expectations here"


@pytest.mark.parametrize("filename", sorted(VALID))
def test_valid_descriptor(ovf_dir: Path, filename: str) -> None:
    want = VALID[filename]
    got = read_ovf(ovf_dir / filename)
    assert isinstance(got, OvfDescriptor)
    assert got.name == want.name
    assert got.ovf_version == want.version
    assert (got.cpus, got.memory_mib) == (want.cpus, want.memory_mib)
    assert [(d.name, d.capacity_bytes, d.bus, d.controller, d.file) for d in got.disks] == want.disks
    assert [(n.name, n.network, n.adapter) for n in got.nics] == want.nics
    assert got.drivers == want.drivers
    assert got.third_party_drivers == want.remove
    assert set(got.driver_evidence) == set(got.drivers)
    assert (got.os.name, got.os.family, got.os.cim_id) == want.os
    assert got.hardware_family == want.family
    assert got.configuration == want.configuration
    assert got.configurations == want.configurations
    assert len(got.warnings) == len(want.warnings), got.warnings
    for fragment, warning in zip(want.warnings, got.warnings, strict=True):
        assert fragment in warning
    assert [(m.name, m.kind, m.file) for m in got.media] == want.media


@pytest.mark.parametrize("filename", sorted(VALID))
def test_bytes_text_and_stream_read_alike(ovf_dir: Path, filename: str) -> None:
    path = ovf_dir / filename
    from_file = read_ovf(path)
    assert parse_ovf(path.read_bytes()) == from_file
    assert parse_ovf(path.read_text(encoding="utf-8")) == from_file
    with path.open("rb") as stream:
        assert read_ovf_stream(stream) == from_file


def test_vmware_evidence_names_what_betrays_each_driver(ovf_dir: Path) -> None:
    got = read_ovf(ovf_dir / "vmware.ovf")
    assert "vmware.vmci" in got.driver_evidence["vmci"]
    assert "tools.afterPowerOn" in got.driver_evidence["vmware-tools"]
    assert "E1000" in got.driver_evidence["e1000"]
    assert [c.bus for c in got.controllers] == [Bus.SCSI, Bus.IDE, Bus.IDE]
    assert got.controllers[0].drivers == ["virtio-scsi", "lsilogic"]


def test_virtualbox_machine_section_betrays_guest_additions(ovf_dir: Path) -> None:
    got = read_ovf(ovf_dir / "ubuntu.2.0.ovf")
    assert "vbox:Machine" in got.driver_evidence["vbox-guest-additions"]
    # the vbox:Machine USB controller and audio adapter repeat the items: one warning each
    assert sum("USB" in w for w in got.warnings) == 1
    assert sum("sound" in w for w in got.warnings) == 1


@pytest.mark.parametrize(
    ("configuration", "cpus", "memory_mib"),
    [(None, 1, 4096), ("1CPU-4GB", 1, 4096), ("2CPU-4GB", 2, 4096), ("4CPU-4GB", 4, 4096), ("4CPU-8GB", 4, 8192)],
)
def test_csr1000v_configurations(ovf_dir: Path, configuration: str | None, cpus: int, memory_mib: int) -> None:
    got = read_ovf(ovf_dir / "csr1000v.ovf", configuration=configuration)
    assert (got.cpus, got.memory_mib) == (cpus, memory_mib)
    assert got.configuration == (configuration or "1CPU-4GB")
    assert got.default_configuration == "1CPU-4GB"
    assert len(got.nics) == 3  # the NICs are unconditional


@pytest.mark.parametrize(
    ("configuration", "cpus", "memory_mib", "nics"),
    [(None, 4, 4096, 3), ("1CPU-1GB-1NIC", 1, 1024, 1), ("2CPU-2GB-1NIC", 2, 2048, 1), ("4CPU-4GB-3NIC", 4, 4096, 3)],
)
def test_input_configurations(ovf_dir: Path, configuration: str | None, cpus: int, memory_mib: int,
                              nics: int) -> None:
    got = read_ovf(ovf_dir / "input.ovf", configuration=configuration)
    assert (got.cpus, got.memory_mib, len(got.nics)) == (cpus, memory_mib, nics)
    assert [n.name for n in got.nics] == [f"GigabitEthernet{i}" for i in range(1, nics + 1)]


def test_csr1000v_product_section_leaves_passwords_out(ovf_dir: Path) -> None:
    product = read_ovf(ovf_dir / "csr1000v.ovf").product
    assert product is not None
    assert product.product == "Cisco CSR 1000V Cloud Services Router"
    assert product.vendor == "Cisco Systems, Inc."
    assert product.version == "03.17.01.S.156-1.S1-std"
    assert product.properties["mgmt-interface"] == "GigabitEthernet1"
    assert product.properties["license"] == "ax"
    assert "login-password" not in product.properties
    assert "privilege-password" not in product.properties


def test_unknown_configuration_is_refused_naming_the_offered_ones(ovf_dir: Path) -> None:
    with pytest.raises(OvfError) as err:
        read_ovf(ovf_dir / "csr1000v.ovf", configuration="8CPU-16GB")
    assert "'8CPU-16GB' is not offered" in str(err.value)
    assert "1CPU-4GB, 2CPU-4GB, 4CPU-4GB, 4CPU-8GB" in str(err.value)


def test_minimal_descriptor_is_refused_with_nothing_to_size(ovf_dir: Path) -> None:
    with pytest.raises(OvfError) as err:
        read_ovf(ovf_dir / "minimal.ovf")
    message = str(err.value)
    assert "minimal.ovf" in message
    assert "no processor item (ResourceType 3)" in message
    assert "no memory item (ResourceType 4)" in message
    assert "nothing to size" in message
    assert "line 6" in message and "VirtualHardwareSection" in message


def test_invalid_descriptor_is_refused_naming_each_problem(ovf_dir: Path) -> None:
    with pytest.raises(OvfError) as err:
        read_ovf(ovf_dir / "invalid.ovf")
    problems = err.value.problems
    assert len(problems) == 4, problems
    disk_file, host_resource, parent, memory = problems
    # the Disk 'flash2' points at a File that References does not declare
    assert "line 10" in disk_file and "'flash2'" in disk_file and "names no File in References" in disk_file
    # the disk drive's HostResource is a bare file name, not ovf:/disk/<id>
    assert "line 41" in host_resource and "'nonexistent.vmdk'" in host_resource
    assert "neither ovf:/disk/<diskId> nor ovf:/file/<fileId>" in host_resource
    # the CD-ROM's Parent is the NIC (InstanceID 27), not a controller
    assert "line 49" in parent and "Parent 27" in parent and "not a disk controller" in parent
    # the default configuration (the first: none is marked) has no memory item
    assert "'myprofile'" in memory and "no memory item" in memory
    assert str(err.value).startswith(f"OVF descriptor {ovf_dir / 'invalid.ovf'} refused: 4 problems")
