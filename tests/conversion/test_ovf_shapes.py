"""The OVF reader on descriptors written here to reach shapes the shared test data does not have."""

from __future__ import annotations

import pytest

from vmshift.conversion import OvfError, parse_ovf
from vmshift.conversion.source import Bus

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
NS = (
    'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
    'xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData.xsd" '
    'xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData.xsd" '
    'xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vbox="http://www.virtualbox.org/ovf/machine"'
)
GiB = 1024**3


def item(rtype: int, iid: str, *fields: str, tag: str = "Item", prefix: str = "rasd", attrs: str = "") -> str:
    body = "".join(fields)
    return (f"<{tag}{attrs}><{prefix}:InstanceID>{iid}</{prefix}:InstanceID>"
            f"<{prefix}:ResourceType>{rtype}</{prefix}:ResourceType>{body}</{tag}>")


def f(name: str, value: str, prefix: str = "rasd") -> str:
    return f"<{prefix}:{name}>{value}</{prefix}:{name}>"


CPU2 = item(3, "1", f("VirtualQuantity", "2"))
MEM2G = item(4, "2", f("AllocationUnits", "byte * 2^20"), f("VirtualQuantity", "2048"))


def envelope(hardware: str, *, ns: str = OVF1, top: str = "", system_extra: str = "", name: str = "vm1") -> str:
    return (
        f'<?xml version="1.0"?><Envelope xmlns="{ns}" xmlns:ovf="{ns}" {NS}>{top}'
        f'<VirtualSystem ovf:id="{name}"><Info/><VirtualHardwareSection><Info/>{hardware}</VirtualHardwareSection>'
        f"{system_extra}</VirtualSystem></Envelope>"
    )


def test_ovf2_storage_and_ethernet_port_items_with_a_property_capacity() -> None:
    top = (
        '<References><File ovf:id="f1" ovf:href="root.vmdk"/></References>'
        '<DiskSection><Info/><Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="${disk_gb}" '
        'ovf:capacityAllocationUnits="byte * 2^30"/></DiskSection>'
        '<NetworkSection><Info/><Network ovf:name="prod"/></NetworkSection>'
    )
    hardware = (
        CPU2 + MEM2G
        + item(6, "3", f("ResourceSubType", "VirtualSCSI"), f("ElementName", "pvscsi0"))
        + item(17, "4", f("HostResource", "ovf:/disk/d1", "sasd"), f("Parent", "3", "sasd"),
               f("ElementName", "root", "sasd"), tag="StorageItem", prefix="sasd")
        + item(10, "5", f("ResourceSubType", "VMXNET3", "epasd"), f("Connection", "prod", "epasd"),
               f("ElementName", "eth0", "epasd"), tag="EthernetPortItem", prefix="epasd")
    )
    product = ('<ProductSection><Info/><Property ovf:key="disk_gb" ovf:type="int" ovf:value="40"/>'
               "</ProductSection>")
    got = parse_ovf(envelope(hardware, ns=OVF2, top=top, system_extra=product))
    assert got.ovf_version == "2.0"
    assert [(d.name, d.capacity_bytes, d.bus, d.controller) for d in got.disks] == [("root", 40 * GiB, Bus.SCSI,
                                                                                    "pvscsi0")]
    assert [(n.name, n.network, n.adapter, n.drivers) for n in got.nics] == [("eth0", "prod", "VMXNET3",
                                                                            ["vmxnet3"])]
    assert got.third_party_drivers == ["pvscsi", "vmxnet3"]


