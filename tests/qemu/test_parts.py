"""The QEMU driver's parts that need no guest: the KVM probe, CPU models, progress, workload, image, cache."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vmshift.devcluster.cachedbuild import build_once
from vmshift.devcluster.guestimage import GuestImage
from vmshift.hypervisor.driver import DriverError, MigrationParameters, TransferPhase, TransferProgress
from vmshift.hypervisor.migration.qemu_source import QemuRounds, parameters
from vmshift.hypervisor.protocol import (
    AutoConvergeSettings,
    MigrationRequest,
    MigrationTarget,
    VmDefinition,
    WorkloadSpec,
)
from vmshift.hypervisor.qemu import accel
from vmshift.hypervisor.qemu import cpu as cpumodels
from vmshift.hypervisor.qemu.cmdline import memory_argument, workload_params
from vmshift.hypervisor.qemu.console import console_tail, last_tick
from vmshift.hypervisor.qemu.driver import QemuConfig, QemuDriver
from vmshift.hypervisor.qemu.monitor import progress_of, quit_monitor
from vmshift.hypervisor.qemu.workload import INIT_SCRIPT, Ready, RegionModel, Tick, WorkloadParams, parse_line
from vmshift.precopy.convergence import ActionKind, ConvergencePolicy
from vmshift.processor import baseline_features, processor_info

# -- the KVM probe ----------------------------------------------------------------------------------

_FAKE_QEMU = """#!/bin/sh
# Stands in for qemu-system-x86_64 in the probe: finds the serial file in -chardev file,...,path=X
for arg in "$@"; do
  case "$arg" in file,*path=*) serial="${arg##*path=}" ;; esac
done
%s
"""


def _fake_qemu(tmp_path: Path, body: str) -> str:
    path = tmp_path / "qemu"
    path.write_text(_FAKE_QEMU % body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def kvm_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(accel, "KVM_DEVICE", device)
    monkeypatch.setattr(accel, "_cache", {})


async def test_kvm_is_chosen_when_a_probe_guest_reaches_its_init(tmp_path: Path, kvm_device: None) -> None:
    qemu = _fake_qemu(tmp_path, 'printf "Linux version 6.1\\nVMSHIFT ready pages=256 run=0\\n" > "$serial"; sleep 30')
    choice = await accel.choose(qemu, tmp_path / "k", tmp_path / "i", probe_seconds=5)
    assert choice.accel is accel.Accelerator.KVM, choice


async def test_a_silent_kvm_guest_falls_back_to_tcg_within_the_probe_time(tmp_path: Path, kvm_device: None) -> None:
    qemu = _fake_qemu(tmp_path, "sleep 30")
    started = time.monotonic()
    choice = await accel.choose(qemu, tmp_path / "k", tmp_path / "i", probe_seconds=1)
    assert time.monotonic() - started < 5
    assert choice.accel is accel.Accelerator.TCG
    assert "did not reach its init within 1 s" in choice.why and "stayed empty" in choice.why


async def test_a_kvm_guest_that_hangs_after_the_firmware_falls_back_to_tcg(tmp_path: Path, kvm_device: None) -> None:
    # What KVM guests do on the machine this was written on: the boot stub prints, the kernel never does.
    qemu = _fake_qemu(tmp_path, 'printf "Probing EDD (edd=off to disable)... ok\\n" > "$serial"; sleep 30')
    choice = await accel.choose(qemu, tmp_path / "k", tmp_path / "i", probe_seconds=1)
    assert choice.accel is accel.Accelerator.TCG
    assert "did not reach its init" in choice.why and "Probing EDD" in choice.why, choice.why


async def test_a_kvm_guest_that_aborts_falls_back_to_tcg_with_qemus_message(tmp_path: Path, kvm_device: None) -> None:
    qemu = _fake_qemu(tmp_path, 'echo "error: failed to set MSR 0x10a to 0x69" >&2; exit 134')
    choice = await accel.choose(qemu, tmp_path / "k", tmp_path / "i", probe_seconds=5)
    assert choice.accel is accel.Accelerator.TCG
    assert "exited (134)" in choice.why and "failed to set MSR" in choice.why, choice.why


async def test_no_kvm_device_means_tcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "absent")
    monkeypatch.setattr(accel, "_cache", {})
    choice = await accel.choose("qemu-system-x86_64", tmp_path / "k", tmp_path / "i")
    assert choice.accel is accel.Accelerator.TCG and "does not exist" in choice.why


async def test_the_driver_logs_its_accelerator_and_why(tmp_path: Path, kvm_device: None,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    image = GuestImage(directory=tmp_path, kernel=tmp_path / "k", initrd=tmp_path / "i", packages=None)  # type: ignore[arg-type]
    driver = QemuDriver(QemuConfig(work_dir=tmp_path / "h", shared_dir=tmp_path / "s", image=image,
                                   qemu=_fake_qemu(tmp_path, "exit 1")))
    with caplog.at_level(logging.INFO, logger="vmshift.agent.qemu"):
        choice = await driver.accelerator()
        await driver.accelerator()
    lines = [r.getMessage() for r in caplog.records if "QEMU guests run under" in r.getMessage()]
    assert lines == [f"QEMU guests run under TCG: {choice.why}"], lines
    await driver.close()


async def test_an_unknown_accelerator_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="accelerator 'hvf': expected auto, kvm or tcg"):
        await accel.choose("qemu", tmp_path / "k", tmp_path / "i", "hvf")


# -- the monitor -----------------------------------------------------------------------------------------


async def _monitor_that_hangs_up_on_quit(path: Path, seen: list[str]) -> asyncio.Server:
    """A QMP server that, like QEMU under load, may close the socket before its answer to quit."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                                     "package": ""}, "capabilities": []}}).encode() + b"\n")
        await writer.drain()
        decoder = json.JSONDecoder()
        buffer = ""
        while chunk := await reader.read(4096):  # QMP is a stream of JSON values, not of lines
            buffer += chunk.decode()
            try:
                command, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                continue
            buffer = buffer.lstrip()[end:]
            seen.append(command["execute"])
            if command["execute"] == "quit":
                writer.close()
                return
            writer.write(json.dumps({"return": {}, "id": command.get("id")}).encode() + b"\n")
            await writer.drain()

    return await asyncio.start_unix_server(serve, path=str(path))


