"""OVA packages built with tarfile in tmp_path: digests verified, unsafe members refused."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import pytest

from vmshift.conversion import OvaError, OvaLimits, OvfError, read_ova

DISK = b"\x00disk image bytes\x00" * 1000
ISO = b"iso image" * 100


def vmware_ovf(ovf_dir: Path) -> bytes:
    return (ovf_dir / "vmware.ovf").read_bytes()  # its References name input.vmdk


def manifest(files: dict[str, bytes], algorithm: str = "SHA256") -> bytes:
    return "".join(
        f"{algorithm}({name})= {hashlib.new(algorithm.lower(), data).hexdigest()}\n" for name, data in files.items()
    ).encode()


def build(path: Path, members: list[tuple[str, bytes]], extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return path


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
def test_good_package(tmp_path: Path, ovf_dir: Path, algorithm: str) -> None:
    ovf = vmware_ovf(ovf_dir)
    files = {"vmw.ovf": ovf, "input.vmdk": DISK}
    ova = build(tmp_path / "vmw.ova", [("vmw.ovf", ovf), ("vmw.mf", manifest(files, algorithm)),
                                      ("input.vmdk", DISK)])
    got = read_ova(ova)
    assert (got.name, got.cpus, got.memory_mib) == ("vmw", 2, 1536)
    assert got.third_party_drivers == ["virtio-scsi", "vmci", "vmware-tools"]
    assert got.package is not None
    assert got.package.descriptor == "vmw.ovf" and got.package.manifest == "vmw.mf"
    verified = {m.name: m.digest for m in got.package.members if m.verified}
    digest = hashlib.new(algorithm.lower(), DISK).hexdigest()
    assert verified == {"vmw.ovf": f"{algorithm}:{hashlib.new(algorithm.lower(), ovf).hexdigest()}",
                        "input.vmdk": f"{algorithm}:{digest}"}
    assert got.warnings == []


def test_stream_and_configuration(tmp_path: Path, ovf_dir: Path) -> None:
    ovf = (ovf_dir / "csr1000v.ovf").read_bytes()
    files = {"csr.ovf": ovf, "input.vmdk": DISK, "input.iso": ISO}
    ova = build(tmp_path / "csr.ova", [("csr.ovf", ovf), ("csr.mf", manifest(files)), ("input.vmdk", DISK),
                                       ("input.iso", ISO)])
    with ova.open("rb") as stream:
        got = read_ova(stream, configuration="4CPU-8GB")
    assert (got.cpus, got.memory_mib, got.configuration) == (4, 8192, "4CPU-8GB")


def test_no_manifest_is_a_warning(tmp_path: Path, ovf_dir: Path) -> None:
    ova = build(tmp_path / "a.ova", [("a.ovf", vmware_ovf(ovf_dir)), ("input.vmdk", DISK)])
    got = read_ova(ova)
    assert any("no manifest" in w for w in got.warnings)
    assert got.package is not None and not any(m.verified for m in got.package.members)


def test_bad_digest_is_refused(tmp_path: Path, ovf_dir: Path) -> None:
    ovf = vmware_ovf(ovf_dir)
    mf = manifest({"a.ovf": ovf, "input.vmdk": DISK})
    tampered = DISK.replace(b"disk", b"DISK", 1)
    ova = build(tmp_path / "a.ova", [("a.ovf", ovf), ("a.mf", mf), ("input.vmdk", tampered)])
    with pytest.raises(OvaError) as err:
        read_ova(ova)
    message = str(err.value)
    assert message.startswith(f"OVA package {ova} refused: member input.vmdk does not match the manifest")
    assert hashlib.sha256(tampered).hexdigest() in message
    assert hashlib.sha256(DISK).hexdigest() in message


def test_tampered_descriptor_is_refused_before_it_is_parsed(tmp_path: Path, ovf_dir: Path) -> None:
    ovf = vmware_ovf(ovf_dir)
    mf = manifest({"a.ovf": ovf, "input.vmdk": DISK})
    ova = build(tmp_path / "a.ova", [("a.ovf", ovf.replace(b">1536<", b">99999<")), ("a.mf", mf),
                                     ("input.vmdk", DISK)])
    with pytest.raises(OvaError, match=re.escape("member a.ovf does not match the manifest")):
        read_ova(ova)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../etc/cron.d/evil", "climbs out of the package with '..'"),
        ("disks/../../evil.vmdk", "climbs out of the package with '..'"),
        ("/etc/passwd", "is an absolute path"),
        ("C:/Windows/evil.dll", "is an absolute path"),
        ("..\\evil.vmdk", "holds a backslash"),
    ],
)
def test_traversal_member_is_refused(tmp_path: Path, ovf_dir: Path, name: str, why: str) -> None:
    ova = build(tmp_path / "a.ova", [("a.ovf", vmware_ovf(ovf_dir)), ("input.vmdk", DISK), (name, b"x")])
    with pytest.raises(OvaError) as err:
        read_ova(ova)
    assert f"member {name!r} {why}" in str(err.value)


def test_links_are_refused(tmp_path: Path, ovf_dir: Path) -> None:
    link = tarfile.TarInfo("input.vmdk")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/shadow"
    ova = build(tmp_path / "a.ova", [("a.ovf", vmware_ovf(ovf_dir))], extra=[link])
    with pytest.raises(OvaError, match=re.escape("member 'input.vmdk' is a symbolic link; an OVA holds only regular")):
        read_ova(ova)


def test_oversized_members_are_refused(tmp_path: Path, ovf_dir: Path) -> None:
    ova = build(tmp_path / "a.ova", [("a.ovf", vmware_ovf(ovf_dir)), ("input.vmdk", DISK)])
    with pytest.raises(OvaError, match=f"member 'input.vmdk' holds {len(DISK)} bytes, more than the limit of 1000"):
        read_ova(ova, limits=OvaLimits(max_member_bytes=1000))


def test_oversized_descriptor_is_refused_before_reading(tmp_path: Path) -> None:
    big = b"<!--" + b" " * (9 * 1024 * 1024) + b"-->"
    ova = build(tmp_path / "a.ova", [("a.ovf", big)])
    with pytest.raises(OvaError, match=r"the descriptor a.ovf holds \d+ bytes, more than the limit of 8388608"):
        read_ova(ova)


def test_missing_disk_data_is_refused(tmp_path: Path, ovf_dir: Path) -> None:
    ova = build(tmp_path / "a.ova", [("a.ovf", vmware_ovf(ovf_dir))])
    with pytest.raises(OvaError, match=re.escape("disk 'Hard disk 1' refers to file 'input.vmdk', which the package")):
        read_ova(ova)


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([("a.vmdk", DISK)], "holds no .ovf descriptor"),
        ([("a.ovf", b"<x/>"), ("b.ovf", b"<x/>")], "holds 2 .ovf descriptors"),
        ([("a.ovf", b"<x/>"), ("a.mf", b"MD5(a.ovf)= 00\n")], "a.mf line 1 is not 'SHA256(file)= digest'"),
        ([("a.ovf", b"<x/>"), ("a.mf", b"SHA256(a.ovf)= abc\n")], "a SHA256 digest has 64 hex digits, not 3"),
        ([("a.ovf", b"<x/>"), ("a.mf", f"SHA1(../a.ovf)= {'0' * 40}".encode())], "file name '../a.ovf' climbs"),
    ],
)
def test_malformed_packages(tmp_path: Path, members: list[tuple[str, bytes]], expected: str) -> None:
    with pytest.raises(OvaError, match=re.escape(expected)):
        read_ova(build(tmp_path / "a.ova", members))


def test_hostile_descriptor_inside_a_package_is_refused(tmp_path: Path) -> None:
    xxe = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Envelope>&e;</Envelope>'
    with pytest.raises(OvfError, match="external entity 'e' pointing at 'file:///etc/passwd'"):
        read_ova(build(tmp_path / "a.ova", [("a.ovf", xxe)]))


def test_not_a_tar(tmp_path: Path) -> None:
    path = tmp_path / "a.ova"
    path.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(OvaError, match="not a readable tar archive"):
        read_ova(path)


def test_oversized_pax_header_is_refused_before_tarfile_reads_it(tmp_path: Path, ovf_dir: Path) -> None:
    path = tmp_path / "a.ova"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        ovf = vmware_ovf(ovf_dir)
        info = tarfile.TarInfo("a.ovf")
        info.size = len(ovf)
        info.pax_headers = {"comment": "x" * 5000}
        tar.addfile(info, io.BytesIO(ovf))
    with pytest.raises(OvaError, match=r"a tar metadata entry at byte 0 holds 50\d\d bytes, more than the limit"):
        read_ova(path, limits=OvaLimits(max_header_bytes=4096))


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(OvaError, match="cannot be read: No such file or directory"):
        read_ova(tmp_path / "nope.ova")


TiB = 1024**4


def sparse_ova(ovf: bytes, declared: int) -> bytes:
    """An OVA whose disk is a GNU sparse member (PAX 1.0): a few bytes stored, ``declared`` bytes long,
    with a manifest that asks for its digest. Small enough to sit in a ConfigMap."""
    stored = b"real bytes"
    sparse_map = f"1\n0\n{len(stored)}\n".encode().ljust(512, b"\0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("a.ovf", ovf), ("a.mf", manifest({"input.vmdk": b"never hashed"}))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        disk = tarfile.TarInfo("GNUSparseFile.0/input.vmdk")
        disk.size = len(sparse_map) + len(stored)
        disk.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "input.vmdk",
                            "GNU.sparse.realsize": str(declared)}
        tar.addfile(disk, io.BytesIO(sparse_map + stored))
    return buf.getvalue()


def test_a_sparse_member_is_refused_without_being_hashed(ovf_dir: Path) -> None:
    """4 TiB declared in a few KiB: tarfile would hand the hash terabytes of zeros (hours of CPU)."""
    data = sparse_ova(vmware_ovf(ovf_dir), 4 * TiB)
    assert len(data) < 64 * 1024
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # the archive really declares 4 TiB
        assert tar.getmember("input.vmdk").issparse() and tar.getmember("input.vmdk").size == 4 * TiB
    with pytest.raises(OvaError, match=r"member 'input.vmdk' is a sparse file \(it declares 4398046511104 bytes"):
        read_ova(io.BytesIO(data), limits=OvaLimits(max_member_bytes=8 * TiB))


def test_a_member_that_claims_more_than_the_archive_holds_is_refused(tmp_path: Path, ovf_dir: Path) -> None:
    ova = build(tmp_path / "a.ova", [("a.ovf", vmware_ovf(ovf_dir)), ("input.vmdk", DISK)])
    data = bytearray(ova.read_bytes())
    data = data[: data.index(DISK[:64]) + 1024]  # cut inside the disk: its header still says the full size
    with pytest.raises(OvaError, match=r"member 'input.vmdk' declares 18000 bytes, but the archive ends 1024 bytes"):
        read_ova(io.BytesIO(bytes(data)))
