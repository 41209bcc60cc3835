"""A token bucket that shapes a byte stream to a link rate (asyncio; the clock is injectable).

No network I/O: callers ask to send ``n`` bytes and wait as long as the bucket says. The bucket
runs into debt rather than splitting a write, so large writes keep the average rate exact. A
sender that was waiting on the bucket and woke up late (the event loop was busy, or the process was
not scheduled: routine on a loaded host) is credited the time it lost, up to ``catch_up_seconds``,
so the rate does not sag below target; a bucket nobody used saves only the small ``burst``. A
switchover's final pages may take priority over bulk traffic (:meth:`TokenBucket.charge`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmshift.hypervisor.protocol import LinkShareSettings

MBIT = 1_000_000 / 8  # bytes per second in one Mbit/s


def mbps_to_bytes_per_second(mbps: float) -> float:
    return mbps * MBIT


class TokenBucket:
    """Shape to ``rate`` bytes per second; ``math.inf`` (or <= 0) means unlimited."""

    def __init__(
        self,
        rate: float,
        *,
        burst_seconds: float = 0.01,
        min_burst: float = 256 * 1024,
        catch_up_seconds: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._burst_seconds = burst_seconds
        self._min_burst = min_burst
        self._catch_up_seconds = catch_up_seconds
        self.rate = math.inf
        self.burst = math.inf
        self.tokens = 0.0
        self._stamp = clock()
        self.set_rate(rate)

    @classmethod
    def mbps(cls, mbps: float, burst_seconds: float = 0.01) -> TokenBucket:
        """A bucket for a link of ``mbps`` megabits per second (<= 0: unlimited)."""
        return cls(mbps_to_bytes_per_second(mbps) if mbps > 0 else math.inf, burst_seconds=burst_seconds)

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.rate)

    def set_rate(self, rate: float) -> None:
        self._refill()
        self.rate = rate if rate > 0 else math.inf
        self.burst = max(self.rate * self._burst_seconds, self._min_burst)
        self.tokens = min(self.tokens, self.burst)

    def _refill(self) -> None:
        now = self._clock()
        if not math.isinf(self.rate):
            elapsed = now - self._stamp
            tokens = self.tokens + elapsed * self.rate
            if self.tokens < 0:  # a sender was waiting for this debt: credit how late it came back
                due = -self.tokens / self.rate
                late = elapsed - due
                cap = late * self.rate if late <= self._catch_up_seconds else 0.0
                self.tokens = min(tokens, max(self.burst, cap))
            else:
                self.tokens = min(self.burst, tokens)
        self._stamp = now

    def reserve(self, n: float) -> float:
        """Take ``n`` bytes' worth of tokens now; return how long the caller must wait before sending."""
        if math.isinf(self.rate):
            return 0.0
        self._refill()
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def charge(self, n: float) -> None:
        """Take ``n`` bytes' worth of tokens without waiting: priority traffic (a switchover's final pages)
        goes at once, and whoever shares the bucket waits the longer for it."""
        self.reserve(n)

    async def consume(self, n: float) -> None:
        delay = self.reserve(n)
        if delay > 0:
            await self._sleep(delay)


def link_weights(ranks: Sequence[tuple[int, float] | None]) -> list[float]:
    """Weights of migrations sharing one link, from each one's (rank, ratio) or None (no preference).

    Among the migrations that carry a rank, the lowest rank gets weight 1 and each other ``ratio **
    (lowest - rank)`` (its own ratio: 1 shares equally, 8 gives each earlier one 8 times the next one's
    share). Only differences of rank count, so weights stay in range however long a drain runs.
    Migrations without a rank get weight 1, as much as the first ranked one.
    """
    ranked = [r[0] for r in ranks if r is not None]
    lowest = min(ranked, default=0)
    return [1.0 if r is None else max(r[1], 1.0) ** -min(r[0] - lowest, 300) for r in ranks]


def weighted_shares(flows: Sequence[tuple[float, float]], capacity: float) -> list[float]:
    """Weighted max-min fair rates of ``flows`` (weight, cap; bytes per second, ``math.inf``: none) on one
    link of ``capacity`` (``math.inf``: each flow gets its cap). A flow its cap holds below its weighted
    share leaves the rest to the others (progressive filling), so the link stays full when it can be."""
    rates = [0.0] * len(flows)
    if math.isinf(capacity):
        return [cap for _, cap in flows]
    left = capacity
    open_ = {i for i, (weight, _) in enumerate(flows) if weight > 0}
    while open_ and left > 0:
        total = sum(flows[i][0] for i in open_)
        level = left / total
        capped = {i for i in open_ if flows[i][1] - rates[i] <= flows[i][0] * level}
        if not capped:
            for i in open_:
                rates[i] += flows[i][0] * level
            break
        for i in capped:
            left -= flows[i][1] - rates[i]
            rates[i] = flows[i][1]
        open_ -= capped
    return rates


#: The least a sending migration gets, bytes per second: a migration kept trickling behind others still
#: sends a frame (256 pages, 1 MiB) every few seconds, well within the target's 30 s idle limit. The
#: host's egress bucket keeps the sum within the link.
TRICKLE_FLOOR = 256 * 1024


def link_shares(migrations: Sequence[tuple[LinkShareSettings | None, float]], capacity: float) -> list[float]:
    """Bytes per second for each migration sending on a link of ``capacity`` bytes per second, from its
    share (None: an equal one) and its own cap in Mbit/s (0: none, else the target's link or a policy's
    cap): weighted max-min, so the link stays full when it can be; never below ``TRICKLE_FLOOR``."""
    weights = link_weights([(s.rank, s.ratio) if s is not None else None for s, _ in migrations])
    caps = [mbps_to_bytes_per_second(mbps) if mbps > 0 else math.inf for _, mbps in migrations]
    shares = weighted_shares(list(zip(weights, caps, strict=True)), capacity)
    return [max(rate, min(cap, TRICKLE_FLOOR)) for rate, cap in zip(shares, caps, strict=True)]