async def test_quitting_a_monitor_that_hangs_up_first_is_not_an_error() -> None:
    from qemu.qmp import QMPClient

    with tempfile.TemporaryDirectory(prefix="vmshift-qmp-test-") as scratch:
        path = Path(scratch) / "m.sock"
        seen: list[str] = []
        server = await _monitor_that_hangs_up_on_quit(path, seen)
        qmp = QMPClient("fake")
        await qmp.connect(str(path))
        await quit_monitor(qmp)
        assert seen == ["qmp_capabilities", "quit"]
        server.close()
        await server.wait_closed()


# -- CPU models ---------------------------------------------------------------------------------------


def test_compatibility_runs_the_baseline_model_and_full_mode_the_hosts_model() -> None:
    compat = cpumodels.choose("icelake", compatibility=True)
    assert compat.model == "Nehalem"
    assert compat.features == baseline_features() & processor_info("icelake").features
    full = cpumodels.choose("icelake", compatibility=False)
    assert full.model == "Icelake-Server" and full.features == processor_info("icelake").features
    assert cpumodels.choose("zen3", compatibility=False).model == "EPYC-Milan"


def test_a_host_cpu_qemu_has_no_model_for_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match=r"QEMU has no CPU model for host CPU 'bulldozer'.*processor compatibility"):
        cpumodels.choose("bulldozer", compatibility=False)
    assert cpumodels.choose("bulldozer", compatibility=True).model == "Nehalem"


def test_offers_say_which_models_this_host_cannot_run() -> None:
    offers = cpumodels.offers([
        {"name": "Nehalem", "unavailable-features": [], "static": False},
        {"name": "Icelake-Server", "unavailable-features": ["pcid", "x2apic"]},
    ])
    assert [(o.name, o.usable, o.unavailable_features) for o in offers] == [
        ("Icelake-Server", False, ("pcid", "x2apic")), ("Nehalem", True, ())]


# -- progress -------------------------------------------------------------------------------------------


