"""Benchmark of the QEMU driver alone: how long a real guest takes to boot and to move, here.

Boots one guest (the guest image from Debian's packages, built once into ~/.cache/vmshift/guest)
under the accelerator the driver chooses (KVM when a probe guest boots under it, else TCG), then
moves it back and forth between two drivers that share a directory as their shared volume: live
migrations (QEMU's pre-copy over loopback TCP; total time, rounds and downtime are QEMU's own
numbers from query-migrate) and quick migrations (save to a file, restore on the other host;
downtime measured here, from the save's start to the restored guest running). After every move it
checks, from the serial console, that the guest's counter went on and its memory checksum is the
predicted one. It reports what it measures; it asserts nothing else.

    .venv/bin/python bench/qemu_guest.py                       # 10 live, 3 quick, 96 MiB guest
    .venv/bin/python bench/qemu_guest.py --live 50 --memory-mib 128 --dirty-mibps 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vmshift.devcluster import guestimage
from vmshift.hypervisor.driver import MigrationParameters, TransferPhase
from vmshift.hypervisor.protocol import VmDefinition, WorkloadSpec
from vmshift.hypervisor.qemu import cpu as cpumodels
from vmshift.hypervisor.qemu.cmdline import workload_params
from vmshift.hypervisor.qemu.driver import QemuConfig, QemuDriver
from vmshift.hypervisor.qemu.workload import Ready, RegionModel, Tick, parse_line

VM = "bench-1"


def _lines(text: str) -> list[Tick | Ready]:
    return [item for line in text.splitlines() if (item := parse_line(line)) is not None]


class Stream:
    """The guest's serial output across hosts, and the check that its counter and memory held."""

    def __init__(self, definition: VmDefinition) -> None:
        params = workload_params(definition)
        self.model = RegionModel(params.region_mib, params.dirty_kib)
        self.left: list[str] = []
        self.console: Path | None = None

    def text(self) -> str:
        return "".join(self.left) + (self.console.read_text(errors="replace") if self.console else "")

    def ticks(self) -> list[Tick]:
        return [t for t in _lines(self.text()) if isinstance(t, Tick)]

    def check(self) -> int:
        ticks = self.ticks()
        numbers = [t.n for t in ticks]
        if numbers != list(range(len(numbers))):
            raise SystemExit(f"the guest's counter restarted, repeated or skipped: {numbers}")
        for tick in ticks:
            if tick.md5 != self.model.md5(tick.n):
                raise SystemExit(f"tick {tick.n}: checksum {tick.md5}, predicted {self.model.md5(tick.n)}")
        return numbers[-1] if numbers else -1

    async def moved(self, source: QemuDriver, target: QemuDriver) -> None:
        """Keep what the guest printed on ``source``, delete it there, follow its console on ``target``."""
        self.left = [await asyncio.to_thread(self.text)]
        self.console = None
        await source.delete(VM)
        self.console = target.console(VM)

    async def wait_tick(self, at_least: int, within: float) -> float:
        started = time.monotonic()
        while True:
            ticks = await asyncio.to_thread(self.ticks)
            if ticks and ticks[-1].n >= at_least:
                return time.monotonic() - started
            if time.monotonic() - started > within:
                raise SystemExit(f"no tick >= {at_least} within {within:g} s:\n{self.text()[-1500:]}")
            await asyncio.sleep(0.05)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> int:
    image = guestimage.ensure()
    root = Path(tempfile.mkdtemp(prefix="vmshift-bench-qemu-"))
    (root / "shared" / "csv1").mkdir(parents=True)
    hosts = [QemuDriver(QemuConfig(work_dir=root / f"h{i}", shared_dir=root / "shared", image=image,
                                   accel=args.accel)) for i in (1, 2)]
    definition = VmDefinition(name=VM, cpus=1, memory_mib=args.memory_mib, compatibility=True,
                              workload=WorkloadSpec(dirty_rate_mib_ps=args.dirty_mibps, working_set_mib=8))
    choice = cpumodels.choose("icelake", compatibility=True)
    stream = Stream(definition)
    try:
        accel = await hosts[0].accelerator()
        print(f"accelerator: {accel.accel.value} ({accel.why})")
        await hosts[0].define(VM, definition)
        started = time.monotonic()
        await hosts[0].start(VM, choice)
        stream.console = hosts[0].console(VM)
        await stream.wait_tick(0, 300)
        boot = time.monotonic() - started
        ready = next(item for item in _lines(stream.text()) if isinstance(item, Ready))
        print(f"boot: {boot:.1f} s from start to the first tick (guest uptime at its init's ready line "
              f"{ready.uptime_s:.1f} s); workload {workload_params(definition)}")
        here = 0
        live_total: list[float] = []
        live_down: list[float] = []
        rounds: list[int] = []
        parameters = MigrationParameters(downtime_limit_ms=args.downtime_limit_ms, auto_converge=True)
        for _ in range(args.live):
            source, target = hosts[here], hosts[1 - here]
            before = stream.check()
            endpoint = await target.prepare_incoming(VM, definition, choice, parameters)
            await source.migrate(VM, endpoint, parameters)
            while True:
                progress = await source.progress(VM)
                if progress.finished:
                    break
                await asyncio.sleep(0.02)
            if progress.phase is not TransferPhase.Completed:
                raise SystemExit(f"live migration failed: {progress}")
            assert progress.duration_ms is not None and progress.downtime_ms is not None
            live_total.append(progress.duration_ms)
            live_down.append(progress.downtime_ms)
            rounds.append(progress.rounds)
            await stream.moved(source, target)
            await stream.wait_tick(before + 1, 120)
            stream.check()
            here = 1 - here
        quick_down: list[float] = []
        for i in range(args.quick):
            source, target = hosts[here], hosts[1 - here]
            before = stream.check()
            started = time.monotonic()
            saved = await source.save(VM, root / "shared" / "csv1" / f"{VM}.{i}.state")
            await target.define(VM, definition)
            await target.restore(VM, saved)
            quick_down.append((time.monotonic() - started) * 1000)
            await stream.moved(source, target)
            await stream.wait_tick(before + 1, 120)
            stream.check()
            here = 1 - here
        last = stream.check()
        print(f"guest counter reached {last}; every tick's checksum matched the replay of its writes")
        if live_total:
            print(f"live ({len(live_total)}, downtime-limit {args.downtime_limit_ms:g} ms, QEMU's numbers): "
                  f"total p50 {statistics.median(live_total):.0f} ms, max {max(live_total):.0f} ms; "
                  f"downtime p50 {_pct(live_down, 50):.0f} ms, p99 {_pct(live_down, 99):.0f} ms, "
                  f"max {max(live_down):.0f} ms; rounds p50 {statistics.median(rounds):.0f}")
        if quick_down:
            print(f"quick ({len(quick_down)}, save + restore through the shared directory): downtime p50 "
                  f"{statistics.median(quick_down):.0f} ms, max {max(quick_down):.0f} ms")
    finally:
        for host in hosts:
            await host.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--live", type=int, default=10, help="live migrations (back and forth)")
    parser.add_argument("--quick", type=int, default=3, help="quick migrations after the live ones")
    parser.add_argument("--memory-mib", type=int, default=96)
    parser.add_argument("--dirty-mibps", type=float, default=2.5, help="the VM's workload dirtyRateMiBps")
    parser.add_argument("--downtime-limit-ms", type=float, default=300.0, help="QEMU's downtime-limit")
    parser.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
