"""The supervisor of background loops: a loop that fails is logged, backed off and started again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from vmshift.controllers import startup
from vmshift.controllers.supervisor import Supervisor, backoff


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