def test_query_migrate_maps_to_progress_in_status_units() -> None:
    active = progress_of({
        "status": "active", "expected-downtime": 120, "total-time": 900, "cpu-throttle-percentage": 20,
        "ram": {"transferred": 50 * 2**20, "remaining": 30 * 2**20, "total": 96 * 2**20, "page-size": 4096,
                "dirty-pages-rate": 2560, "mbps": 812.5, "dirty-sync-count": 3},
    })
    assert active.phase is TransferPhase.Active and not active.finished
    assert (active.rounds, active.transferred_mib, active.remaining_mib, active.total_mib) == (3, 50, 30, 96)
    assert active.dirty_rate_mib_ps == 10.0 and active.throughput_mbps == 812.5
    assert active.expected_downtime_ms == 120 and active.throttle_percent == 20
    assert active.downtime_ms is None
    done = progress_of({"status": "completed", "downtime": 7, "total-time": 1500, "ram": {}})
    assert done.phase is TransferPhase.Completed and done.finished and done.downtime_ms == 7
    failed = progress_of({"status": "failed", "error-desc": "Unable to write to socket: Connection reset by peer"})
    assert failed.phase is TransferPhase.Failed and "Connection reset" in (failed.error or "")
    assert progress_of({"status": "postcopy-active"}).phase is TransferPhase.PostCopy
    assert progress_of({"status": "cancelled"}).phase is TransferPhase.Cancelled
    assert not active.switching_over
    for status in ("device", "pre-switchover"):
        stopped = progress_of({"status": status, "ram": {"remaining": 2**20}})
        assert stopped.phase is TransferPhase.Active and stopped.switching_over, status


def _round(rounds: int, sent_mib: float, remaining_mib: float, status: TransferPhase = TransferPhase.Active,
           switching_over: bool = False) -> TransferProgress:
    """A look at QEMU's transfer: 1 MiB/s link, 8 MiB/s of guest writes."""
    return TransferProgress(phase=status, rounds=rounds, transferred_mib=sent_mib, remaining_mib=remaining_mib,
                            dirty_rate_mib_ps=8, throughput_mbps=8.4, switching_over=switching_over)


def test_qemus_rounds_are_judged_once_each_by_the_convergence_rule() -> None:
    """A guest rewriting an 8 MiB hot set faster than a 1 MiB/s link carries: rounds 1, 2, 3 do not shrink
    the remaining set; the third in a row ends pre-copy (stallRounds 3) as the simulated driver's would."""
    policy = ConvergencePolicy(threshold_ms=10, max_rounds=30, stall_rounds=3)
    rounds = QemuRounds(policy, link_rate=2**20)
    assert rounds.judge(_round(1, 5, 91)) is None, "round 0 is still under way (only the first sync happened)"
    first = rounds.judge(_round(2, 96, 8))
    assert first is not None and first.kind is ActionKind.Continue and first.stalled == 0, first
    assert rounds.judge(_round(2, 99, 6)) is None, "the same round is judged once"
    kinds = [action.kind for look in (_round(3, 104, 8), _round(4, 112, 8)) if (action := rounds.judge(look))]
    assert kinds == [ActionKind.Continue, ActionKind.Continue] and rounds.stalled == 2
    ended = rounds.judge(_round(5, 120, 8))
    assert ended is not None and ended.kind is ActionKind.Fail, ended
    assert "3 rounds in a row did not shrink" in ended.why


def test_rounds_that_end_between_two_looks_are_judged_together() -> None:
    rounds = QemuRounds(ConvergencePolicy(threshold_ms=10, stall_rounds=2, fallback_to_postcopy=True),
                        link_rate=2**20)
    assert rounds.judge(_round(2, 96, 8)) is not None
    action = rounds.judge(_round(5, 120, 8))  # rounds 1-3 sent 24 MiB: 8 MiB each, 8 MiB dirty again
    assert action is not None and action.kind is ActionKind.Continue and action.stalled == 1, action
    action = rounds.judge(_round(6, 128, 8))
    assert action is not None and action.kind is ActionKind.PostCopy, action


