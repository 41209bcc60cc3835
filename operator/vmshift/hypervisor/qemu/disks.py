"""A QEMU guest's disks: qcow2 overlays on a shared volume's directory (or the guest's own, for a local
disk), over an empty base image of the disk's size.

Runs ``qemu-img`` and touches files only.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from vmshift.hypervisor.driver import DiskDescription, DriverError
from vmshift.hypervisor.protocol import DiskSpec


async def make_disks(shared_dir: Path, qemu_img: str, directory: Path, vm_id: str,
                     disks: list[DiskSpec]) -> tuple[DiskDescription, ...]:
    """Each disk's overlay (made unless it exists); DriverError for a LUN or a volume this host lacks."""
    out = []
    for disk in disks:
        if disk.passthrough_lun is not None:
            raise DriverError(f"disk {disk.name} of VM {vm_id} is pass-through LUN {disk.passthrough_lun}; the "
                              "QEMU driver attaches qcow2 images only: put the disk on a shared volume")
        if disk.volume is not None:
            volume_dir = shared_dir / disk.volume
            if not volume_dir.is_dir():
                raise DriverError(f"disk {disk.name} of VM {vm_id} is on shared volume {disk.volume}, which this "
                                  f"host does not mount (no directory {volume_dir})")
            folder = volume_dir
        else:
            folder = directory / "disks"
            folder.mkdir(exist_ok=True)
        size = f"{disk.size_gib:g}".replace(".", "_")
        base = await image(qemu_img, folder / f".base-{size}G.qcow2", disk.size_gib, None)
        overlay = await image(qemu_img, folder / f"{vm_id}-{disk.name}.qcow2", disk.size_gib, base)
        out.append(DiskDescription(name=disk.name, path=overlay, volume=disk.volume))
    return tuple(out)

async def image(qemu_img: str, path: Path, size_gib: float, backing: Path | None) -> Path:
    """Create a qcow2 image (an overlay on ``backing``) unless it exists; safe when two hosts race."""
    if await asyncio.to_thread(path.exists):
        return path
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    args = [qemu_img, "create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-b", str(backing), "-F", "qcow2"]
    args += [str(scratch), f"{int(size_gib * 1024)}M"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        scratch.unlink(missing_ok=True)
        raise DriverError(f"qemu-img could not create {path}: {err.decode(errors='replace').strip()}")
    try:
        os.link(scratch, path)  # fails if another host made it first: theirs is as good
    except FileExistsError:
        pass
    finally:
        scratch.unlink(missing_ok=True)
    return path
