"""``bench/migration.py --driver qemu``: the scenario table and the downtime series for real guests.

Starts ``vmshift agent --driver qemu`` subprocesses (and, for the same scenarios, simulated agents),
drives them only through HypervisorClient, and prints: (1) for each scenario (guest memory, dirty
rate, link bandwidth) the live migration of a real Linux guest under QEMU (QEMU's own total time,
bytes, dirty-sync rounds and measured downtime, as the agent's MigrationStatus carries them) beside
the simulated driver's migration of the same scenario and beside predict_precopy()'s; (2) QEMU's
downtime p50/p99 over many live migrations of one guest bounced between two agents. Each QEMU
scenario boots one guest (tens of seconds under TCG). A real guest must print a tick on its new host
after every move; one that does not is counted as lost and a fresh one takes over (under TCG, QEMU
7.2 lost writes in pre-copy and guests oopsed after their 2nd-18th live move until the driver gave TCG
guests 8 KiB more RAM: see qemu/driver.py, TCG_RAM_PAD_KIB). It reports what it measures; it asserts
nothing.

    .venv/bin/python bench/migration.py --driver qemu                 # 4 scenarios x 3, 50 bounces
    .venv/bin/python bench/migration.py --driver qemu --migrations 100 --repeat 5
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agent_pool import AgentPool  # beside this script (bench/)
from vmshift.hypervisor.client import AgentError, HypervisorClient, begin_migration
from vmshift.hypervisor.launcher import AgentConfig, AgentProcess
from vmshift.hypervisor.protocol import DiskSpec, MigrationStatus, VmDefinition, WorkloadSpec
from vmshift.hypervisor.qemu.cmdline import workload_params
from vmshift.hypervisor.qemu.workload import RegionModel
from vmshift.precopy.model import predict_precopy

#: QEMU's downtime limit and the simulated agents' switchover threshold alike (ms): the policy's
#: default switchoverThresholdMs, which is what the operator sends.
THRESHOLD_MS = 1.0
#: A TCG boot takes 10-30 s here; 150 s was seen under load.
BOOT_SECONDS = 400.0
#: A guest that arrived prints its next tick within a second or two; far longer means it hangs.
TICK_SECONDS = 30.0
VOLUME = "csv-bench"


@dataclass(frozen=True)
class Scenario:
    memory_mib: int
    dirty_mib_ps: float
    bandwidth_mbps: float

    @property
    def label(self) -> str:
        return f"M={self.memory_mib} D={self.dirty_mib_ps:g} B={self.bandwidth_mbps:g}"

    def definition(self, name: str) -> VmDefinition:
        return VmDefinition(name=name, cpus=1, memory_mib=self.memory_mib, compatibility=True,
                            disks=[DiskSpec(name="root", size_gib=1, volume=VOLUME)],
                            workload=WorkloadSpec(dirty_rate_mib_ps=self.dirty_mib_ps, working_set_mib=8))

    @property
    def region_mib(self) -> int:
        return workload_params(self.definition("x")).region_mib


SCENARIOS = (
    Scenario(96, 0.5, 1000),
    Scenario(96, 2.5, 1000),
    Scenario(96, 2.5, 200),
    Scenario(96, 10, 1000),
)


@dataclass
class Measured:
    outcome: str
    seconds: float
    mib: float
    rounds: int
    downtime_ms: float | None
    lost: int = 0  # real guests that stopped printing after a move


def measured(status: MigrationStatus) -> Measured:
    outcome = status.phase.value if status.failure is None else f"{status.phase.value}:{status.failure.reason.value}"
    mib = status.transferred_mib if status.transferred_mib else sum(r.sent_mib for r in status.rounds)
    return Measured(outcome, (status.duration_ms or 0) / 1000, mib, max(status.round, len(status.rounds)),
                    status.downtime_ms if status.failure is None else None)


class Agents(AgentPool):
    def start(self, name: str, driver: str) -> AgentProcess:
        return self.launch(AgentConfig(name=name, memory_mib=4096, cores=8, bandwidth_mbps=0, driver=driver,
                                       shared_volumes=(VOLUME,), log_level="WARNING"))


async def migrate(source: HypervisorClient, target: HypervisorClient, vm_id: str, migration_id: str,
                  bandwidth_mbps: float | None) -> MigrationStatus:
    await begin_migration(source, target, vm_id, migration_id, threshold_ms=THRESHOLD_MS, bandwidth_mbps=bandwidth_mbps)
    return await source.wait_migration(migration_id, timeout_seconds=600, poll_seconds=0.05)


class GuestLost(Exception):
    """A real guest stopped printing after a move (its kernel crashed or hung on the target)."""


async def booted(client: HypervisorClient, vm_id: str, ticks: int = 2, within: float = BOOT_SECONDS,
                 model: RegionModel | None = None) -> None:
    """Wait until the guest's counter on this host reaches ``ticks``; GuestLost when it does not, or when
    the checksum it printed is not the one ``model`` predicts (its memory arrived corrupted)."""
    deadline = time.monotonic() + within
    while (vm := await client.get_vm(vm_id)).heartbeat < ticks:
        # Incoming: the target agent sees its QEMU run at its next look (within 0.1 s), after the
        # source has already reported the move Succeeded
        if vm.state.value not in ("Running", "Incoming"):
            raise GuestLost(f"guest {vm_id} is {vm.state.value} before it printed {ticks} ticks")
        if time.monotonic() > deadline:
            raise GuestLost(f"guest {vm_id} printed no tick within {within:g} s")
        await asyncio.sleep(0.1)
    if model is not None and vm.digest != model.md5(vm.heartbeat)[:len(vm.digest)]:
        raise GuestLost(f"guest {vm_id} printed region checksum {vm.digest} at tick {vm.heartbeat}, not the "
                        f"predicted {model.md5(vm.heartbeat)[:len(vm.digest)]}: its memory arrived corrupted")


@dataclass
class Bounced:
    statuses: list[MigrationStatus]
    lost: int = 0  # real guests that stopped printing after a move (a fresh one was booted each time)


async def bounce(a: HypervisorClient, b: HypervisorClient, agents: Agents, s: Scenario, times: int) -> Bounced:
    """Boot a guest of ``s`` on ``a`` and move it back and forth ``times`` times. A real guest must print
    a tick on its new host before it moves on (it runs there), with the region checksum its writes
    predict; one that does not is counted as lost, deleted, and a fresh one boots in its place."""
    out = Bounced([])
    qemu = (await a.host()).driver == "qemu"
    while len(out.statuses) < times:
        vm_id = agents.next_id("vm")
        definition = s.definition(vm_id)
        if not qemu:  # the simulated guest's hot set is the real guest's region
            definition = definition.model_copy(update={"workload": definition.workload.model_copy(
                update={"working_set_mib": float(s.region_mib)})})
        await a.define_vm(vm_id, definition)
        await a.start_vm(vm_id)
        holder = a
        params = workload_params(definition)
        model = RegionModel(params.region_mib, params.dirty_kib)
        try:
            if qemu:
                await booted(a, vm_id, model=model)
            while len(out.statuses) < times:
                other = b if holder is a else a
                status = await migrate(holder, other, vm_id, agents.next_id("mig"), s.bandwidth_mbps)
                out.statuses.append(status)
                if status.failure is None:
                    holder = other
                if qemu:
                    await booted(holder, vm_id, 1, TICK_SECONDS, model)
        except GuestLost as exc:
            out.lost += 1
            print(f"    {exc} (after move {len(out.statuses)})", file=sys.stderr)
        finally:
            with contextlib.suppress(AgentError):
                await holder.delete_vm(vm_id, force=True)
    return out


def median(rows: list[Measured]) -> Measured:
    rows = sorted(rows, key=lambda r: r.seconds)
    return rows[len(rows) // 2]


async def scenario_rows(agents: Agents, repeat: int) -> list[tuple[Scenario, Measured, Measured]]:
    out = []
    qa, qb = agents.start("qemu-a", "qemu"), agents.start("qemu-b", "qemu")
    sa, sb = agents.start("sim-a", "simulated"), agents.start("sim-b", "simulated")
    async with qa.client() as a, qb.client() as b, sa.client() as c, sb.client() as d:
        for s in SCENARIOS:
            real = await bounce(a, b, agents, s, repeat)
            qemu = median([measured(st) for st in real.statuses])
            qemu.lost = real.lost
            simulated = median([measured(st) for st in (await bounce(c, d, agents, s, repeat)).statuses])
            out.append((s, qemu, simulated))
            print(f"  {s.label}: qemu {qemu.outcome} {qemu.seconds:.2f} s, simulated {simulated.outcome} "
                  f"{simulated.seconds:.2f} s", file=sys.stderr)
    agents.stop_all()
    return out


async def downtime_series(agents: Agents, migrations: int) -> dict[str, float]:
    s = Scenario(96, 2.5, 1000)
    qa, qb = agents.start("qemu-c", "qemu"), agents.start("qemu-d", "qemu")
    async with qa.client() as a, qb.client() as b:
        bounced = await bounce(a, b, agents, s, migrations)
    agents.stop_all()
    statuses = bounced.statuses
    downtimes = sorted(st.downtime_ms for st in statuses if st.failure is None and st.downtime_ms is not None)
    durations = [st.duration_ms or 0 for st in statuses if st.failure is None]

    def pct(p: float) -> float:
        return downtimes[min(len(downtimes) - 1, int(p / 100 * len(downtimes)))]

    return {"migrations": len(downtimes), "failed": len(statuses) - len(downtimes), "p50_ms": pct(50),
            "p99_ms": pct(99), "max_ms": downtimes[-1], "mean_ms": statistics.fmean(downtimes),
            "median_duration_ms": statistics.median(durations), "guests_lost": bounced.lost}


def report(rows: list[tuple[Scenario, Measured, Measured]], downtime: dict[str, float]) -> None:
    print(f"\n## Live migration of real guests (QEMU) beside the simulated driver and the model "
          f"(downtime limit / threshold {THRESHOLD_MS:g} ms)\n")
    head = (f"| {'scenario (MiB, MiB/s, Mbit/s)':<24} | {'QEMU':<9} | {'s':>5} | {'MiB':>6} | {'rnd':>3} | "
            f"{'down ms':>7} | {'simulated':<9} | {'s':>5} | {'MiB':>6} | {'rnd':>3} | {'down ms':>7} | "
            f"{'model s':>7} | {'MiB':>6} | {'rnd':>3} | {'down ms':>7} | {'lost':>4} |")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for s, q, m in rows:
        model = predict_precopy(s.memory_mib, s.dirty_mib_ps, s.region_mib, s.bandwidth_mbps, threshold_ms=THRESHOLD_MS)

        def down(value: float | None) -> str:
            return f"{value:7.1f}" if value is not None else "      -"
        print(f"| {s.label:<24} | {q.outcome:<9} | {q.seconds:5.2f} | {q.mib:6.1f} | {q.rounds:3d} | "
              f"{down(q.downtime_ms)} | {m.outcome:<9} | {m.seconds:5.2f} | {m.mib:6.1f} | {m.rounds:3d} | "
              f"{down(m.downtime_ms)} | {model.total_seconds:7.2f} | {model.transferred_mib:6.1f} | "
              f"{model.round_count + 1:3d} | {model.downtime_ms:7.2f} | {q.lost:4d} |")
    print("\nQEMU: its own total-time, transferred bytes, dirty-sync-count and measured downtime "
          "(query-migrate). The simulated driver moves a sparse guest of the same size whose hot set is the "
          "real guest's region. The model counts every page of memory; QEMU sends a zero page as a flag, so "
          "a mostly idle real guest moves far fewer bytes. lost: real guests that printed nothing on their "
          f"new host within {TICK_SECONDS:g} s after a move (a fresh guest then took over).")
    print(f"\n## QEMU downtime over {downtime['migrations']:.0f} live migrations (96 MiB guest, 2.5 MiB/s, "
          "1000 Mbit/s, bounced between two agents)\n")
    print(f"p50 {downtime['p50_ms']:.1f} ms, p99 {downtime['p99_ms']:.1f} ms, max {downtime['max_ms']:.1f} ms, "
          f"mean {downtime['mean_ms']:.1f} ms; {downtime['failed']:.0f} failed; median migration "
          f"{downtime['median_duration_ms']:.0f} ms; guests lost after a move (stopped printing on the target, a "
          f"fresh one booted): {downtime['guests_lost']:.0f}.")


async def run(workdir: Path, repeat: int, migrations: int) -> tuple[list[tuple[Scenario, Measured, Measured]],
                                                                   dict[str, float]]:
    agents = Agents(workdir)
    try:
        print("scenarios (real guests and simulated ones)...", file=sys.stderr)
        rows = await scenario_rows(agents, repeat)
        print("QEMU downtime series...", file=sys.stderr)
        downtime = await downtime_series(agents, migrations)
    finally:
        agents.stop_all()
    report(rows, downtime)
    return rows, downtime
