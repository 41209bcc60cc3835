"""The source's sending of one pre-copy round: its pages in frames shaped to the link, and the sample the
round gives of what this agent's migration streams carry (``streamrate``).

Talks to the target only through the ``FrameStream`` it is given; the rest of the migration (rounds,
convergence, switchover) stays in ``source.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vmshift.hypervisor.guest import GuestMemory
from vmshift.hypervisor.migration.host import MigrationHost
from vmshift.hypervisor.migration.record import MigrationRecord
from vmshift.hypervisor.migration.stream import FrameStream
from vmshift.hypervisor.migration.streamrate import RoundSample
from vmshift.hypervisor.migration.wire import BULK_CHUNK_PAGES, CHUNK_PAGES, FLAG_FINAL, frame_size, pages_prefix
from vmshift.hypervisor.ratelimit import TokenBucket


async def send_round(stream: FrameStream, host: MigrationHost, bucket: TokenBucket, memory: GuestMemory,
                     record: MigrationRecord, check_target: Callable[[], None], round_index: int,
                     pages: range | list[int], final: bool = False) -> float:
    """Send ``pages`` in large frames, shaped by the migration's ``bucket`` and the agent's egress; return
    the seconds it took. ``check_target`` raises if the target gave up meanwhile."""
    rates = host.stream_rates
    started = time.monotonic()
    rates.round_started(started)
    sent_bytes = 0
    held = 0.0  # seconds spent waiting on the shaper (buckets, another switchover): not the stream's limit
    flags = FLAG_FINAL if final else 0
    total = len(pages)
    lo = 0
    try:
        while lo < total:
            # Bulk frames only while nothing shapes this migration (a share can come with another's start).
            step = BULK_CHUNK_PAGES if bucket.unlimited and host.egress.unlimited else CHUNK_PAGES
            chunk = pages[lo:lo + step]
            prefix = pages_prefix(round_index, len(chunk), flags)
            size = frame_size(len(chunk))
            waiting = time.monotonic()
            await bucket.consume(size)
            await host.egress.consume(size)
            if host.switchover_gate.closed:  # another migration's guest is paused: it goes first
                await host.switchover_gate.wait()
            waited = time.monotonic() - waiting
            held += waited
            rates.held(waited)
            check_target()
            await stream.send_parts(memory.frame_parts(chunk, prefix))
            sent_bytes += size
            rates.sent(size)
            record.pages_sent += len(chunk)
            record.wire_bytes += size
            lo += len(chunk)
            record.remaining_pages = (total - lo) + memory.dirty_count()
            elapsed = time.monotonic() - started
            if elapsed > 0.02:
                record.throughput_mbps = sent_bytes * 8 / 1e6 / elapsed
            record.touch()
    finally:
        rates.round_ended(time.monotonic())
    ended = time.monotonic()
    seconds = ended - started
    rates.record(RoundSample(sent_bytes, seconds, held), ended)
    return seconds
