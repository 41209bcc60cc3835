"""What one migration stream out of this agent really carries. Pure bookkeeping: no I/O, no clock.

A host's link rate (``migrationBandwidthMbps``) says what the wire can take; one migration stream
may carry much less, because its sender and receiver are single-threaded and bound by their CPUs
(as QEMU's pre-copy without multifd is). The drain planner must know that figure to decide how many
migrations to run at once: when one stream cannot fill the link, two (or more) can.

Each pre-copy round the source sends is a sample: its bytes over its seconds. Only a round long
enough to tell (``MIN_SAMPLE_SECONDS``) and that the shaper hardly held (it waited on the token
buckets or on another migration's switchover for at most ``HELD_FRACTION`` of its time) counts: a
shaped round carried what it was allowed, not what the stream can do. The figure is the highest rate
among the last ``WINDOW`` such rounds: a stream that carried that much once can again, and a
machine that became slower for good shows it after ``WINDOW`` new rounds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: Rounds shorter than this say little about a stream's rate (start-up, one frame's latency).
MIN_SAMPLE_SECONDS = 0.25
#: A round that waited on the shaper for more than this fraction of its time was held by it.
HELD_FRACTION = 0.1
#: How many recent unshaped rounds the figure looks at.
WINDOW = 8
#: Bits per byte over bits per megabit.
_MBPS_PER_BYTE_PER_SECOND = 8 / 1_000_000


@dataclass(frozen=True)
class RoundSample:
    """One round a migration sent: bytes on the wire, seconds it took, seconds of that it waited on
    the shaper (the token buckets, another migration's switchover)."""

    sent_bytes: int
    seconds: float
    held_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.sent_bytes < 0 or self.seconds < 0 or self.held_seconds < 0:
            raise ValueError(f"a round sample's bytes and seconds cannot be negative: {self}")

    @property
    def unshaped_rate(self) -> float | None:
        """Bytes per second the stream carried by itself, or None when the round cannot tell."""
        if self.seconds < MIN_SAMPLE_SECONDS or self.sent_bytes == 0:
            return None
        if self.held_seconds > HELD_FRACTION * self.seconds:
            return None
        return self.sent_bytes / self.seconds


class StreamRates:
    """The recent unshaped rates of this agent's outgoing migration streams."""

    def __init__(self, window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError(f"the window of stream rates must hold at least one round, not {window}")
        self._rates: deque[float] = deque(maxlen=window)

    def record(self, sample: RoundSample) -> bool:
        """Count ``sample`` if it tells what the stream carries; True if it did."""
        rate = sample.unshaped_rate
        if rate is None:
            return False
        self._rates.append(rate)
        return True

    def figure_mbps(self) -> float | None:
        """What one unshaped migration stream carried, in Mbit/s (whole), or None before any did."""
        if not self._rates:
            return None
        return float(round(max(self._rates) * _MBPS_PER_BYTE_PER_SECOND))
