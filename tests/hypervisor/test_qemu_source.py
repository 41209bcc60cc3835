"""The QEMU source's following of QEMU's transfer (``QemuSourceMigration._follow``), against a scripted driver:
the ladder's verdict on QEMU's rounds, post-copy, and the phase it reports. Real QEMU: tests/qemu, tests/e2e."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from vmshift.api.reasons import FailureReason, MigrationPhase
from vmshift.hypervisor.driver import GuestDriver, TransferPhase, TransferProgress
from vmshift.hypervisor.guest import Guest
from vmshift.hypervisor.migration import qemu_source
from vmshift.hypervisor.migration.host import MigrationHost
from vmshift.hypervisor.migration.qemu_source import QemuPasses, QemuSourceMigration, parameters
from vmshift.hypervisor.migration.record import MigrationFailed
from vmshift.hypervisor.migration.streamrate import RoundSample, StreamRates
from vmshift.hypervisor.protocol import AutoConvergeSettings, MigrationRequest, MigrationTarget, VmDefinition, VmState
from vmshift.hypervisor.qemu.driver import QEMU_THROTTLE, throttle_settings

ACTIVE = TransferPhase.Active


class ScriptedDriver:
    """Answers ``progress`` from a script (the last look repeats) and notes the ladder's calls."""

    def __init__(self, looks: list[TransferProgress], runs: VmState = VmState.Paused) -> None:
        self._looks: Iterator[TransferProgress] = iter(looks)
        self._last = looks[0]
        self.calls: list[str] = []
        self.runs = runs  # the source guest's run state QEMU reports

    async def describe(self, vm_id: str) -> SimpleNamespace:
        return SimpleNamespace(state=self.runs)

    async def progress(self, vm_id: str) -> TransferProgress:
        self._last = next(self._looks, self._last)
        return self._last

    async def switch_to_postcopy(self, vm_id: str) -> None:
        self.calls.append("postcopy")

    async def allow_downtime(self, vm_id: str, downtime_ms: float) -> None:
        self.calls.append(f"downtime {downtime_ms:.0f}")


def look(rounds: int, sent: float, remaining: float, phase: TransferPhase = ACTIVE) -> TransferProgress:
    return TransferProgress(phase=phase, rounds=rounds, transferred_mib=sent, remaining_mib=remaining, total_mib=96,
                            dirty_rate_mib_ps=2.5, throughput_mbps=8.0, downtime_ms=30.0 if
                            phase is TransferPhase.Completed else None)


#: A guest that re-dirties its 8 MiB region every round: round 0 ends at the 2nd sync, round 1 at the 3rd.
NOT_CONVERGING = [look(1, 4, 92), look(2, 96, 8), look(2, 100, 6), look(3, 104, 8), look(4, 112, 8)]


def migration(looks: list[TransferProgress], bandwidth_mbps: float = 8,
              **request: Any) -> tuple[QemuSourceMigration, ScriptedDriver]:
    driver = ScriptedDriver(looks)
    guest = Guest("v-1", VmDefinition(name="v-1", cpus=1, memory_mib=96))
    target = MigrationTarget(host="127.0.0.1", port=1, ticket="t", bandwidth_mbps=0)
    host = SimpleNamespace(stream_rates=StreamRates())
    source = QemuSourceMigration(cast(MigrationHost, host), guest, MigrationRequest(
        migration_id="m-1", vm_id="v-1", target=target, max_rounds=2, stall_rounds=1, **request),
        bandwidth_mbps=bandwidth_mbps, driver=cast(GuestDriver, driver), shared_dir=Path("/nonexistent"))
    return source, driver


async def test_rounds_qemu_cannot_converge_end_the_move_not_converging() -> None:
    source, driver = migration(NOT_CONVERGING)
    with pytest.raises(MigrationFailed) as failed:
        await source._follow()
    assert failed.value.reason is FailureReason.NotConverging, failed.value.message
    assert "keeps running on the source" in failed.value.message and driver.calls == []


