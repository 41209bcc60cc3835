"""The real guest's workload: its init script, its kernel command line, and how to check what it prints.

Pure: no I/O. The guest image (``vmshift.devcluster.guestimage``) packs ``INIT_SCRIPT`` as the
initramfs's ``/init``; the QEMU driver passes ``WorkloadParams`` on the kernel command line and
parses the serial console with ``parse_line``; a test replays the guest's writes with
``RegionModel`` and compares checksums.

What the guest does (busybox ``sh``, no other program): it fills a memory region (a file in the
initramfs's RAM-backed root, so its pages are guest RAM that migration must carry) of
``region_mib`` MiB with tick 0's pattern, then forever: prints ``VMSHIFT tick=<n> md5=<md5 of the
region> up=<guest uptime s>`` on the serial port, overwrites the next run of ``dirty_kib`` KiB
(wrapping around the region) with tick n+1's pattern, and sleeps ``interval_ms``. Tick n's pattern
is the line ``vmshift tick <n>`` repeated, so the whole region after tick n is a function of n
alone: ``RegionModel`` recomputes it on the host and a printed checksum that differs proves that
memory was lost or corrupted (a stale page from before a move, a page from the wrong place). The
counter restarts from 0 only if the guest rebooted, and repeats only if a copy ran twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

PAGE = 4096

#: The initramfs's /init. Keep it in step with RegionModel: the test checks one against the other.
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev 2>/dev/null
region_mib=8; dirty_kib=512; interval_ms=200
for word in $(cat /proc/cmdline); do
  case "$word" in
    vmshift.region_mib=*) region_mib=${word#*=} ;;
    vmshift.dirty_kib=*) dirty_kib=${word#*=} ;;
    vmshift.interval_ms=*) interval_ms=${word#*=} ;;
  esac
done
pages=$((region_mib * 256)); run=$((dirty_kib / 4))
[ "$run" -gt "$pages" ] && run=$pages
yes "vmshift tick 0" | head -c $((pages * 4096)) | dd of=/tmp/region bs=4096 2>/dev/null
read up rest < /proc/uptime
echo "VMSHIFT ready pages=$pages run=$run interval_ms=$interval_ms up=$up"
n=0
while true; do
  set -- $(md5sum /tmp/region)
  read up rest < /proc/uptime
  echo "VMSHIFT tick=$n md5=$1 up=$up"
  n=$((n + 1))
  if [ "$run" -gt 0 ]; then
    start=$(( ((n - 1) * run) % pages ))
    first=$((pages - start)); [ "$first" -gt "$run" ] && first=$run
    yes "vmshift tick $n" | head -c $((first * 4096)) \
      | dd of=/tmp/region bs=4096 seek=$start conv=notrunc 2>/dev/null
    if [ "$first" -lt "$run" ]; then
      yes "vmshift tick $n" | head -c $((run * 4096)) | tail -c $(((run - first) * 4096)) \
        | dd of=/tmp/region bs=4096 conv=notrunc 2>/dev/null
    fi
  fi
  usleep $((interval_ms * 1000))
done
"""

_TICK = re.compile(r"VMSHIFT tick=(\d+) md5=([0-9a-f]{32}) up=([0-9.]+)")
_READY = re.compile(r"VMSHIFT ready pages=(\d+) run=(\d+) interval_ms=(\d+) up=([0-9.]+)")


@dataclass(frozen=True)
class WorkloadParams:
    """How hard the guest writes its memory: a ``region_mib`` region, ``dirty_kib`` per tick, a tick
    every ``interval_ms`` plus the time the guest takes to checksum the region."""

    region_mib: int = 8
    dirty_kib: int = 512
    interval_ms: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.region_mib <= 4096:
            raise ValueError(f"workload region_mib={self.region_mib}: expected 1-4096 MiB (and less than "
                             "the guest's memory)")
        if self.dirty_kib < 0 or self.dirty_kib % 4:
            raise ValueError(f"workload dirty_kib={self.dirty_kib}: expected a multiple of 4 KiB (whole pages), "
                             "0 or more")
        if not 0 <= self.interval_ms <= 600_000:
            raise ValueError(f"workload interval_ms={self.interval_ms}: expected 0-600000")

    def kernel_args(self) -> str:
        return (f"vmshift.region_mib={self.region_mib} vmshift.dirty_kib={self.dirty_kib} "
                f"vmshift.interval_ms={self.interval_ms}")


@dataclass(frozen=True)
class Tick:
    """One line the guest printed: its counter, the region's checksum, its uptime in seconds."""

    n: int
    md5: str
    uptime_s: float


@dataclass(frozen=True)
class Ready:
    pages: int
    run: int
    interval_ms: int
    uptime_s: float


def parse_line(line: str) -> Tick | Ready | None:
    """The workload's meaning of one serial console line (None: a kernel message or noise)."""
    match = _TICK.search(line)
    if match:
        return Tick(int(match[1]), match[2], float(match[3]))
    match = _READY.search(line)
    if match:
        return Ready(int(match[1]), int(match[2]), int(match[3]), float(match[4]))
    return None


def _pattern(n: int, size: int) -> bytes:
    line = f"vmshift tick {n}\n".encode()
    return (line * (size // len(line) + 1))[:size]


class RegionModel:
    """The guest's region replayed on the host: ``md5(n)`` is what tick n must print."""

    def __init__(self, region_mib: int, dirty_kib: int) -> None:
        self.pages = region_mib * 256
        self.run = min(dirty_kib // 4, self.pages)
        self._region = bytearray(_pattern(0, self.pages * PAGE))
        self._tick = 0
        self._sums = {0: hashlib.md5(self._region).hexdigest()}

    def _step(self) -> None:
        n = self._tick + 1
        if self.run:
            start = ((n - 1) * self.run) % self.pages
            first = min(self.pages - start, self.run)
            data = _pattern(n, self.run * PAGE)
            self._region[start * PAGE:(start + first) * PAGE] = data[:first * PAGE]
            if first < self.run:
                self._region[:(self.run - first) * PAGE] = data[first * PAGE:]
        self._tick = n

    def md5(self, n: int) -> str:
        """The checksum tick ``n`` prints when the region holds what the guest wrote (ticks only go up)."""
        if n < self._tick and n not in self._sums:
            raise ValueError(f"tick {n} is behind the model (at {self._tick}); make a new RegionModel")
        while self._tick < n:
            self._step()
        if n not in self._sums:
            self._sums[n] = hashlib.md5(self._region).hexdigest()
        return self._sums[n]
