"""The OVA reader (descriptor, manifest, disks in a tar). Pure: no I/O except reading the given archive.

Members are read, never extracted, and each one is checked before it is used: names that could
climb out of a directory (``../``, absolute paths, drive letters, backslashes), links and device
files, duplicates, too many members, members larger than the limits and oversized tar metadata
(which tarfile would read into memory whole) are refused, and so are sparse members (a few bytes
in the archive that tarfile would expand into terabytes of zeros to hash) and members that claim
more bytes than the archive holds after them: what is hashed is bounded by the archive's size.
Parsing is CPU work: callers on an event loop run it in a thread (``asyncio.to_thread``). The
manifest's SHA-1/SHA-256/SHA-512 digests are verified for every listed member present, streaming
in chunks. The result is the ``OvfDescriptor`` of the
package, with ``package`` saying which members were verified.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from vmshift.conversion.ovf import OvfError, parse_ovf
from vmshift.conversion.safexml import DEFAULT_LIMITS, XmlLimits
from vmshift.conversion.source import OvfDescriptor, PackageInfo, PackageMember

MiB = 1024 * 1024
_DIGESTS = {"SHA1": 40, "SHA256": 64, "SHA512": 128}
_MANIFEST_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)\s*$")


@dataclass(frozen=True)
class OvaLimits:
    """How much an OVA may hold before it is refused."""

    max_members: int = 1000
    #: Largest member of any kind (a disk image), in bytes.
    max_member_bytes: int = 4 * 1024**4
    max_manifest_bytes: int = 1 * MiB
    #: Largest tar metadata entry (a pax header or GNU long name), which tarfile reads into memory whole.
    max_header_bytes: int = 1 * MiB
    #: Bytes hashed at a time while verifying digests.
    chunk_bytes: int = 1 * MiB


DEFAULT_OVA_LIMITS = OvaLimits()


class OvaError(OvfError):
    """The package was refused; ``problems`` lists each reason."""

    what = "OVA package"


def _unsafe(name: str) -> str | None:
    """Why a member or file name is unsafe, or None."""
    if not name or "\x00" in name:
        return "is empty or holds a NUL character"
    if "\\" in name:
        return "holds a backslash"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "climbs out of the package with '..'"
    return None


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def read_ova(archive: str | os.PathLike[str] | IO[bytes], *, configuration: str | None = None,
             virtual_system: str | None = None, limits: OvaLimits = DEFAULT_OVA_LIMITS,
             xml_limits: XmlLimits = DEFAULT_LIMITS) -> OvfDescriptor:
    """The descriptor of the OVA at ``archive`` (a path or a seekable binary stream), its manifest verified."""
    label = os.fspath(archive) if isinstance(archive, str | os.PathLike) else getattr(archive, "name", "(stream)")
    label = str(label)
    try:
        opened = open(archive, "rb") if isinstance(archive, str | os.PathLike) else _borrowed(archive)
    except OSError as exc:
        raise OvaError(label, [f"cannot be read: {exc.strerror or exc}"]) from None
    with opened as stream:
        try:
            archive_bytes = stream.seek(0, os.SEEK_END)
            _check_headers(stream, limits, label)
            stream.seek(0)
            tar = tarfile.open(fileobj=stream, mode="r:")
        except (tarfile.TarError, OSError) as exc:
            raise OvaError(label, [f"not a readable tar archive (an OVA is an uncompressed tar): {exc}"]) from None
        with tar:
            return _read(tar, label, configuration, virtual_system, limits, xml_limits, archive_bytes)


@contextmanager
def _borrowed(stream: IO[bytes]) -> Iterator[IO[bytes]]:
    """A caller's stream, used but left open."""
    yield stream


