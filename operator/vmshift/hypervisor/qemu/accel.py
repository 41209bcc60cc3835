"""Which accelerator QEMU guests use on this host: KVM where a guest really boots under it, else TCG.

Runs QEMU (one short probe guest) and reads /dev/kvm's permissions; decides nothing else. A
present, writable /dev/kvm is not enough: on some hosts (nested virtualization without the
features a guest needs) a KVM guest hangs before it prints anything, or QEMU aborts setting an
MSR, or (as on the machine this was written on) the firmware prints "Probing EDD" and the kernel
never says a word. So the probe boots the real guest image under KVM and waits a few seconds for
its init to print the workload's ready line; anything else (no device, no permission, an exit,
silence) chooses TCG, and the reason goes into the log line the driver prints. The answer is
cached per QEMU binary for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")
#: A working KVM guest reaches its init in a second or two; allow for a loaded host.
PROBE_SECONDS = 8.0
#: What the guest's init prints once it runs (workload.py).
READY_MARK = b"VMSHIFT ready"


class Accelerator(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accelerator
    why: str


_cache: dict[tuple[str, str], AccelChoice] = {}


def _printed_ready(serial: Path) -> bool:
    return serial.exists() and READY_MARK in serial.read_bytes()


def _tail(serial: Path) -> str:
    return serial.read_bytes()[-80:].decode(errors="replace").strip() if serial.exists() else ""


async def _probe_kvm(qemu: str, kernel: Path, initrd: Path, seconds: float) -> str | None:
    """None when a KVM guest's init printed its ready line within ``seconds``; else why not."""
    with tempfile.TemporaryDirectory(prefix="vmshift-kvm-probe-") as scratch:
        serial = Path(scratch) / "serial.log"
        proc = await asyncio.create_subprocess_exec(
            qemu, "-machine", "q35,accel=kvm", "-cpu", "qemu64", "-m", "96", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1 vmshift.region_mib=1 vmshift.dirty_kib=0",
            "-chardev", f"file,id=s0,path={serial}", "-serial", "chardev:s0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while loop.time() < deadline:
                if await asyncio.to_thread(_printed_ready, serial):
                    return None
                if proc.returncode is not None:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.1)
            if proc.returncode is not None:
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode(errors="replace").strip().splitlines()
                return f"a KVM probe guest exited ({proc.returncode}): {err[-1] if err else 'no message'}"
            said = await asyncio.to_thread(_tail, serial)
            return (f"a KVM probe guest did not reach its init within {seconds:g} s (KVM guests hang on this "
                    f"host; its console {'ends with ' + repr(said) if said else 'stayed empty'})")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # and whatever it started, which holds the pipe
                await proc.wait()


async def choose(qemu: str, kernel: Path, initrd: Path, wanted: str = "auto",
                 probe_seconds: float = PROBE_SECONDS) -> AccelChoice:
    """The accelerator for guests: ``wanted`` is ``auto``, ``kvm`` (no probe: fail at start if it does
    not work) or ``tcg``."""
    if wanted == "tcg":
        return AccelChoice(Accelerator.TCG, "TCG was asked for (--accel tcg)")
    if wanted == "kvm":
        return AccelChoice(Accelerator.KVM, "KVM was asked for (--accel kvm)")
    if wanted != "auto":
        raise ValueError(f"accelerator {wanted!r}: expected auto, kvm or tcg")
    key = (qemu, str(kernel))
    if key in _cache:
        return _cache[key]
    if not await asyncio.to_thread(KVM_DEVICE.exists):
        choice = AccelChoice(Accelerator.TCG, f"{KVM_DEVICE} does not exist")
    elif not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        choice = AccelChoice(Accelerator.TCG, f"{KVM_DEVICE} is not readable and writable by this user")
    else:
        problem = await _probe_kvm(qemu, kernel, initrd, probe_seconds)
        choice = AccelChoice(Accelerator.TCG, problem) if problem else \
            AccelChoice(Accelerator.KVM, "a KVM probe guest booted")
    _cache[key] = choice
    return choice
