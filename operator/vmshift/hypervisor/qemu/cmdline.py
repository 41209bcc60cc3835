"""A guest's QEMU command line: the RAM it gets, the workload it runs, the process's tie to its agent."""

from __future__ import annotations

import contextlib
import ctypes
import signal
from pathlib import Path

from vmshift.devcluster.guestimage import GuestImage
from vmshift.hypervisor.driver import DiskDescription
from vmshift.hypervisor.protocol import VmDefinition
from vmshift.hypervisor.qemu import accel
from vmshift.hypervisor.qemu.workload import WorkloadParams

PR_SET_PDEATHSIG = 1
#: Workload tick the guest runs at (see workload.py); the dirty rate maps to KiB per tick.
TICK_MS = 200
#: Under TCG a guest's RAM is this much larger than its definition says. QEMU before 9.0 (Debian 12 ships
#: 7.2) loses guest writes during a live migration from a TCG source whose RAM block is a whole number of
#: 256 KiB (64 pages, one bitmap word): the fast path of ``cpu_physical_memory_sync_dirty_bitmap`` clears the
#: migration dirty bits a word at a time without resetting the vCPUs' TLB entries, so stores through an
#: entry that is already marked dirty are not tracked again, and the page the target gets is stale
#: (upstream fix "physmem: Fix migration dirty bitmap coherency with TCG memory access", QEMU 9.0). Every
#: MiB-sized guest hits that path. With 8 KiB more (QEMU rounds RAM to 8 KiB) the length is not
#: word-aligned and QEMU takes its page-by-page path, which resets the TLB. Measured here, one 96 MiB guest
#: bounced between two TCG hosts: without the pad 8 writes lost in 75 moves (5 kernels oopsed or hung, 3
#: wrong region checksums), with it 1 in 180 (a wrong checksum at 10 MiB/s, none at 2.5 MiB/s; QEMU's
#: notdirty path has a narrower race of the same kind that no command line avoids). Both hosts of a move
#: must agree (QEMU refuses a RAM length mismatch): every TCG host pads, a KVM host (whose dirty log is the
#: kernel's) does not.
TCG_RAM_PAD_KIB = 8


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the agent that started it dies (Linux's PR_SET_PDEATHSIG),
    so a killed agent leaves no guest running that nobody drives."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def workload_params(definition: VmDefinition) -> WorkloadParams:
    """The guest workload for a VM's simulated-workload spec: ``workingSetMiB`` is the region (8 MiB
    when 0, at most a quarter of memory), ``dirtyRateMiBps`` becomes KiB rewritten per 200 ms tick
    (the guest's real rate is lower by the time it spends checksumming the region each tick)."""
    spec = definition.workload
    region = int(spec.working_set_mib) if spec.working_set_mib >= 1 else 8
    region = max(1, min(region, definition.memory_mib // 4))
    dirty_kib = int(spec.dirty_rate_mib_ps * 1024 * TICK_MS / 1000) // 4 * 4
    return WorkloadParams(region_mib=region, dirty_kib=min(dirty_kib, region * 1024), interval_ms=TICK_MS)


def memory_argument(memory_mib: int, accelerator: accel.Accelerator) -> str:
    """QEMU's ``-m`` for a guest of ``memory_mib`` MiB under ``accelerator`` (see TCG_RAM_PAD_KIB)."""
    if accelerator is accel.Accelerator.TCG:
        return f"{memory_mib * 1024 + TCG_RAM_PAD_KIB}k"
    return f"{memory_mib}M"


def command_line(qemu: str, vm_id: str, d: VmDefinition, cpu_model: str, accelerator: accel.Accelerator,
                 image: GuestImage, workload: WorkloadParams, *, serial: Path, qmp: Path,
                 disks: tuple[DiskDescription, ...], incoming: bool) -> list[str]:
    """QEMU's arguments for guest ``vm_id``: machine q35 under ``accelerator``, the image's kernel and
    initramfs running ``workload``, the serial port into ``serial``, the monitor on the UNIX socket
    ``qmp``, each disk as a virtio qcow2 device; ``-incoming defer`` for a migration's target."""
    args = [
        qemu, "-name", f"guest={vm_id}", "-machine", f"q35,accel={accelerator.value}",
        "-cpu", cpu_model, "-m", memory_argument(d.memory_mib, accelerator), "-smp", str(d.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"console=ttyS0 quiet panic=-1 {workload.kernel_args()}",
        "-chardev", f"file,id=serial0,path={serial}", "-serial", "chardev:serial0",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]
    for index, disk in enumerate(disks):
        assert disk.path is not None
        args += ["-blockdev", f"driver=qcow2,node-name=disk{index},file.driver=file,file.filename={disk.path}",
                 "-device", f"virtio-blk-pci,drive=disk{index},id=vd{index}"]
    if incoming:
        args += ["-incoming", "defer"]
    return args