async def test_a_ladder_ending_in_postcopy_switches_qemu_and_follows_it_to_the_end_whatever_the_agents_stream_does(
        ) -> None:
    source, driver = migration([*NOT_CONVERGING[:4], look(3, 106, 6, TransferPhase.PostCopy),
                                look(3, 110, 0, TransferPhase.Completed)], fallback_to_postcopy=True)
    switch = driver.switch_to_postcopy

    async def switch_and_lose_the_agents_stream(vm_id: str) -> None:
        await switch(vm_id)
        # The target agent runs the guest once post-copy starts, and may close the agents' stream then.
        source._target_gone = "the target closed the migration stream"
    driver.switch_to_postcopy = switch_and_lose_the_agents_stream  # type: ignore[method-assign]
    phases: list[MigrationPhase] = []
    progress_of = driver.progress

    async def sampled(vm_id: str) -> TransferProgress:
        phases.append(source.record.phase)
        return await progress_of(vm_id)
    driver.progress = sampled  # type: ignore[method-assign]
    source.record.phase = MigrationPhase.Transferring
    progress = await source._follow()
    assert progress.phase is TransferPhase.Completed and driver.calls == ["postcopy"]
    assert source.record.postcopy and source.record.status().postcopy
    assert phases[-1] is MigrationPhase.SwitchingOver and MigrationPhase.Transferring in phases, phases
    assert not source.cancel(FailureReason.Cancelled, "too late"), "a move in post-copy cannot be cancelled"


async def test_a_ladder_ending_in_quick_lets_qemu_pause_the_guest_for_the_rest_and_says_quick() -> None:
    source, driver = migration([*NOT_CONVERGING[:4], look(3, 110, 0, TransferPhase.Completed)],
                               fallback_to_quick=True, max_downtime_ms=20_000)
    progress = await source._follow()
    assert progress.phase is TransferPhase.Completed
    assert len(driver.calls) == 1 and driver.calls[0].startswith("downtime "), driver.calls
    assert source.record.mode.value == "Quick"


async def test_qemu_stopping_the_guest_for_the_last_copy_shows_as_switching_over() -> None:
    stopped = TransferProgress(phase=ACTIVE, rounds=3, transferred_mib=100, remaining_mib=0.2, switching_over=True)
    source, _ = migration([look(2, 96, 1), stopped, look(3, 100, 0, TransferPhase.Completed)])
    source.record.phase = MigrationPhase.Transferring
    source._record(look(2, 96, 1))
    assert source.record.phase is MigrationPhase.Transferring
    source._record(stopped)
    assert source.record.phase is MigrationPhase.SwitchingOver


async def lost_in_post_copy(end: TransferProgress) -> str:
    """The TargetLost message of a move switched to post-copy whose QEMU then reports ``end``."""
    source, _ = migration([look(3, 106, 6, TransferPhase.PostCopy), end])
    source._postcopy = True
    with pytest.raises(MigrationFailed) as failed:
        await source._follow()
    assert failed.value.reason is FailureReason.TargetLost, failed.value.message
    return failed.value.message


async def test_a_target_lost_in_post_copy_fails_target_lost_and_never_says_the_guest_runs_on_the_source() -> None:
    message = await lost_in_post_copy(look(3, 107, 5, TransferPhase.PostCopyPaused))
    assert "during post-copy" in message and "split between the hosts" in message and "kept paused" in message
    assert "keeps running" not in message and "5.0 MiB not yet pulled" in message, message
    assert "resume the post-copy" in message, "a paused post-copy can be resumed once the target is back"


async def test_a_post_copy_qemu_ended_for_good_is_not_offered_a_resume() -> None:
    # Seen in a CI run: the target's QEMU killed late in post-copy; the source's QEMU went to "failed",
    # not postcopy-paused, and the message offered a resume that QEMU can no longer do.
    message = await lost_in_post_copy(look(3, 107, 0, TransferPhase.Failed))
    for words in ("during post-copy", "split between the hosts", "kept paused", "not resumed", "can run on neither"):
        assert words in message, (words, message)
    assert "resume the post-copy" not in message and "MiB not yet pulled" not in message, message


async def test_a_transfer_qemu_ended_and_resumed_here_after_the_switch_was_asked_is_an_ordinary_failure() -> None:
    # Seen in an e2e run: the target's QEMU killed just after migrate-start-postcopy; QEMU had not handed
    # the guest over, failed the transfer and ran the guest on the source again (its run state: running).
    source, driver = migration([look(3, 106, 6, TransferPhase.PostCopy), look(3, 107, 0, TransferPhase.Failed)])
    driver.runs = VmState.Running
    source._postcopy = True
    source.record.postcopy = True
    with pytest.raises(MigrationFailed) as failed:
        await source._follow()
    message = failed.value.message
    assert failed.value.reason is FailureReason.TargetLost, message
    assert "keeps running on the source" in message and "post-copy" not in message, message
    assert not source._postcopy and not source.record.postcopy