def _check_headers(stream: IO[bytes], limits: OvaLimits, label: str) -> None:
    """Walk the tar headers (512-byte blocks, data skipped) before tarfile does, refusing metadata
    entries that tarfile would read into memory whole (pax headers, GNU long names) when too large."""
    position, entries = 0, 0
    while True:
        stream.seek(position)
        block = stream.read(512)
        if len(block) < 512 or block.count(0) == 512:
            return
        entries += 1
        if entries > 3 * limits.max_members:  # a member may carry a pax header and a long name
            raise OvaError(label, [f"the package holds more than {limits.max_members} members"])
        size = _header_size(block[124:136])
        if size is None:
            return  # not a tar header: tarfile says what is wrong
        if block[156:157] in (b"x", b"g", b"L", b"K") and size > limits.max_header_bytes:
            raise OvaError(label, [f"a tar metadata entry at byte {position} holds {size} bytes, more than the "
                                   f"limit of {limits.max_header_bytes} bytes"])
        position += 512 + (size + 511) // 512 * 512


def _header_size(field: bytes) -> int | None:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


def _read(tar: tarfile.TarFile, label: str, configuration: str | None, virtual_system: str | None,
          limits: OvaLimits, xml_limits: XmlLimits, archive_bytes: int) -> OvfDescriptor:
    problems: list[str] = []
    warnings: list[str] = []
    members: dict[str, tarfile.TarInfo] = {}
    order: list[str] = []
    count = 0
    try:
        for info in tar:
            count += 1
            if count > limits.max_members:
                raise OvaError(label, [f"the package holds more than {limits.max_members} members"])
            name = _normal(info.name)
            why = _unsafe(name)
            if why:
                problems.append(f"member {info.name!r} {why}")
                continue
            if info.isdir():
                continue
            if not info.isreg():
                kind = "a symbolic link" if info.issym() else "a hard link" if info.islnk() else "a device or fifo"
                problems.append(f"member {info.name!r} is {kind}; an OVA holds only regular files")
                continue
            if info.issparse():
                problems.append(f"member {info.name!r} is a sparse file (it declares {info.size} bytes but stores "
                                f"only part of them); an OVA's disks are stored whole")
                continue
            if info.size > limits.max_member_bytes:
                problems.append(f"member {info.name!r} holds {info.size} bytes, more than the limit of "
                                f"{limits.max_member_bytes} bytes")
                continue
            if info.offset_data + info.size > archive_bytes:
                problems.append(f"member {info.name!r} declares {info.size} bytes, but the archive ends "
                                f"{max(0, archive_bytes - info.offset_data)} bytes after its header: the "
                                f"package is truncated or its header lies")
                continue
            if name in members:
                problems.append(f"member {name!r} appears twice")
                continue
            members[name] = info
            order.append(name)
    except tarfile.TarError as exc:
        problems.append(f"the tar archive is damaged: {exc}")
    if problems:
        raise OvaError(label, problems)

    descriptors = [n for n in order if n.lower().endswith(".ovf")]
    if len(descriptors) != 1:
        raise OvaError(label, [
            "the package holds no .ovf descriptor" if not descriptors else
            f"the package holds {len(descriptors)} .ovf descriptors ({', '.join(descriptors)}); an OVA holds one"
        ])
    descriptor_name = descriptors[0]
    if order[0] != descriptor_name:
        warnings.append(f"the descriptor {descriptor_name} is not the first member of the package, as OVF requires")
    info = members[descriptor_name]
    if info.size > xml_limits.max_bytes:
        raise OvaError(label, [f"the descriptor {descriptor_name} holds {info.size} bytes, more than the limit "
                               f"of {xml_limits.max_bytes} bytes"])
    descriptor_bytes = _read_member(tar, info, xml_limits.max_bytes, label)

    manifests = [n for n in order if n.lower().endswith(".mf")]
    digests: dict[str, tuple[str, str]] = {}
    manifest_name: str | None = None
    if len(manifests) > 1:
        raise OvaError(label, [f"the package holds {len(manifests)} manifests ({', '.join(manifests)})"])
    if manifests:
        manifest_name = manifests[0]
        m_info = members[manifest_name]
        if m_info.size > limits.max_manifest_bytes:
            raise OvaError(label, [f"the manifest {manifest_name} holds {m_info.size} bytes, more than the limit "
                                   f"of {limits.max_manifest_bytes} bytes"])
        digests = _parse_manifest(_read_member(tar, m_info, limits.max_manifest_bytes, label), manifest_name, label)
    else:
        warnings.append("the package has no manifest (.mf): its members are not verified")

    verified: dict[str, str] = {}
    budget = archive_bytes  # members lie within the archive and do not overlap: never hash more than it
    for name, (algorithm, expected) in digests.items():
        if name not in members:
            warnings.append(f"the manifest lists {name}, which the package does not hold: not verified")
            continue
        if members[name].size > budget:
            raise OvaError(label, [f"verifying {name} would hash more bytes than the archive holds"])
        budget -= members[name].size
        actual = _hash_member(tar, members[name], algorithm, limits.chunk_bytes)
        if actual != expected.lower():
            problems.append(f"member {name} does not match the manifest: {algorithm} is {actual}, "
                            f"the manifest says {expected.lower()}")
        else:
            verified[name] = f"{algorithm}:{actual}"
    if problems:
        raise OvaError(label, problems)
    for name in order:
        if digests and name not in digests and name != manifest_name and not name.lower().endswith(".cert"):
            warnings.append(f"member {name} is not covered by the manifest: not verified")
    if any(n.lower().endswith(".cert") for n in order):
        warnings.append("the package is signed (.cert): the signature and certificate are not checked")

    descriptor = parse_ovf(descriptor_bytes, configuration=configuration, virtual_system=virtual_system,
                           source=f"{label}:{descriptor_name}", limits=xml_limits)

    # Files the descriptor refers to must be safe names; the disks' data must be in the package.
    for disk in descriptor.disks:
        if disk.file is None:
            continue
        why = _unsafe(_normal(disk.file))
        if why:
            problems.append(f"disk {disk.name!r} refers to file {disk.file!r}, which {why}")
        elif _normal(disk.file) not in members:
            problems.append(f"disk {disk.name!r} refers to file {disk.file!r}, which the package does not hold")
    for media in descriptor.media:
        if media.file and _normal(media.file) not in members:
            warnings.append(f"{media.kind} image {media.file!r} is not in the package")
    if problems:
        raise OvaError(label, problems)

    package = PackageInfo(
        file=label, descriptor=descriptor_name, manifest=manifest_name,
        members=[
            PackageMember(name=n, size_bytes=members[n].size, digest=verified.get(n), verified=n in verified)
            for n in order
        ],
    )
    return descriptor.model_copy(update={"package": package, "warnings": [*descriptor.warnings, *warnings]})


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int, label: str) -> bytes:
    stream = tar.extractfile(info)
    if stream is None:  # not a regular file; filtered out before
        raise OvaError(label, [f"member {info.name!r} cannot be read"])
    with stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise OvaError(label, [f"member {info.name!r} is larger than {limit} bytes"])
    return data


