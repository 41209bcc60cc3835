"""The supervisor of background loops: a loop that fails is logged, backed off and started again."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from pathlib import Path

import pytest

from vmshift.controllers import startup
from vmshift.controllers.supervisor import GcPauses, Supervisor, backoff


def test_backoff_grows_then_stays_at_its_last_step() -> None:
    delays = (1.0, 2.0, 5.0)
    assert [backoff(n, delays) for n in (1, 2, 3, 4, 10)] == [1.0, 2.0, 5.0, 5.0, 5.0]


async def test_a_failing_loop_is_logged_backed_off_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    again = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("the API server said 500")  # what one API error did to the resync loop
        if len(runs) == 2:
            return  # a loop that ends is a failure too
        again.set()
        await asyncio.Event().wait()

    supervisor = Supervisor()
    with caplog.at_level(logging.WARNING, logger="vmshift.supervisor"):
        task = supervisor.start("demo", loop, delays=(0.01, 0.02))
        await asyncio.wait_for(again.wait(), 5)
        assert not task.done()
        await supervisor.stop()
    assert task.cancelled()
    assert len(runs) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("demo failed" in m for m in messages), messages
    assert any("the API server said 500" in m and "restarting" in m for m in messages), messages
    assert any("demo returned" in m for m in messages), messages


def test_the_operator_runs_its_background_loops_under_the_supervisor() -> None:
    assert isinstance(startup.background, Supervisor)


async def test_a_blocked_event_loop_shows_in_the_lag_histogram() -> None:
    import time

    from vmshift import metrics
    from vmshift.controllers.supervisor import watch_loop_lag

    def observed() -> tuple[float, float]:
        samples = {s.name: s.value for m in metrics.EVENT_LOOP_LAG.collect() for s in m.samples}
        return samples["vmshift_event_loop_lag_seconds_count"], samples["vmshift_event_loop_lag_seconds_sum"]

    count0, sum0 = observed()
    task = asyncio.create_task(watch_loop_lag(interval=0.02))
    try:
        await asyncio.sleep(0.1)  # a few samples of an idle loop
        time.sleep(0.3)  # noqa: ASYNC251 (the point: a handler that blocks the loop)
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
    count1, sum1 = observed()
    assert count1 - count0 >= 3
    assert sum1 - sum0 >= 0.25, "the 0.3 s block was not seen as lag"


async def test_the_lag_record_holds_every_sample_with_its_time(tmp_path: Path) -> None:
    """Sampled every 10 ms, a phase of a second has ~100 samples, and the record gives each one (a
    benchmark takes the exact p99 and max of its window, not a histogram bucket's bound)."""
    import time

    from vmshift.controllers.supervisor import LAG_SAMPLE_SECONDS, read_lag_record, watch_loop_lag

    assert LAG_SAMPLE_SECONDS <= 0.02
    record = tmp_path / "lag.txt"
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(watch_loop_lag(record=record))
    try:
        await asyncio.sleep(0.3)
        blocked_at = loop.time()
        time.sleep(0.2)  # noqa: ASYNC251 (the point: a handler that blocks the loop)
        await asyncio.sleep(0.3)
        end = loop.time()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lags = read_lag_record(record, 0.0, end)
    assert len(lags) >= 20, f"only {len(lags)} samples in 0.8 s"
    after_block = read_lag_record(record, blocked_at + 0.19, end)
    assert after_block and max(after_block) >= 0.18, \
        f"the 0.2 s block is missing from the samples after it: {sorted(after_block)[-3:]}"
    before = read_lag_record(record, 0.0, blocked_at)
    assert before and len(before) + len(after_block) == len(lags), "the window's bounds select the wrong samples"


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _sample_count(generation: str) -> float:
    from vmshift import metrics

    for m in metrics.GC_PAUSES.collect():
        for s in m.samples:
            if s.name == "vmshift_gc_pause_seconds_count" and s.labels.get("generation") == generation:
                return s.value
    return 0.0


def _tracked(obj: object) -> bool:
    """Whether the collector's generations (not its permanent one) hold ``obj``."""
    return any(o is obj for o in gc.get_objects())


def test_a_long_full_collection_freezes_what_survived_it_and_nothing_that_was_garbage() -> None:
    """Full collections walked millions of cached objects (0.6-1 s each with 3,000 VMs): after one that
    took long, the survivors leave the walks; cyclic garbage is still collected, not frozen."""
    import weakref

    pauses = GcPauses(freeze_after=0.0)  # every full collection counts as long here
    kept = [[i] for i in range(1000)]
    garbage = _Node()
    garbage.other = _Node()
    garbage.other.other = garbage  # a cycle only the collector reclaims
    gone = weakref.ref(garbage)
    del garbage
    full_before = _sample_count("2")
    pauses.install()
    try:
        gc.collect()
        assert pauses.freezes == 1
        assert gone() is None, "a garbage cycle was frozen instead of collected"
        assert gc.get_freeze_count() >= len(kept) and not _tracked(kept), "the survivors are still walked"
        pauses.tick()  # the pauses go to the histogram; one short collection of what is not frozen
        assert _sample_count("2") >= full_before + 1
        young = [[1]]
        assert _tracked(young), "objects allocated after the freeze are collected as usual"
    finally:
        pauses.uninstall()
        gc.unfreeze()


def test_a_short_full_collection_freezes_nothing() -> None:
    pauses = GcPauses(freeze_after=60.0)
    pauses.install()
    try:
        gc.collect()
        pauses.tick()
        assert pauses.freezes == 0 and gc.get_freeze_count() == 0
    finally:
        pauses.uninstall()
        gc.unfreeze()


def test_frozen_objects_are_thawed_after_a_while_so_cycles_among_them_are_reclaimed() -> None:
    import weakref

    pauses = GcPauses(freeze_after=0.0, thaw_seconds=0.0)
    pauses.install()
    try:
        node = _Node()
        node.other = _Node()
        node.other.other = node
        later_garbage = weakref.ref(node)
        gc.collect()  # long (by this threshold): node, alive, is frozen
        pauses.uninstall()  # the collections below must not freeze again
        del node  # now a garbage cycle among frozen objects: no collection can see it
        pauses.tick()  # the collection after the freeze
        gc.collect()
        assert later_garbage() is not None and gc.get_freeze_count() > 0
        pauses.tick()  # thaw_seconds passed
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert later_garbage() is None, "the thawed cycle was not reclaimed"
    finally:
        pauses.uninstall()
        gc.unfreeze()