class HoldingDriver(ScriptedDriver):
    """QEMU with pause-before-switchover: pre-switchover (held) until ``continue_switchover``, then completed."""

    def __init__(self) -> None:
        super().__init__([look(2, 96, 0.1)])
        self.held = TransferProgress(phase=ACTIVE, rounds=3, transferred_mib=100, remaining_mib=0.1,
                                     switching_over=True, held=True)

    async def progress(self, vm_id: str) -> TransferProgress:
        if "continue" in self.calls:
            return look(3, 100, 0, TransferPhase.Completed)
        return self.held

    async def continue_switchover(self, vm_id: str) -> None:
        self.calls.append("continue")


def held_migration(hold_seconds: float) -> tuple[QemuSourceMigration, HoldingDriver]:
    driver = HoldingDriver()
    guest = Guest("v-1", VmDefinition(name="v-1", cpus=1, memory_mib=96))
    target = MigrationTarget(host="127.0.0.1", port=1, ticket="t", bandwidth_mbps=0)
    source = QemuSourceMigration(cast(MigrationHost, object()), guest, MigrationRequest(
        migration_id="m-1", vm_id="v-1", target=target, switchover_wait_seconds=5),
        bandwidth_mbps=8, driver=cast(GuestDriver, driver), shared_dir=None, hold_seconds=hold_seconds)
    source.record.phase = MigrationPhase.Transferring  # as run() leaves it
    return source, driver


async def test_qemu_holds_a_converged_switchover_until_the_go_and_the_record_says_ready_then_acknowledged() -> None:
    source, driver = held_migration(hold_seconds=5)
    assert parameters(source.request, 8, hold=True).pause_before_switchover
    following = asyncio.create_task(source._follow())
    for _ in range(500):  # the first look at pre-switchover marks the record ready
        if source.record.ready_to_switch_over:
            break
        await asyncio.sleep(0.01)
    assert source.record.status().ready_to_switch_over, "the operator is not told the switchover waits for its go"
    await asyncio.sleep(0.3)
    assert driver.calls == [] and not following.done(), "QEMU went on before the go"
    source.hold.go()
    progress = await asyncio.wait_for(following, 5)
    assert progress.phase is TransferPhase.Completed and driver.calls == ["continue"]
    assert source.record.switchover_acknowledged is True and source.record.phase is MigrationPhase.SwitchingOver


async def test_a_held_switchover_goes_on_without_the_go_after_the_hosts_short_wait() -> None:
    source, driver = held_migration(hold_seconds=0.3)
    assert source.hold.wait_seconds == 0.3, "the request's 5 s wait is capped by the host's (the guest is paused)"
    started = asyncio.get_running_loop().time()
    progress = await asyncio.wait_for(source._follow(), 5)
    waited = asyncio.get_running_loop().time() - started
    assert progress.phase is TransferPhase.Completed and driver.calls == ["continue"]
    assert source.record.switchover_acknowledged is False and 0.3 <= waited < 2, waited
    off, _ = held_migration(hold_seconds=0)
    assert off.hold.wait_seconds == 0 and not off.hold.holding(converged=True), "no hold unless the host allows one"


async def test_qemu_holding_the_switch_to_post_copy_goes_on_at_once() -> None:
    source, driver = held_migration(hold_seconds=5)
    source._postcopy = True  # the ladder switched: QEMU stops at pre-switchover before post-copy too
    progress = await asyncio.wait_for(source._follow(), 2)
    assert progress.phase is TransferPhase.Completed and driver.calls == ["continue"]
    assert source.record.switchover_acknowledged is None and not source.record.ready_to_switch_over


def test_the_policys_auto_converge_throttle_becomes_qemus_only_when_auto_converge_is_on() -> None:
    target = MigrationTarget(host="127.0.0.1", port=1, ticket="t", bandwidth_mbps=0)
    on = MigrationRequest(migration_id="m-1", vm_id="v-1", target=target, auto_converge=AutoConvergeSettings(
        enabled=True, initial_percent=35, step_percent=15, max_percent=80))
    settings = throttle_settings(parameters(on, 8))
    assert settings == {"cpu-throttle-initial": 35, "cpu-throttle-increment": 15, "max-cpu-throttle": 80}
    off = on.model_copy(update={"auto_converge": AutoConvergeSettings(enabled=False, initial_percent=35)})
    assert throttle_settings(parameters(off, 8)) == QEMU_THROTTLE, "QEMU's defaults when auto-converge is off"
    tiny = on.model_copy(update={"auto_converge": AutoConvergeSettings(enabled=True, initial_percent=0.2,
                                                                       step_percent=99.9, max_percent=99.9)})
    assert throttle_settings(parameters(tiny, 8)) == {"cpu-throttle-initial": 1, "cpu-throttle-increment": 99,
                                                      "max-cpu-throttle": 99}, "QEMU takes whole percents 1-99"