def test_a_round_qemu_is_already_switching_over_or_finishing_is_not_judged() -> None:
    rounds = QemuRounds(ConvergencePolicy(threshold_ms=10, stall_rounds=1), link_rate=2**20)
    assert rounds.judge(_round(2, 96, 8, switching_over=True)) is None
    assert rounds.judge(_round(3, 96, 0, status=TransferPhase.Completed)) is None
    assert rounds.judge(_round(3, 96, 8, status=TransferPhase.PostCopy)) is None


def test_without_a_configured_rate_the_rule_uses_qemus_measured_throughput() -> None:
    rounds = QemuRounds(ConvergencePolicy(threshold_ms=1000), link_rate=None)
    action = rounds.judge(_round(2, 96, 0.9))  # 8.4 Mbit/s carries ~1 MiB in a second: within 1000 ms
    assert action is not None and action.kind is ActionKind.SwitchOver, action


# -- the workload ------------------------------------------------------------------------------------------


def test_tcg_guests_ram_is_not_a_whole_number_of_bitmap_words() -> None:
    # QEMU 7.2 under TCG loses writes in a live migration of a RAM block that is a multiple of 64 pages
    # (256 KiB); QEMU rounds RAM to 8 KiB. KVM guests get exactly what they asked for.
    for mib in (88, 96, 512, 4096):
        argument = memory_argument(mib, accel.Accelerator.TCG)
        assert argument.endswith("k"), argument
        kib = int(argument[:-1])
        assert kib > mib * 1024 and kib % 8 == 0 and kib % 256, argument
        assert memory_argument(mib, accel.Accelerator.KVM) == f"{mib}M"


def test_the_vm_workload_spec_maps_to_the_guests_parameters() -> None:
    vm = VmDefinition(name="a", cpus=1, memory_mib=128,
                      workload=WorkloadSpec(dirty_rate_mib_ps=2.5, working_set_mib=16))
    assert workload_params(vm) == WorkloadParams(region_mib=16, dirty_kib=512, interval_ms=200)
    small = VmDefinition(name="a", cpus=1, memory_mib=64, workload=WorkloadSpec(working_set_mib=500))
    assert workload_params(small).region_mib == 16  # at most a quarter of memory
    assert WorkloadParams(8, 512, 200).kernel_args() == \
        "vmshift.region_mib=8 vmshift.dirty_kib=512 vmshift.interval_ms=200"


def test_bad_workload_parameters_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="dirty_kib=6: expected a multiple of 4 KiB"):
        WorkloadParams(dirty_kib=6)
    with pytest.raises(ValueError, match="region_mib=0"):
        WorkloadParams(region_mib=0)


def test_serial_lines_parse_and_the_region_model_predicts_each_tick() -> None:
    assert parse_line("VMSHIFT tick=12 md5=0123456789abcdef0123456789abcdef up=31.07\r") == \
        Tick(12, "0123456789abcdef0123456789abcdef", 31.07)
    assert parse_line("VMSHIFT ready pages=2048 run=128 interval_ms=200 up=4.50") == Ready(2048, 128, 200, 4.5)
    assert parse_line("[    0.000000] Linux version 6.1.0") is None
    model = RegionModel(region_mib=1, dirty_kib=400)  # 256 pages, runs of 100: tick 3 wraps around
    sums = [model.md5(n) for n in range(6)]
    assert len(set(sums)) == 6
    assert RegionModel(1, 400).md5(5) == sums[5]
    assert RegionModel(1, 0).md5(9) == RegionModel(1, 0).md5(0)  # no writes: the region stays tick 0's


def test_the_last_tick_is_the_last_complete_line_on_the_console(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    assert last_tick(serial) is None
    md5 = "0123456789abcdef0123456789abcdef"
    serial.write_text("Probing EDD\n" + "".join(f"VMSHIFT tick={n} md5={md5} up={n}.5\n" for n in range(400))
                      + "VMSHIFT tick=400 md5=0123")  # cut mid-line: the guest moved, or is printing
    assert last_tick(serial) == Tick(399, md5, 399.5)


# -- the guest image and the shared cache helper ---------------------------------------------------------


@pytest.mark.qemu
def test_the_guest_image_packs_busybox_and_the_workloads_init(guest_image: GuestImage) -> None:
    with open(guest_image.initrd, "rb") as archive:
        listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=archive, capture_output=True,
                                 check=True).stdout.decode().split()
    assert {"init", "bin/busybox"} <= set(listing), listing
    with open(guest_image.initrd, "rb") as archive:
        init = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "init"], stdin=archive,
                              capture_output=True, check=True).stdout.decode()
    assert init == INIT_SCRIPT
    assert guest_image.kernel.stat().st_size > 1_000_000
    key = guest_image.directory.name
    assert guest_image.packages.kernel in key and guest_image.packages.kernel_version in key