def _hash_member(tar: tarfile.TarFile, info: tarfile.TarInfo, algorithm: str, chunk: int) -> str:
    digest = hashlib.new(algorithm.lower())
    stream = tar.extractfile(info)
    assert stream is not None
    with stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _parse_manifest(data: bytes, name: str, label: str) -> dict[str, tuple[str, str]]:
    """{member: (algorithm, hex digest)} from ``SHA256(disk.vmdk)= 3a7b...`` lines."""
    problems: list[str] = []
    digests: dict[str, tuple[str, str]] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OvaError(label, [f"the manifest {name} is not UTF-8 text"]) from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.match(line.strip())
        if not match:
            problems.append(f"{name} line {number} is not 'SHA256(file)= digest': {line.strip()[:80]!r}")
            continue
        algorithm, member, digest = match.group(1), _normal(match.group(2).strip()), match.group(3)
        if len(digest) != _DIGESTS[algorithm]:
            problems.append(f"{name} line {number}: a {algorithm} digest has {_DIGESTS[algorithm]} hex digits, "
                            f"not {len(digest)}")
            continue
        why = _unsafe(member)
        if why:
            problems.append(f"{name} line {number}: file name {member!r} {why}")
            continue
        if member in digests:
            problems.append(f"{name} line {number}: {member} is listed twice")
            continue
        digests[member] = (algorithm, digest)
    if problems:
        raise OvaError(label, problems)
    return digests
