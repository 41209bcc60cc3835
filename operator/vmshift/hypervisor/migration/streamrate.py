"""What one migration stream out of this agent really carries. Pure bookkeeping: no I/O, no clock.

A host's link rate (``migrationBandwidthMbps``) says what the wire can take; one migration stream
may carry much less, because its sender and receiver are single-threaded and bound by their CPUs
(as QEMU's pre-copy without multifd is). The drain planner must know that figure to decide how many
migrations to run at once: when one stream cannot fill the link, two (or more) can.

Each pre-copy round the source sends is a sample: its bytes over its seconds. Only a round long
enough to tell (``MIN_SAMPLE_SECONDS``) and that the shaper hardly held (it waited on the token
buckets or on another migration's switchover for at most ``HELD_FRACTION`` of its time) counts: a
shaped round carried what it was allowed, not what the stream can do. The figure is the highest rate
among the last ``WINDOW`` such rounds: a stream that carried that much once can again (also one
that carried it while others sent beside it), and a machine that became slower for good shows it
after ``WINDOW`` new rounds. A round older than ``MAX_AGE_SECONDS`` no longer counts: what the
machine's CPUs carried then says little about now (its load may have changed), so a host that sent
nothing for that long reports no figure (unknown) until its next migration's first rounds.

Several streams at once do not carry several times one stream's rate when they share the same
CPUs. So the agent's time is also cut into epochs at every start and end of an outgoing round:
an epoch during which several rounds sent all along, long enough to tell and hardly held by the
shaper, is a sample of what the streams carry together (every byte they sent in it over its
seconds). That figure is the highest among the last ``WINDOW`` such epochs no older than
``MAX_AGE_SECONDS`` (never below one stream's), and unknown until several streams have sent at once.
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
#: Seconds after which a round (or epoch) no longer counts toward the figures.
MAX_AGE_SECONDS = 600.0
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
        if min(self.sent_bytes, self.seconds, self.held_seconds) < 0:
            raise ValueError(f"a round sample's bytes and seconds cannot be negative: {self}")

    @property
    def unshaped_rate(self) -> float | None:
        """Bytes per second the stream carried by itself, or None when the round cannot tell."""
        if self.seconds < MIN_SAMPLE_SECONDS or self.sent_bytes == 0:
            return None
        if self.held_seconds > HELD_FRACTION * self.seconds:
            return None
        return self.sent_bytes / self.seconds


def _mbps(rate: float) -> float:
    return float(round(rate * _MBPS_PER_BYTE_PER_SECOND))


class StreamRates:
    """The recent unshaped rates of this agent's outgoing migration streams, alone and together.

    The sender calls :meth:`round_started` and :meth:`round_ended` around each round (with the
    monotonic time), :meth:`sent` and :meth:`held` as it goes, and :meth:`record` with the round's
    sample at its end (and the time). The figures are asked with the time too: samples older than
    ``MAX_AGE_SECONDS`` then are left out.
    """

    def __init__(self, window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError(f"the window of stream rates must hold at least one round, not {window}")
        #: (when, bytes per second) of the recent samples, oldest first.
        self._rates: deque[tuple[float, float]] = deque(maxlen=window)
        self._together: deque[tuple[float, float]] = deque(maxlen=window)
        #: Outgoing rounds being sent now.
        self.sending = 0
        self._epoch_started = 0.0
        self._epoch_bytes = 0
        self._epoch_held = 0.0

    def round_started(self, now: float) -> None:
        self._close_epoch(now)
        self.sending += 1

    def round_ended(self, now: float) -> None:
        if self.sending < 1:
            raise ValueError("a round ended that never started: round_started and round_ended must pair")
        self._close_epoch(now)
        self.sending -= 1

    def sent(self, n: int) -> None:
        """``n`` bytes of some outgoing round went on the wire."""
        self._epoch_bytes += n

    def held(self, seconds: float) -> None:
        """Some outgoing round waited ``seconds`` on the shaper."""
        self._epoch_held += seconds

    def _close_epoch(self, now: float) -> None:
        seconds = now - self._epoch_started
        streams = self.sending
        if (streams >= 2 and seconds >= MIN_SAMPLE_SECONDS and self._epoch_bytes > 0
                and self._epoch_held <= HELD_FRACTION * seconds * streams):
            self._together.append((now, self._epoch_bytes / seconds))
        self._epoch_started, self._epoch_bytes, self._epoch_held = now, 0, 0.0

    def record(self, sample: RoundSample, now: float) -> bool:
        """Count ``sample`` (a round that ended at ``now``) if it tells what one stream carries; True if it did."""
        rate = sample.unshaped_rate
        if rate is None:
            return False
        self._rates.append((now, rate))
        return True

    def figure_mbps(self, now: float) -> float | None:
        """What one unshaped migration stream carried, in Mbit/s (whole), or None when none did in the
        last ``MAX_AGE_SECONDS`` before ``now``."""
        rates = _recent(self._rates, now)
        return _mbps(max(rates)) if rates else None

    def together_mbps(self, now: float) -> float | None:
        """What several unshaped streams carried together, in Mbit/s (whole; never below one stream's
        figure), or None when several did not send at once in the last ``MAX_AGE_SECONDS`` before ``now``."""
        together = _recent(self._together, now)
        if not together:
            return None
        return _mbps(max(max(together), max(_recent(self._rates, now), default=0.0)))


def _recent(samples: deque[tuple[float, float]], now: float) -> list[float]:
    """The rates of ``samples`` taken no more than ``MAX_AGE_SECONDS`` before ``now``."""
    return [rate for at, rate in samples if now - at <= MAX_AGE_SECONDS]