def test_uncarried_devices_become_warnings() -> None:
    hardware = (
        CPU2 + MEM2G
        + item(24, "3", f("ElementName", "video"),
               '<vmw:Config vmw:key="enable3DSupport" vmw:value="true"/>')
        + item(1, "4", f("ResourceSubType", "vmware.soundcard.hdaudio"), f("ElementName", "sound"))
        + item(22, "5", f("ElementName", "lpt1"))
        + item(23, "6", f("ResourceSubType", "vmware.usb.ehci"), f("ElementName", "usb"))
        + item(21, "7", f("ElementName", "com1"))
    )
    got = parse_ovf(envelope(hardware))
    text = "\n".join(got.warnings)
    assert "3D acceleration of InstanceID 3 'video'" in text
    assert "sound card InstanceID 4 'sound'" in text
    assert "parallel port InstanceID 5 'lpt1'" in text
    assert "USB controller InstanceID 6 'usb'" in text
    assert "serial port InstanceID 7 'com1'" in text
    assert len(got.warnings) == 5 + 1  # and: no disk


def test_bounds_are_skipped_and_memory_units_are_assumed_with_a_warning() -> None:
    hardware = (
        item(3, "1", f("VirtualQuantity", "1"), attrs=' ovf:bound="min"')
        + item(3, "1", f("VirtualQuantity", "4"))
        + item(3, "1", f("VirtualQuantity", "16"), attrs=' ovf:bound="max"')
        + item(4, "2", f("VirtualQuantity", "3072"))
    )
    got = parse_ovf(envelope(hardware))
    assert (got.cpus, got.memory_mib) == (4, 3072)
    assert any("states no AllocationUnits: read as MiB" in w for w in got.warnings)


def test_memory_in_bytes_is_rounded_up_to_mib() -> None:
    hardware = CPU2 + item(4, "2", f("AllocationUnits", "byte"), f("VirtualQuantity", str(1024**3 + 1)))
    got = parse_ovf(envelope(hardware))
    assert got.memory_mib == 1025
    assert any("rounded up to 1025 MiB" in w for w in got.warnings)


def test_configuration_items_without_deployment_options_are_ignored() -> None:
    hardware = CPU2 + MEM2G + item(10, "3", f("Connection", "x"), attrs=' ovf:configuration="big"')
    got = parse_ovf(envelope(hardware))
    assert got.nics == []
    assert any("for configuration(s) big but the descriptor offers none" in w for w in got.warnings)


def test_a_collection_must_be_narrowed_to_one_system() -> None:
    system = (f'<VirtualSystem ovf:id="{{}}"><Info/><VirtualHardwareSection><Info/>{CPU2}{MEM2G}'
              "</VirtualHardwareSection></VirtualSystem>")
    doc = (f'<Envelope xmlns="{OVF1}" xmlns:ovf="{OVF1}" {NS}><VirtualSystemCollection ovf:id="app"><Info/>'
           + system.format("web") + system.format("db") + "</VirtualSystemCollection></Envelope>")
    with pytest.raises(OvfError, match=r"2 virtual systems \(web, db\); name the one to import"):
        parse_ovf(doc)
    assert parse_ovf(doc, virtual_system="db").name == "db"
    with pytest.raises(OvfError, match="no VirtualSystem with id 'cache'"):
        parse_ovf(doc, virtual_system="cache")


def test_disk_backed_by_a_file_takes_the_file_size() -> None:
    top = '<References><File ovf:id="raw" ovf:href="disk.img" ovf:size="10737418240"/></References>'
    hardware = CPU2 + MEM2G + item(17, "3", f("HostResource", "ovf:/file/raw"))
    got = parse_ovf(envelope(hardware, top=top))
    assert [(d.capacity_bytes, d.file) for d in got.disks] == [(10 * GiB, "disk.img")]
    assert any("capacity is taken as the file size" in w for w in got.warnings)