def test_build_once_builds_once_under_concurrency_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    calls: list[int] = []

    def build(scratch: Path) -> None:
        calls.append(1)
        time.sleep(0.2)
        (scratch / "out").write_text("built")

    target = tmp_path / "thing" / "v1"
    threads = [threading.Thread(target=build_once, args=(target, build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and (target / "out").read_text() == "built"

    def broken(scratch: Path) -> None:
        (scratch / "half").write_text("x")
        raise RuntimeError("compiler crashed")

    failed = tmp_path / "thing" / "v2"
    with pytest.raises(RuntimeError, match="compiler crashed"):
        build_once(failed, broken)
    assert not failed.exists()
    assert sorted(p.name for p in failed.parent.iterdir()) == ["v1", "v1.lock", "v2.lock"]


def test_an_arriving_guest_gets_the_qemu_model_it_was_started_with() -> None:
    haswell = processor_info("haswell").features
    assert cpumodels.for_incoming(haswell, False).model == "Haswell-noTSX"  # even on an icelake target
    assert cpumodels.for_incoming(baseline_features(), True).model == cpumodels.BASELINE_MODEL
    with pytest.raises(ValueError, match="no QEMU CPU model"):
        cpumodels.for_incoming(frozenset({"sse2", "made-up"}), False)


def test_the_policy_becomes_qemus_downtime_limit_and_bandwidth() -> None:
    target = MigrationTarget(host="127.0.0.1", port=1, ticket="t", bandwidth_mbps=0)
    request = MigrationRequest(migration_id="m", vm_id="v", target=target, threshold_ms=50,
                               auto_converge=AutoConvergeSettings(enabled=True))
    auto = request.auto_converge
    assert parameters(request, 0) == MigrationParameters(
        downtime_limit_ms=50, bandwidth_mbps=None, auto_converge=True, throttle_initial_percent=auto.initial_percent,
        throttle_step_percent=auto.step_percent, throttle_max_percent=auto.max_percent, postcopy_allowed=False)
    postcopy = request.model_copy(update={"fallback_to_postcopy": True})
    assert parameters(postcopy, 0).postcopy_allowed, "a ladder ending in PostCopy turns QEMU's post-copy on"
    capped = request.model_copy(update={"max_downtime_ms": 20.0})
    assert parameters(capped, 800).downtime_limit_ms == 20 and parameters(capped, 800).bandwidth_mbps == 800


async def test_a_guest_too_small_to_boot_is_refused_before_qemu_runs(tmp_path: Path, guest_image: GuestImage) -> None:
    """80 MiB was seen to reset before the console says a word (QEMU then exits 0): refuse it, naming the floor."""
    driver = QemuDriver(QemuConfig(work_dir=tmp_path / "h", shared_dir=tmp_path / "s", image=guest_image))
    try:
        with pytest.raises(DriverError, match="needs at least 88 MiB"):
            await driver.define("tiny", VmDefinition(name="tiny", cpus=1, memory_mib=80))
        assert (await driver.define("fits", VmDefinition(name="fits", cpus=1, memory_mib=88))).memory_mib == 88
    finally:
        await driver.close()


def test_a_dead_guests_last_words_leave_out_its_ticks(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    md5 = "0123456789abcdef0123456789abcdef"
    serial.write_text("".join(f"VMSHIFT tick={n} md5={md5} up={n}.5\n" for n in range(50))
                      + "[   46.47] BUG: unable to handle page fault\n[   46.50] Kernel panic - not syncing\n")
    assert console_tail(serial) == "[   46.47] BUG: unable to handle page fault | [   46.50] Kernel panic - not syncing"
    assert console_tail(tmp_path / "missing.log") == ""
    serial.write_text(f"VMSHIFT tick=1 md5={md5} up=1.5\n")
    assert console_tail(serial) == ""