def test_a_pass_qemu_finished_is_a_sample_of_its_stream_when_long_enough_and_not_held_by_its_cap() -> None:
    """Timed from the look that saw one pass end to the look that saw the next end: a pass shorter than a
    second is too coarsely timed by polling to count, and one that ran at QEMU's cap says only the cap."""
    passes = QemuPasses(cap=None)
    assert passes.look(look(1, 0, 96), 10.0) is None  # round 0 under way
    assert passes.look(look(1, 50, 46), 10.5) is None
    assert passes.look(look(2, 100, 8), 11.0) == RoundSample(100 * 2**20, 1.0, 0.0)
    assert passes.look(look(3, 104, 8), 11.5) is None  # half a second: too short to tell
    assert passes.look(look(4, 204, 8), 12.5) == RoundSample(100 * 2**20, 1.0, 0.0)
    assert passes.look(look(5, 212, 8, TransferPhase.Completed), 13.5) == RoundSample(8 * 2**20, 1.0, 0.0), \
        "the completion ends the pass under way"
    assert passes.look(look(5, 212, 0, TransferPhase.Completed), 14.0) is None, "and nothing after it"
    capped = QemuPasses(cap=100 * 2**20)  # bytes per second
    capped.look(look(1, 0, 96), 0.0)
    at_the_cap = capped.look(look(2, 95, 8), 1.0)
    assert at_the_cap is not None and at_the_cap.unshaped_rate is None, "95 % of the cap: the cap held it"
    below = capped.look(look(3, 145, 8), 2.0)
    assert below is not None and below.unshaped_rate == 50 * 2**20, "half the cap: the stream's own rate"


def test_a_long_pass_that_goes_straight_to_the_switchover_is_a_sample() -> None:
    """A guest whose dirty pages fit the downtime after its one long pass: QEMU goes from that pass to the
    switchover between two looks, and no look sees the pass count rise while it is active. That pass is
    the one worth timing (seen on real QEMU: a 2 GiB working set moved in 1.7 s left no figure)."""
    passes = QemuPasses(cap=None)
    assert passes.look(look(1, 18, 900), 0.8) is None  # the first pass under way
    assert passes.look(look(1, 500, 400), 1.6) is None
    switching = TransferProgress(phase=ACTIVE, rounds=1, transferred_mib=906, remaining_mib=2, total_mib=96,
                                 switching_over=True)
    assert passes.look(switching, 2.4) == RoundSample((906 - 18) * 2**20, 2.4 - 0.8, 0.0)
    assert passes.look(look(3, 908, 0, TransferPhase.Completed), 2.5) is None, "the pass was counted once"
    never_active = QemuPasses(cap=None)
    assert never_active.look(look(3, 908, 0, TransferPhase.Completed), 0.1) is None, "no look saw it start"


async def test_qemus_passes_give_the_host_its_stream_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Followed to its end, an unshaped QEMU move leaves its stream's figure on the host, as a simulated one
    does (so the drain planner knows what one QEMU stream carries); a move at its cap leaves none."""
    now = [0.0]
    monkeypatch.setattr(qemu_source, "time", SimpleNamespace(monotonic=lambda: now[0]))

    async def follow(bandwidth_mbps: float) -> StreamRates:
        source, driver = migration(NOT_CONVERGING, bandwidth_mbps=bandwidth_mbps)
        progress_of = driver.progress

        async def a_second_later(vm_id: str) -> TransferProgress:
            now[0] += 1.0  # the looks are a (fake) second apart
            return await progress_of(vm_id)
        driver.progress = a_second_later  # type: ignore[method-assign]
        with pytest.raises(MigrationFailed):
            await source._follow()
        return cast(StreamRates, cast(SimpleNamespace, source.host).stream_rates)

    # The first pass: 92 MiB between two looks a second apart; the later ones 8 MiB in one or two seconds.
    assert (await follow(0)).figure_mbps(now[0]) == round(92 * 2**20 * 8 / 1e6)
    assert (await follow(8)).figure_mbps(now[0]) is None, "every pass ran at the 8 Mbit/s cap"