def test_unused_disk_and_undeclared_network_are_warnings() -> None:
    top = ('<DiskSection><Info/><Disk ovf:diskId="spare" ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30"/>'
           '</DiskSection><NetworkSection><Info/><Network ovf:name="a"/></NetworkSection>')
    hardware = CPU2 + MEM2G + item(10, "3", f("Connection", "b"), f("ResourceSubType", "e1000e"))
    got = parse_ovf(envelope(hardware, top=top))
    text = "\n".join(got.warnings)
    assert "Disk 'spare' is attached to no drive" in text
    assert "connects to 'b', which the NetworkSection does not declare (a)" in text
    assert got.drivers == ["e1000e"] and got.third_party_drivers == []


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (CPU2 + CPU2.replace(">1<", ">9<") + MEM2G, "a second processor item InstanceID 9"),
        (item(3, "1", f("VirtualQuantity", "two")) + MEM2G, "VirtualQuantity 'two', not a positive whole number"),
        (CPU2 + item(4, "2", f("AllocationUnits", "hertz"), f("VirtualQuantity", "1")),
         "'hertz' is not a unit of bytes"),
        (CPU2 + MEM2G + item(17, "3"), "has no HostResource: it names no disk"),
        (CPU2 + MEM2G + item(17, "3", f("HostResource", "ovf:/disk/nope")), "names disk 'nope', which the DiskSection"),
        (CPU2 + MEM2G + item(15, "3", f("Parent", "99")), "has Parent 99, but no item has InstanceID 99"),
        (CPU2 + MEM2G + "<Item><rasd:InstanceID>3</rasd:InstanceID></Item>", "has no numeric ResourceType"),
    ],
)
def test_inconsistent_hardware_is_refused(hardware: str, expected: str) -> None:
    with pytest.raises(OvfError) as err:
        parse_ovf(envelope(hardware), source="x.ovf")
    assert expected in str(err.value)
    assert "line 1 (/Envelope/VirtualSystem/VirtualHardwareSection" in str(err.value)


def test_virtualbox_machine_details() -> None:
    vbox = (
        '<vbox:Machine ovf:required="false" name="vm1"><ovf:Info>vbox</ovf:Info><Hardware>'
        '<Display accelerate3D="true"/><Network><Adapter slot="0" enabled="true" type="virtio"/>'
        '<Adapter slot="1" enabled="false" type="Am79C973"/></Network>'
        '<UART><Port slot="0" enabled="true"/></UART><LPT><Port slot="0" enabled="false"/></LPT>'
        '<GuestProperties><GuestProperty name="/VirtualBox/GuestAdd/Version" value="6.1.38"/></GuestProperties>'
        "</Hardware></vbox:Machine>"
    )
    got = parse_ovf(envelope(CPU2 + MEM2G, ns=OVF2, system_extra=vbox))
    assert got.drivers == ["vbox-guest-additions", "virtio-net"]
    assert got.driver_evidence["vbox-guest-additions"] == "Guest Additions 6.1.38 reported in vbox:Machine"
    text = "\n".join(got.warnings)
    assert "3D acceleration (vbox:Machine Display accelerate3D)" in text
    assert "serial port (vbox:Machine UART)" in text
    assert "parallel" not in text


def test_ovf09_section_and_content_shapes() -> None:
    ns = "http://www.vmware.com/schema/ovf/1/envelope"
    doc = (
        f'<ovf:Envelope xmlns:ovf="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" {NS}>'
        '<ovf:Section xsi:type="ovf:DiskSection_Type"><ovf:Disk ovf:diskId="d" ovf:capacity="2147483648"/>'
        '</ovf:Section><ovf:Content ovf:id="old" xsi:type="ovf:VirtualSystem_Type">'
        '<ovf:Section xsi:type="ovf:VirtualHardwareSection_Type">'
        "<ovf:Item><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType>"
        "<rasd:VirtualQuantity>1</rasd:VirtualQuantity></ovf:Item>"
        "<ovf:Item><rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType>"
        "<rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>256</rasd:VirtualQuantity>"
        "</ovf:Item><ovf:Item><rasd:InstanceId>3</rasd:InstanceId><rasd:ResourceType>17</rasd:ResourceType>"
        "<rasd:HostResource>/disk/d</rasd:HostResource></ovf:Item>"
        "</ovf:Section></ovf:Content></ovf:Envelope>"
    )
    got = parse_ovf(doc)
    assert (got.name, got.ovf_version, got.cpus, got.memory_mib) == ("old", "0.9", 1, 256)
    assert [d.capacity_bytes for d in got.disks] == [2 * GiB]
